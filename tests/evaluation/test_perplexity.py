"""Per-segment perplexity: values equal a hand computation from logits, files are written,
results are never silently replaced, held-out books stay held out, and the CLI runs end to end."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
import yaml

from armt.evaluation.perplexity import (
    BOUNDS,
    evaluate_base_bounds,
    evaluate_perplexity,
    held_out_books,
    markdown_table,
    segment_nll,
    write_perplexity,
)

S = 8


def _windows(n, segments, seed=0):
    return torch.randint(99, (n, segments * S), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("memory", ["associative", "none"])
def test_values_equal_a_hand_computation_from_logits(tiny_armt, memory):
    model = tiny_armt("llama", segment_size=S, sliding_window=True, use_sink=True, memory=memory)
    windows = _windows(3, 3)
    with torch.no_grad():
        logp = torch.log_softmax(model(windows).logits, dim=-1)  # one forward over whole windows
    nll = {1: [], 2: [], 3: []}
    for b in range(3):
        for t in range(3 * S - 1):  # the pair (logits t, token t + 1) belongs to its target's segment
            nll[(t + 1) // S + 1].append(-float(logp[b, t, windows[b, t + 1]]))
    got = evaluate_perplexity(model, windows, batch_size=2)
    assert [r["segment"] for r in got] == [1, 2, 3, "all"]
    assert [r["pairs"] for r in got] == [3 * (S - 1), 3 * S, 3 * S, 3 * (3 * S - 1)]
    everything = nll[1] + nll[2] + nll[3]
    for record, values in zip(got, [nll[1], nll[2], nll[3], everything]):
        mean = sum(values) / len(values)
        assert record["loss"] == pytest.approx(mean, abs=1e-9)
        assert record["perplexity"] == pytest.approx(math.exp(mean), rel=1e-9)


def test_a_wiped_memory_reads_every_segment_alone_through_the_same_weights(tiny_armt):
    model = tiny_armt("llama", segment_size=S, use_sink=True)  # live: the memory changes later segments
    windows = _windows(3, 3, seed=2)
    with torch.no_grad():  # each segment as a one-segment input, so the memory it reads is empty
        alone = [torch.log_softmax(model(windows[:, i * S:(i + 1) * S]).logits, dim=-1) for i in range(3)]
    hand = {1: [], 2: [], 3: []}
    for b in range(3):
        for t in range(3 * S - 1):
            hand[(t + 1) // S + 1].append(-float(alone[t // S][b, t % S, windows[b, t + 1]]))
    wiped = evaluate_perplexity(model, windows, batch_size=2, wipe_memory=True)
    for record, values in zip(wiped, [hand[1], hand[2], hand[3], hand[1] + hand[2] + hand[3]]):
        assert record["loss"] == pytest.approx(sum(values) / len(values), abs=1e-9)
    read = evaluate_perplexity(model, windows, batch_size=2)
    assert wiped[0]["loss"] == pytest.approx(read[0]["loss"], abs=1e-9)  # nothing to read in segment 1 either way
    assert wiped[2]["loss"] != pytest.approx(read[2]["loss"], abs=1e-6)


def test_a_swapped_memory_is_the_one_another_window_wrote(tiny_armt):
    model = tiny_armt("llama", segment_size=S, sliding_window=True, use_sink=True)
    windows = _windows(4, 3, seed=3)
    donors = windows.roll(-2, dims=0)  # what swap_memory pairs: window j reads window j + N/2's memory
    hand, previous = {1: [], 2: [], 3: []}, None  # previous: the last logits of the segment before
    with torch.no_grad():
        for i in range(3):
            state = model(donors[:, :i * S]).memory if i else None  # the donors' first i segments in one call
            logp = torch.log_softmax(model(windows[:, i * S:(i + 1) * S], memory=state).logits, dim=-1)
            for b in range(4):
                for t in range(i * S - (i > 0), (i + 1) * S - 1):  # pairs whose target is in segment i + 1
                    source = logp[b, t - i * S] if t >= i * S else previous[b]
                    hand[i + 1].append(-float(source[windows[b, t + 1]]))
            previous = logp[:, -1]
    swapped = evaluate_perplexity(model, windows, batch_size=3, swap_memory=True)
    for record, values in zip(swapped, [hand[1], hand[2], hand[3], hand[1] + hand[2] + hand[3]]):
        assert record["loss"] == pytest.approx(sum(values) / len(values), abs=1e-9)
    own = evaluate_perplexity(model, windows, batch_size=3)
    assert swapped[0]["loss"] == pytest.approx(own[0]["loss"], abs=1e-9)
    assert swapped[2]["loss"] != pytest.approx(own[2]["loss"], abs=1e-6)
    sums, _ = segment_nll(model, windows, memory_from=windows)  # its own memory: the plain reading
    torch.testing.assert_close(sums, segment_nll(model, windows)[0])
    with pytest.raises(ValueError, match="at least 2 windows"):
        evaluate_perplexity(model, windows[:1], swap_memory=True)


def test_base_bounds_equal_a_hand_computation_and_a_fresh_wrapper_sits_on_the_floor(tiny_armt):
    model = tiny_armt("llama", segment_size=S, live=False)  # fresh: W_mv = 0, the memory adds nothing
    base = model.base_model
    windows = _windows(3, 3, seed=1)
    with torch.no_grad():
        full = torch.log_softmax(base(windows).logits, dim=-1)
        alone = [torch.log_softmax(base(windows[:, i * S:(i + 1) * S]).logits, dim=-1) for i in range(3)]
    ceiling, floor = {1: [], 2: [], 3: []}, {1: [], 2: [], 3: []}
    for b in range(3):
        for t in range(3 * S - 1):
            target = windows[b, t + 1]
            ceiling[(t + 1) // S + 1].append(-float(full[b, t, target]))
            floor[(t + 1) // S + 1].append(-float(alone[t // S][b, t % S, target]))  # logits from t's own segment
    got = evaluate_base_bounds(base, windows, S, batch_size=2)
    assert list(got) == list(BOUNDS)
    for name, hand in zip(BOUNDS, (ceiling, floor)):
        assert [r["pairs"] for r in got[name]] == [3 * (S - 1), 3 * S, 3 * S, 3 * (3 * S - 1)]
        for record, values in zip(got[name], [hand[1], hand[2], hand[3], hand[1] + hand[2] + hand[3]]):
            assert record["loss"] == pytest.approx(sum(values) / len(values), abs=1e-9)
    assert got[BOUNDS[0]][0]["loss"] == pytest.approx(got[BOUNDS[1]][0]["loss"], abs=1e-12)  # segment 1: same
    assert got[BOUNDS[0]][2]["loss"] != pytest.approx(got[BOUNDS[1]][2]["loss"], abs=1e-6)
    fresh = evaluate_perplexity(model, windows)
    for mine, bottom in zip(fresh, got[BOUNDS[1]]):
        assert mine["loss"] == pytest.approx(bottom["loss"], abs=1e-9)


def test_table_reports_the_share_of_the_gap_each_model_closes():
    recs = lambda p2: [{"segment": 1, "pairs": 7, "loss": 0.0, "perplexity": 30.0},  # noqa: E731
                       {"segment": 2, "pairs": 8, "loss": 0.0, "perplexity": p2}]
    table = markdown_table({"ARMT": recs(26.0), "no memory": recs(29.0), BOUNDS[0]: recs(20.0),
                            BOUNDS[1]: recs(30.0)})
    assert "| segment | pairs | ARMT | no memory | base, full context | base, segment only | ARMT: gap closed " \
           "| no memory: gap closed |" in table
    assert "| 1 | 7 | 30.00 | 30.00 | 30.00 | 30.00 | - | - |" in table
    assert "| 2 | 8 | 26.00 | 29.00 | 20.00 | 30.00 | 40% | 10% |" in table


def test_partial_windows_are_refused(tiny_armt):
    model = tiny_armt("gpt2", segment_size=S)
    with pytest.raises(ValueError, match="segment_size=8"):
        segment_nll(model, _windows(1, 2)[:, :-1])


def _records(scale):
    return [{"segment": s, "pairs": 10, "loss": math.log(p * scale), "perplexity": p * scale}
            for s, p in ((1, 20.0), (2, 15.0), ("all", 17.0))]


def test_table_csv_json_and_plot_are_written_and_not_replaced(tmp_path):
    results = {"ARMT": _records(1.0), "no memory": _records(1.2)}
    paths = write_perplexity(results, tmp_path / "out", metadata={"books": "x"})
    assert sorted(p.name for p in paths.values()) == ["perplexity.csv", "perplexity.json", "perplexity.md",
                                                       "perplexity.png"]
    table = paths["perplexity.md"].read_text()
    assert "| 2 | 10 | 15.00 | 18.00 | 0.833 |" in table and "| all |" in table
    rows = list(csv.DictReader(paths["perplexity.csv"].open()))
    assert len(rows) == 6 and rows[0]["model"] == "ARMT" and float(rows[4]["perplexity"]) == pytest.approx(18.0)
    data = json.loads(paths["perplexity.json"].read_text())
    assert data["models"] == ["ARMT", "no memory"] and data["metadata"] == {"books": "x"}
    assert data["results"]["no memory"][1]["perplexity"] == pytest.approx(18.0)
    assert paths["perplexity.png"].read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(FileExistsError, match="overwrite"):
        write_perplexity(results, tmp_path / "out")
    write_perplexity({"ARMT": _records(2.0)}, tmp_path / "out", overwrite=True)
    assert "| 1 | 10 | 40.00 |" in (tmp_path / "out" / "perplexity.md").read_text()
    with pytest.raises(ValueError, match="different segments"):
        markdown_table({"a": _records(1.0), "b": _records(1.0)[:2]})


def _books(folder, names):
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate(names):
        words = [f"word{(7 * i + j) % 53}" for j in range(1500)]
        sentences = [" ".join(words[k:k + 10]).capitalize() + "." for k in range(0, len(words), 10)]
        (folder / f"{name}.txt").write_text(" ".join(sentences))
    return folder


def _run_dir(root, source, held_out):
    (root / "best").mkdir(parents=True)
    values = {"data": {"kind": "lm", "seed": 0, "options": {"source": str(source), "held_out_books": held_out}}}
    (root / "run_config.yaml").write_text(yaml.safe_dump(values))
    return root / "best"


def test_held_out_books_come_from_the_run_and_training_books_are_refused(tmp_path):
    source = _books(tmp_path / "books", ["a", "b", "c", "d"])
    model = _run_dir(tmp_path / "run", source, ["b"])
    books, titles = held_out_books([model])
    assert titles == ["b"] and books.description.startswith("local folder")
    assert held_out_books([model], held_out="b")[1] == ["b"]
    with pytest.raises(ValueError, match=r"\['d'\] are training books"):
        held_out_books([model], held_out=1)  # the last title, d, was trained on
    other = _books(tmp_path / "other", ["x", "y"])
    assert held_out_books([model], books=str(other), held_out="all")[1] == ["x", "y"]
    with pytest.raises(ValueError, match="pass --books"):
        held_out_books([tmp_path / "books"])


def _train_tiny(out, source, *extra):
    from armt.cli import main

    config = out.parent / f"{out.name}.yaml"
    config.write_text(yaml.safe_dump({
        "model": {"tiny": {"family": "llama", "layers": 2, "hidden": 32}},
        "armt": {"num_mem_tokens": 2, "d_mem": 8, "segment_size": 16, "sliding_window": True, "use_sink": True},
        "data": {"kind": "lm", "num_segments": 2, "num_train": 8, "num_eval": 2,
                 "options": {"source": str(source), "held_out_books": ["b"], "no_loss_segments": 1,
                             "tokenizer_vocab": 300}},
        "training": {"output_dir": str(out), "max_steps": 2, "per_device_train_batch_size": 4, "report_to": [],
                     "disable_tqdm": True, "use_cpu": True},
    }))
    assert main(["train", str(config), "--threads", "1", *extra]) == 0


def test_cli_compares_a_model_with_its_no_memory_baseline(tmp_path, capsys):
    from armt.cli import main

    source = _books(tmp_path / "books", ["a", "b", "c"])
    _train_tiny(tmp_path / "armt", source)
    _train_tiny(tmp_path / "nomem", source, "--armt.memory=none")
    capsys.readouterr()
    args = ["perplexity", "--model", str(tmp_path / "armt" / "best"), "--baseline", str(tmp_path / "nomem" / "best"),
            "--num-segments", "3", "--max-windows", "4", "--threads", "1", "--quiet", "--out", str(tmp_path / "ppl")]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "| segment | pairs | ARMT | no memory | ARMT / no memory |" in printed and "from b;" in printed
    data = json.loads((tmp_path / "ppl" / "perplexity.json").read_text())
    assert data["metadata"]["titles"] == ["b"] and data["metadata"]["windows"] == 4
    assert [r["pairs"] for r in data["results"]["ARMT"]] == [4 * 15, 4 * 16, 4 * 16, 4 * 47]
    assert main(args) == 2 and "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--held-out-books", "a"]) == 2
    assert "training books" in capsys.readouterr().err
    assert main(args + ["--overwrite", "--base-bounds"]) == 0
    printed = capsys.readouterr().out
    assert "| base, full context | base, segment only | ARMT: gap closed | no memory: gap closed |" in printed
    data = json.loads((tmp_path / "ppl" / "perplexity.json").read_text())
    assert data["models"] == ["ARMT", "no memory", *BOUNDS]
    assert main(args + ["--overwrite", "--wipe-memory"]) == 0
    assert "| ARMT | ARMT, memory wiped | no memory |" in capsys.readouterr().out
    data = json.loads((tmp_path / "ppl" / "perplexity.json").read_text())
    assert data["models"] == ["ARMT", "ARMT, memory wiped", "no memory"]
    assert data["results"]["ARMT, memory wiped"][0]["loss"] == pytest.approx(data["results"]["ARMT"][0]["loss"])
    assert main(args + ["--overwrite", "--swap-memory", "--wipe-memory"]) == 0
    assert "| ARMT | ARMT, memory wiped | ARMT, another window's memory | no memory |" in capsys.readouterr().out
