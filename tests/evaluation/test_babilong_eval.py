"""BABILong evaluation and data sets: streaming equals whole-sample generation, the shell
commands end to end, resuming, refusals, sources, and memory that does not grow with length."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

import armt
from armt.cli import main
from armt.data.babi import load_babi_task
from armt.data.babilong import BabilongPrompt, iter_babilong, make_dataset, parse_length, read_jsonl
from armt.data.books import load_books
from armt.data.tokenizer import train_bpe_tokenizer
from armt.evaluation.babilong_eval import (
    BabilongSettings,
    answer_sample,
    evaluate_babilong,
    make_babilong_data,
    open_sources,
)
from armt.evaluation.babilong_scoring import compare_answers

PNG = b"\x89PNG\r\n\x1a\n"


def need_data(babi, books):
    if not (babi / "en").is_dir() or not books.is_dir():
        pytest.skip(f"bAbI files or books not found under {babi.parent}")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def tok(data_dir):
    BABI = data_dir / "babi"
    BOOKS = data_dir / "gutenberg"
    facts = [f for s in load_babi_task("qa2", root=BABI)[:200] for f in s.facts] if (BABI / "en").is_dir() else []
    text = (BOOKS / "austen-emma.txt").read_text(encoding="utf-8")[20_000:120_000] if BOOKS.is_dir() else ""
    return train_bpe_tokenizer(facts + [text, "Where is Mary?\nAnswer: kitchen"], vocab_size=400)


@pytest.fixture(scope="module")
def live_model(tiny_base):
    """``live_model(tok, **config)``: a tiny Llama ARMT whose memory changes the answer."""

    def make(tok, **config):
        base = tiny_base("llama", vocab=len(tok))
        options = dict(num_mem_tokens=4, d_mem=8, segment_size=64)
        options.update(config)
        model = armt.ARMTForCausalLM(base, armt.ARMTConfig(**options)).eval()
        torch.manual_seed(1)
        for mem in model.cell.memory_layers:  # W_mv starts at zero: make the memory change the answer
            torch.nn.init.normal_(mem.W_mv.weight, std=0.2)
        return model

    return make


@pytest.fixture(scope="module")
def model_dir(live_model, tok, tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    live_model(tok).save_pretrained(path, save_base=True)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def eval_args(data_dir):
    """``eval_args(model_dir, out, *extra)``: the arguments of ``armt babilong eval`` on the test data."""

    def make(model_dir, out, *extra):
        return ["babilong", "eval", "--model", str(model_dir), "--tasks", "qa1,qa2", "--lengths", "0k", "--n", "3",
                "--babi", str(data_dir / "babi"), "--background", str(data_dir / "gutenberg"), "--out", str(out),
                "--max-new-tokens", "4", "--threads", "1", "--quiet", *extra]

    return make


@pytest.mark.parametrize("chunk_size", [100, 64])
def test_streaming_answer_equals_generate_over_the_whole_sample(live_model, data_dir, tok, chunk_size):
    BABI = data_dir / "babi"
    BOOKS = data_dir / "gutenberg"
    need_data(BABI, BOOKS)
    model = live_model(tok)
    prompt = BabilongPrompt()
    sample = next(iter_babilong("qa2", "1k", 1, tok, load_books(BOOKS), seed=3, babi_source=BABI))
    got = answer_sample(model, tok, sample, prompt=prompt, max_new_tokens=40, chunk_size=chunk_size)

    whole = prompt.prefix_ids(tok) + sample.input_ids() + prompt.query_ids(tok, sample.question)
    ids = torch.tensor([whole])
    out = model.generate(ids, max_new_tokens=40, do_sample=False, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)[0, len(whole):].tolist()
    if tok.eos_token_id in out:
        out = out[:out.index(tok.eos_token_id)]
    # about 16 segments of context; the 40 new tokens cross into the next segment too
    assert sample.num_tokens > 15 * 64 and got.prompt_tokens == len(whole)
    assert got.new_ids == out and len(out) > 0
    assert got.text == tok.decode(out, skip_special_tokens=True)


def test_wiped_memory_answers_from_the_last_partial_segment_alone(live_model, data_dir, tok, tmp_path):
    BABI = data_dir / "babi"
    BOOKS = data_dir / "gutenberg"
    need_data(BABI, BOOKS)
    model = live_model(tok)
    prompt = BabilongPrompt()
    sample = next(iter_babilong("qa1", "1k", 1, tok, load_books(BOOKS), seed=2, babi_source=BABI))
    got = answer_sample(model, tok, sample, prompt=prompt, max_new_tokens=6, wipe_memory=True)
    whole = prompt.prefix_ids(tok) + sample.input_ids()
    tail = whole[len(whole) // 64 * 64:] + prompt.query_ids(tok, sample.question)  # after the last full segment
    out = model.generate(torch.tensor([tail]), max_new_tokens=6, do_sample=False, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)[0, len(tail):].tolist()
    assert got.new_ids == out[:len(got.new_ids)]
    kept = answer_sample(model, tok, sample, prompt=prompt, max_new_tokens=6)
    assert kept.new_ids != got.new_ids  # the live memory changes the answer
    options = dict(tasks="qa1", lengths="0k", n_samples=1, babi_source=BABI, max_new_tokens=2, progress=False,
                   log=None, out_dir=tmp_path)
    evaluate_babilong(model, tok, **options)
    with pytest.raises(FileExistsError, match="wipe_memory"):
        evaluate_babilong(model, tok, wipe_memory=True, **options)
    with pytest.raises(ValueError, match="segment_alignment='left'"):
        answer_sample(live_model(tok, segment_alignment="right"), tok, sample, prompt=prompt, wipe_memory=True)


def test_question_alone_reads_the_whole_context_into_memory_first(live_model, data_dir, tok, tmp_path, monkeypatch):
    from armt.streaming import MemoryReader

    BABI = data_dir / "babi"
    BOOKS = data_dir / "gutenberg"
    need_data(BABI, BOOKS)
    model = live_model(tok)
    prompt = BabilongPrompt()
    S = model.config.segment_size
    sample = next(s for s in iter_babilong("qa1", "1k", 5, tok, load_books(BOOKS), seed=2, babi_source=BABI)
                  if (len(prompt.prefix_ids(tok)) + s.num_tokens) % S)  # a last partial segment of context
    query = prompt.query_ids(tok, sample.question)
    calls = []
    generate = model.generate

    def spy(ids, **kwargs):  # what answer_sample hands to generate: the input and the memory
        calls.append((ids[0].tolist(), kwargs.get("memory")))
        return generate(ids, **kwargs)

    monkeypatch.setattr(model, "generate", spy)
    # by hand: the whole context written (its partial segment too), then the query from that memory
    reader = MemoryReader(model)
    reader.feed(torch.tensor([prompt.prefix_ids(tok) + sample.input_ids()]))
    memory = reader.finish(flush=True).memory
    got = answer_sample(model, tok, sample, prompt=prompt, max_new_tokens=6, question_segment="alone")
    ids, given = calls[-1]
    assert ids == query and all(torch.equal(a.A, b.A) and torch.equal(a.z, b.z)
                                for a, b in zip(given.layers, memory.layers))
    assert got.prompt_tokens == len(prompt.prefix_ids(tok)) + sample.num_tokens + len(query)
    # wiped: the question alone with an empty memory, whatever the context
    # (the context is not even read: its memory would be thrown away)
    feeds = []
    monkeypatch.setattr(MemoryReader, "feed", lambda self, ids: feeds.append(ids))
    wiped = answer_sample(model, tok, sample, prompt=prompt, max_new_tokens=6, question_segment="alone",
                          wipe_memory=True)
    assert calls[-1] == (query, None) and feeds == [] and wiped.prompt_tokens == len(query)
    monkeypatch.undo()
    monkeypatch.setattr(model, "generate", spy)
    # shared: the context's last partial segment goes in with the question
    answer_sample(model, tok, sample, prompt=prompt, max_new_tokens=6)
    assert len(calls[-1][0]) == (len(prompt.prefix_ids(tok)) + sample.num_tokens) % S + len(query)
    with pytest.raises(ValueError, match="question_segment='middle' is unknown"):
        answer_sample(model, tok, sample, prompt=prompt, question_segment="middle")
    with pytest.raises(ValueError, match="segment_alignment='left'"):
        answer_sample(live_model(tok, segment_alignment="right"), tok, sample, prompt=prompt, question_segment="alone")

    # the layout is part of a run: results of the other layout are not resumed into it
    assert "question_segment" not in BabilongSettings(tasks="qa1", lengths="0k").run_key()
    assert BabilongSettings(tasks="qa1", lengths="0k", question_segment="alone").run_key()["question_segment"] == "alone"
    with pytest.raises(ValueError, match="question_segment"):
        BabilongSettings(tasks="qa1", lengths="0k", question_segment="x")
    options = dict(tasks="qa1", lengths="0k", n_samples=1, babi_source=BABI, max_new_tokens=2, progress=False,
                   log=None, out_dir=tmp_path)
    evaluate_babilong(model, tok, **options)
    with pytest.raises(FileExistsError, match="question_segment"):
        evaluate_babilong(model, tok, question_segment="alone", **options)


def test_right_aligned_model_reads_the_whole_sample(live_model, data_dir, tok):
    # segments cut from the end cannot be streamed; the answer must still be the whole-input one
    BABI = data_dir / "babi"
    BOOKS = data_dir / "gutenberg"
    need_data(BABI, BOOKS)
    model = live_model(tok, segment_alignment="right")
    prompt = BabilongPrompt()
    sample = next(iter_babilong("qa1", "1k", 1, tok, load_books(BOOKS), seed=1, babi_source=BABI))
    got = answer_sample(model, tok, sample, prompt=prompt, max_new_tokens=6)
    whole = torch.tensor([prompt.prefix_ids(tok) + sample.input_ids() + prompt.query_ids(tok, sample.question)])
    out = model.generate(whole, max_new_tokens=6, do_sample=False, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)[0, whole.shape[1]:].tolist()
    assert got.new_ids == out[:len(got.new_ids)] and got.prompt_tokens == whole.shape[1]


def test_eval_from_the_shell_writes_table_csv_json_heatmap(eval_args, data_dir, model_dir, tmp_path, capsys):
    BABI = data_dir / "babi"
    BOOKS = data_dir / "gutenberg"
    need_data(BABI, BOOKS)
    out = tmp_path / "run"
    assert main(eval_args(model_dir, out, "--lengths", "0k,1k")) == 0
    printed = capsys.readouterr().out
    assert f"bAbI questions: bAbI v1.2 files in {BABI}" in printed
    assert f"background text: local folder {BOOKS} (10 .txt files)" in printed
    assert "| task | 0k | 1k |" in printed and "| average |" in printed

    assert (out / "heatmap.png").read_bytes().startswith(PNG)
    md = (out / "results.md").read_text()
    assert "| qa1 |" in md and "| qa2 |" in md
    rows = list(csv.DictReader((out / "results.csv").open()))
    assert [(r["task"], r["length"], r["n"]) for r in rows] == [
        ("qa1", "0k", "3"), ("qa1", "1k", "3"), ("qa2", "0k", "3"), ("qa2", "1k", "3")]
    meta = json.loads((out / "results.json").read_text())["metadata"]
    assert meta["sources"]["babi"].startswith("bAbI v1.2 files") and "gutenberg" in meta["sources"]["background"]
    assert meta["settings"]["n_samples"] == 3 and meta["settings"]["prompt"]["answer_prefix"] == "\nAnswer:"
    assert meta["pairs"]["qa2/1k"]["tokens_per_s"] > 0

    for row in rows:
        preds = read_jsonl(out / "predictions" / f"{row['task']}_{row['length']}.jsonl")
        assert len(preds) == 3
        assert {"question", "target", "prediction", "answer", "correct", "context_tokens"} <= set(preds[0])
        # the table counts what the scorer says of each saved answer
        rescored = sum(compare_answers(p["answer"], p["target"], p["question"], row["task"]) for p in preds)
        assert rescored == sum(p["correct"] for p in preds) == int(row["correct"])
        if row["length"] == "1k":
            assert all(0.99 * 1024 <= p["context_tokens"] <= 1024 for p in preds)
    targets = [p["target"] for p in read_jsonl(out / "predictions" / "qa1_0k.jsonl")]
    assert targets == [s.answer for s in load_babi_task("qa1", root=BABI)[:3]]


def test_resume_skips_finished_pairs(data_dir, eval_args, model_dir, tmp_path, capsys):
    need_data(data_dir / "babi", data_dir / "gutenberg")
    out = tmp_path / "run"
    assert main(eval_args(model_dir, out)) == 0
    first = (out / "predictions" / "qa1_0k.jsonl").read_text()
    os.utime(out / "predictions" / "qa1_0k.jsonl", (0, 0))
    capsys.readouterr()

    assert main(eval_args(model_dir, out, "--lengths", "0k,1k")) == 0
    printed = capsys.readouterr().out
    assert "skipping 2 (task, length) pairs already in" in printed and "qa1 0k, qa2 0k" in printed
    assert "qa1 0k:" not in printed and "qa1 1k:" in printed and "qa2 1k:" in printed
    # the finished pair was neither run again nor rewritten
    assert os.stat(out / "predictions" / "qa1_0k.jsonl").st_mtime == 0
    assert (out / "predictions" / "qa1_0k.jsonl").read_text() == first
    assert len(list(csv.DictReader((out / "results.csv").open()))) == 4
    assert "| task | 0k | 1k |" in printed


def test_results_of_another_run_refused_unless_overwrite(data_dir, eval_args, model_dir, tmp_path, capsys):
    need_data(data_dir / "babi", data_dir / "gutenberg")
    out = tmp_path / "run"
    assert main(eval_args(model_dir, out)) == 0
    before = (out / "results.json").read_text()
    capsys.readouterr()
    assert main(eval_args(model_dir, out, "--seed", "1")) == 2
    err = capsys.readouterr().err
    assert "settings.seed: 0 then, 1 now" in err and "--overwrite" in err
    assert (out / "results.json").read_text() == before
    assert main(eval_args(model_dir, out, "--seed", "1", "--overwrite")) == 0
    assert "discarding the 2 results" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["metadata"]["settings"]["seed"] == 1
    assert main(eval_args(model_dir, out, "--seed", "1", "--question-segment", "alone")) == 2
    assert "settings.question_segment" in capsys.readouterr().err


def test_another_model_is_another_run(live_model, data_dir, tok, tmp_path):
    BABI = data_dir / "babi"
    BOOKS = data_dir / "gutenberg"
    need_data(BABI, BOOKS)
    options = dict(tasks="qa1", lengths="0k", n_samples=1, babi_source=BABI, background=BOOKS,
                   max_new_tokens=2, progress=False, log=None, out_dir=tmp_path)
    evaluate_babilong(live_model(tok), tok, **options)
    other = live_model(tok)
    torch.nn.init.normal_(other.cell.memory_layers[0].W_mq.weight)
    with pytest.raises(FileExistsError, match="armt_weights_sha256"):
        evaluate_babilong(other, tok, **options)


def test_start_memory_is_read_and_recorded(live_model, data_dir, tok, tmp_path):
    BABI = data_dir / "babi"
    need_data(BABI, data_dir / "gutenberg")
    model = live_model(tok)
    state = model.read([torch.randint(len(tok), (1, 200), generator=torch.Generator().manual_seed(0))]).memory
    prompt = BabilongPrompt()
    sample = next(iter_babilong("qa1", "0k", 1, tok, None, babi_source=BABI))
    got = answer_sample(model, tok, sample, prompt=prompt, max_new_tokens=6, memory=state)
    whole = torch.tensor([sample.input_ids() + prompt.query_ids(tok, sample.question)])
    out = model.generate(whole, memory=state, max_new_tokens=6, do_sample=False, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)[0, whole.shape[1]:].tolist()
    assert got.new_ids == out[:len(got.new_ids)]
    options = dict(tasks="qa1", lengths="0k", n_samples=1, babi_source=BABI, max_new_tokens=2, progress=False,
                   log=None, out_dir=tmp_path)
    evaluate_babilong(model, tok, **options)
    with pytest.raises(FileExistsError, match="start_memory_sha256"):
        evaluate_babilong(model, tok, memory=state, **options)


def test_make_data_from_the_shell(data_dir, tok, model_dir, tmp_path, capsys):
    BABI = data_dir / "babi"
    BOOKS = data_dir / "gutenberg"
    need_data(BABI, BOOKS)
    out = tmp_path / "data"
    args = ["babilong", "make-data", "--tasks", "qa1,qa2", "--lengths", "0k,1k", "--n", "3", "--babi", str(BABI),
            "--background", str(BOOKS), "--tokenizer", str(model_dir), "--out", str(out), "--seed", "2", "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "bAbI v1.2 files" in printed and "local folder" in printed
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.jsonl")) == [
        "0k/qa1.jsonl", "0k/qa2.jsonl", "1k/qa1.jsonl", "1k/qa2.jsonl"]
    records = read_jsonl(out / "1k" / "qa2.jsonl")
    assert [list(r)[:3] for r in records] == [["input", "question", "target"]] * 3
    for r in records:
        assert r["task"] == "qa2" and r["length"] == "1k" and 0.99 * 1024 <= r["num_tokens"] <= 1024
        assert len(tok(r["input"], add_special_tokens=False)["input_ids"]) == r["num_tokens"]
    # written piece by piece, the records equal the library's in-memory ones
    assert records == make_dataset("qa2", "1k", 3, tok, load_books(BOOKS), seed=2, babi_source=BABI)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sources"]["babi"].startswith("bAbI v1.2") and manifest["tokenizer"] == str(model_dir)
    assert [f["n"] for f in manifest["files"]] == [3, 3, 3, 3]

    before = (out / "0k" / "qa1.jsonl").read_text()
    assert main(args) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (out / "0k" / "qa1.jsonl").read_text() == before
    assert main(args + ["--lengths", "4k"]) == 2  # the manifest is there: still refused
    assert main(args + ["--overwrite"]) == 0


def test_sources_default_to_builtin_and_are_described(live_model, data_dir, tok, tmp_path, monkeypatch):
    BABI = data_dir / "babi"
    monkeypatch.delenv("ARMT_BABI_DIR", raising=False)
    sources = open_sources()
    assert sources.babi == "builtin" and sources.babi_description.startswith("built-in bAbI generator")
    assert sources.background_description.startswith("built-in generated text")
    if BABI.is_dir():  # the real files, when ../shared/data is there
        monkeypatch.setenv("ARMT_BABI_DIR", str(BABI))
        assert open_sources().babi_description.startswith("bAbI v1.2 files")
        monkeypatch.delenv("ARMT_BABI_DIR")
    with pytest.raises(FileNotFoundError, match="'builtin' or 'hf'"):
        open_sources(tmp_path / "missing")
    with pytest.raises(ValueError, match="published BABILong sets are BABILong data"):
        make_babilong_data(tok, tmp_path / "d", tasks="qa1", lengths="0k", n_samples=1, babi_source="hf", log=None)

    # the published sets come with their contexts (the Hub is offline here: stand in for it)
    def published(task, length, *, dataset, n):
        assert (task, length, dataset) == ("qa1", "1k", "RMT-team/babilong")
        return [{"input": "Mary went to the office. It rained.", "question": "Where is Mary?", "target": "office"}] * n

    monkeypatch.setattr("armt.evaluation.babilong_eval.load_babilong_hf", published)
    lines = []
    run = evaluate_babilong(live_model(tok), tok, tasks="qa1", lengths="1k", n_samples=2, babi_source="hf",
                            max_new_tokens=2, progress=False, log=lines.append)
    assert lines[0] == "bAbI questions: published BABILong sets from Hugging Face RMT-team/babilong (contexts included)"
    assert run.results[0]["n"] == 2 and run.sources.to_dict()["background"].startswith("none")
    assert run.predictions[0]["context_tokens"] == len(tok("Mary went to the office. It rained.")["input_ids"])


def test_settings_are_checked():
    s = BabilongSettings(tasks=["QA2", "qa1", "qa2"], lengths=["1024", "0k", "1k"], n_samples=2)
    assert s.tasks == ["qa2", "qa1"] and s.lengths == ["1k", "0k"]
    with pytest.raises(ValueError, match="qa1 .. qa20"):
        BabilongSettings(tasks="qa21")
    with pytest.raises(ValueError, match="length"):
        BabilongSettings(lengths="4 kb")
    with pytest.raises(ValueError, match="n_samples must be an int >= 1"):
        BabilongSettings(n_samples=0)
    with pytest.raises(ValueError, match="name at least one"):
        BabilongSettings(tasks=" ,")
    with pytest.raises(TypeError, match="BabilongPrompt"):
        BabilongSettings(prompt="\nAnswer:")


def test_prompt_template(tok):
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    prompt = BabilongPrompt()
    ids, start = prompt.example_ids(tok, [5, 6, 7], "Where is Mary?", "kitchen")
    assert ids[:3] == [5, 6, 7] and ids[-1] == tok.eos_token_id
    assert tok.decode(ids[3:start]) == "\nWhere is Mary?\nAnswer:" and tok.decode(ids[start:-1]) == " kitchen"
    assert prompt.prefix_ids(tok) == []  # this tokenizer adds no BOS, so none is put in
    # a tokenizer that puts BOS first (as Llama's does) gets it before the context
    backend = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    backend.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A",
                                                            special_tokens=[("<|endoftext|>", tok.eos_token_id)])
    with_bos = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|endoftext|>", eos_token="<|endoftext|>")
    assert prompt.prefix_ids(with_bos) == [with_bos.bos_token_id]
    assert BabilongPrompt(add_bos=False).prefix_ids(with_bos) == []
    assert BabilongPrompt.cut_answer("\n  kitchen.\nWhere is John? garden") == "kitchen."
    with pytest.raises(TypeError, match="answer_prefix must be a string"):
        BabilongPrompt(answer_prefix=None)


CHILD = textwrap.dedent("""
    import json, resource, sys
    import torch
    import armt
    from transformers import AutoTokenizer
    from armt.evaluation.babilong_eval import evaluate_babilong
    torch.set_num_threads(1)
    model = armt.ARMTForCausalLM.from_pretrained(sys.argv[1]).eval()
    tok = AutoTokenizer.from_pretrained(sys.argv[1])
    options = dict(tasks="qa1", n_samples=1, babi_source="builtin", max_new_tokens=2, progress=False, log=None)
    peaks = {}
    for length in ("1k", "16k", "256k"):  # 1k warms up what any first run allocates once
        run = evaluate_babilong(model, tok, lengths=length, **options)
        peaks[length] = [run.predictions[0]["context_tokens"], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]
    print(json.dumps(peaks))
""")


def test_memory_does_not_grow_with_sample_length(tmp_path):
    from armt.tiny import tiny_base_model

    # byte-level tokens (no merges) and 512-token segments keep a 256k sample to seconds
    tok = train_bpe_tokenizer(["bytes"], vocab_size=258)
    base = tiny_base_model("llama", layers=2, hidden=32, vocab=len(tok), max_positions=1024)
    model = armt.ARMTForCausalLM(base, armt.ARMTConfig(num_mem_tokens=4, d_mem=8, segment_size=512))
    model.save_pretrained(tmp_path, save_base=True)
    tok.save_pretrained(tmp_path)
    # a fresh interpreter, so that the peak is this evaluation's and not the test session's
    done = subprocess.run([sys.executable, "-c", CHILD, str(tmp_path)], capture_output=True, text=True, timeout=120,
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    peaks = json.loads(done.stdout.strip().splitlines()[-1])
    (short, short_kib), (long, long_kib) = peaks["16k"], peaks["256k"]
    assert 0.99 * parse_length("16k") <= short and 0.99 * parse_length("256k") <= long
    # 16x the tokens, the same peak: 256k measured 1.4 MiB above 16k (the whole sample held
    # at once measured 5.3 MiB above); a peak that grew with length would be far over
    assert long_kib - short_kib <= 3 * 1024, peaks


def test_memory_growth_script_prints_norms_and_answers(live_model, tok, tmp_path):
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    model = live_model(tok)
    model.save_pretrained(tmp_path / "m", save_base=True)
    tok.save_pretrained(tmp_path / "m")
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "memory_growth.py"), "--model", str(tmp_path / "m"),
                          "--length", "0.25k"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = [line.split(" | ") for line in out.stdout.splitlines() if line[:1].isdigit()]
    segments = [int(r[0]) for r in rows]
    assert segments[0] == 1 and segments == sorted(segments) and len(segments) >= 3  # 256 tokens: 4+ segments of 64
    assert all(float(r[1]) > 0 and float(r[3]) > 0 for r in rows)
