"""Needle evaluation at any length, the length benchmark and its outputs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from armt.data.needle import NeedleConfig, fixed_needle_batch
from armt.evaluation.length import length_table, run_length_benchmark, write_length
from armt.evaluation.needle import NeedleStage, evaluate_needle, needle_predictions, wilson_interval
from armt.training.capacity import CapacityModelSpec, CapacityRecipe, train_stages

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(layers=1, hidden=32, heads=2, intermediate=64)


def _reference_answers(model, ids, cfg):
    """The plain way: the whole sample through the model in one call, the answer's logits read off."""
    with torch.no_grad():
        logits = model(ids).logits
    return logits[:, -cfg.value_len - 1:-1].argmax(-1)


@pytest.mark.parametrize("kind", ["armt", "rmt", "none"])
def test_chunked_reading_answers_as_one_forward_pass(kind):
    model = CapacityModelSpec(kind=kind, **SMALL).build().eval()
    if kind == "armt":
        torch.manual_seed(1)
        for mem in model.cell.memory_layers:  # a live memory, so that reading matters
            torch.nn.init.normal_(mem.W_mv.weight, std=0.3)
    cfg = NeedleConfig(num_facts=2, num_segments=23)
    ids = fixed_needle_batch(cfg, 8, 0)["input_ids"]
    want = _reference_answers(model, ids, cfg)
    for chunk in (1, 5, 64):
        assert torch.equal(needle_predictions(model, ids, cfg, chunk_segments=chunk), want)
    if kind == "armt":  # the wiped control differs from the live memory
        wiped = needle_predictions(model, ids, cfg, wipe_memory=True)
        assert torch.equal(wiped, _reference_answers(model, ids[:, -4:], NeedleConfig(num_facts=1, num_segments=1)))


def test_a_model_for_another_segment_size_is_refused():
    model = CapacityModelSpec(**SMALL).build()
    cfg = NeedleConfig(num_facts=1, num_segments=3, key_len=3)
    with pytest.raises(ValueError, match="segment_size=4 differs from the task's 5"):
        needle_predictions(model, fixed_needle_batch(cfg, 1, 0)["input_ids"], cfg)


def test_wilson_interval_contains_the_estimate_and_narrows():
    lo, hi = wilson_interval(32, 64)
    assert lo < 0.5 < hi
    lo2, hi2 = wilson_interval(320, 640)
    assert hi2 - lo2 < hi - lo
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0


def test_a_needle_stage_learns_one_fact_and_the_wiped_control_does_not():
    """One fact one segment back: learned in a few hundred steps, and only through the memory."""
    model = CapacityModelSpec(layers=2, hidden=64, heads=2, intermediate=128, d_mem=16).build(
        NeedleConfig(num_facts=1, num_segments=1))
    recipe = CapacityRecipe(max_steps_per_stage=400, eval_every=50, eval_samples=128, learning_rate=3e-3,
                            warmup_steps=20, advance_at=0.95)
    run = train_stages(model, [NeedleStage(1, 1)], recipe)
    assert run.stages[0]["passed"], run.evaluations
    cfg = NeedleConfig(num_facts=1, num_segments=1)
    assert evaluate_needle(model, cfg, num_samples=128)["exact_match"] >= 0.9
    assert evaluate_needle(model, cfg, num_samples=128, wipe_memory=True)["exact_match"] < 0.2


def test_benchmark_skips_lengths_after_chance_and_writes_its_files(tmp_path):
    recipe = CapacityRecipe(max_steps_per_stage=2, eval_every=2, eval_samples=8)
    res = run_length_benchmark(["none"], recipe=recipe, model=CapacityModelSpec(**SMALL), stages=[(1, 1)],
                               distractors=["symbols"], eval_segments=[2, 4, 8, 16], eval_samples=64,
                               stop_after_chance=2, log=lambda s: None)
    series = res["models"]["none"]["exact_match"]["symbols"]
    assert "exact_match" in series["2"] and "exact_match" in series["4"]  # untrained: at chance twice
    assert "skipped" in series["8"] and "skipped" in series["16"]
    assert "chance (not run)" in length_table(res)
    paths = write_length(res, tmp_path)
    assert json.loads(paths[0].read_text())["chance"] == 1 / 16 and paths[2].stat().st_size > 0
    with pytest.raises(FileExistsError, match="overwrite"):
        write_length(res, tmp_path)


def test_benchmark_stops_below_a_threshold():
    recipe = CapacityRecipe(max_steps_per_stage=2, eval_every=2, eval_samples=8)
    res = run_length_benchmark(["none"], recipe=recipe, model=CapacityModelSpec(**SMALL), stages=[(1, 1)],
                               distractors=["symbols"], eval_segments=[2, 4, 8], eval_samples=16,
                               stop_after_chance=None, stop_below=0.99, log=lambda s: None)
    series = res["models"]["none"]["exact_match"]["symbols"]
    assert "exact_match" in series["2"] and series["4"] == series["8"] == {"skipped": "below 0.99 at 2"}
    assert "lower (not run)" in length_table(res) and res["stop_below"] == 0.99


def test_results_of_several_runs_combine_into_one_table_and_plot(tmp_path):
    from armt.evaluation.length import combine_lengths

    recipe = CapacityRecipe(max_steps_per_stage=2, eval_every=2, eval_samples=8)
    kw = dict(recipe=recipe, model=CapacityModelSpec(**SMALL), stages=[(1, 1)], distractors=["symbols"],
              eval_samples=8, log=lambda s: None)
    a = run_length_benchmark(["armt", "none"], eval_segments=[2, 4], **kw)
    b = run_length_benchmark(["armt"], eval_segments=[2, 4], **kw)
    merged = combine_lengths([(a, "official"), (b, "variant")])
    assert [e["label"] for e in merged["models"].values()] == ["official", "no memory", "variant"]
    table = length_table(merged)
    assert "official, symbols" in table and "variant wiped, symbols" in table
    for i, res in enumerate((a, b)):
        (tmp_path / f"{i}.json").write_text(json.dumps(res))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "length_compare.py"), f"{tmp_path}/0.json=x",
                          f"{tmp_path}/1.json=y", "--models", "armt", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "length_compare.png").exists() and "| x, symbols |" in out.stdout
    c = run_length_benchmark(["none"], eval_segments=[2, 8], **kw)
    with pytest.raises(ValueError, match="eval_segments"):
        combine_lengths([(a, None), (c, None)])


def test_benchmark_script_smoke(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "length.py"), "--smoke", "--models", "armt,none",
                          "--out", str(tmp_path), "--save-models", str(tmp_path / "models"),
                          "--option", "write_gate=hard", "--text-source", "builtin", "--write-penalty", "0.1",
                          "--write-margin", "0.1", "--write-penalty-shape", "linear", "--hold-last", "--keep-best",
                          "--stop-below", "0.01", "--leak-stop", "0.0"],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    res = json.loads((tmp_path / "length.json").read_text())
    assert res["model"]["options"] == [["write_gate", "hard"]]
    assert res["recipe"]["keep_best"] is True and res["recipe"]["leak_stop"] == 0.0
    assert res["recipe"]["write_penalty_shape"] == "linear"
    assert 0.0 <= res["models"]["armt"]["leak"] <= 1.0 and res["models"]["none"]["leak"] is None
    assert "built-in" in res["text_source"]
    assert (tmp_path / "models" / "length" / "armt" / "armt_config.json").exists()


def test_a_run_continues_from_a_saved_model_with_the_penalty_on_distractors(tmp_path):
    spec = CapacityModelSpec(**SMALL, options=(("write_gate", "hard"),))
    recipe = CapacityRecipe(max_steps_per_stage=2, eval_every=2, eval_samples=8, write_penalty=1.0,
                            write_penalty_on="distractors")
    common = dict(recipe=recipe, distractors=["symbols"], eval_segments=[4], eval_samples=8, log=lambda s: None)
    run_length_benchmark(["armt"], model=spec, stages=[(1, 4)], save_models=tmp_path / "first", **common)
    res = run_length_benchmark(["armt"], model=spec, stages=[(2, 4)], init_from=tmp_path / "first",
                               recipe=CapacityRecipe(max_steps_per_stage=0, eval_every=2, eval_samples=8),
                               distractors=["symbols"], eval_segments=[4], eval_samples=8, log=lambda s: None)
    # no training step: the evaluated model is the saved one, answering as it did
    from armt import ARMTForCausalLM

    first = ARMTForCausalLM.from_pretrained(tmp_path / "first" / "armt")
    cfg = NeedleConfig(num_facts=2, num_segments=4)
    batch = fixed_needle_batch(cfg, 8, seed=3)
    built = CapacityModelSpec(**SMALL, options=(("write_gate", "hard"),)).build(cfg)
    from armt.evaluation.length import _start_from  # noqa: PLC2701 (the loader under test)

    _start_from(built, tmp_path / "first" / "armt")
    with torch.no_grad():
        torch.testing.assert_close(built(batch["input_ids"]).logits, first(batch["input_ids"]).logits)
    assert res["init_from"] == str(tmp_path / "first")
    with pytest.raises(ValueError, match="write_gate='hard' \\(this run: 'sigmoid'\\)"):
        run_length_benchmark(["armt"], model=CapacityModelSpec(**SMALL), stages=[(1, 4)],
                             init_from=tmp_path / "first", **common)
    with pytest.raises(FileNotFoundError, match="no saved model"):
        run_length_benchmark(["armt"], model=spec, stages=[(1, 4)], init_from=tmp_path / "nowhere", **common)


def test_the_distractor_penalty_needs_batches_that_name_distractors():
    class Plain:
        key, fields, penalise_writes = "plain", {}, True

        def batch(self, batch_size, generator):
            ids = torch.randint(16, (batch_size, 8), generator=generator)
            return {"input_ids": ids, "labels": ids}

    model = CapacityModelSpec(**SMALL, options=(("write_gate", "hard"),)).build(NeedleConfig(num_facts=1, num_segments=2))
    recipe = CapacityRecipe(max_steps_per_stage=1, write_penalty=1.0, write_penalty_on="distractors")
    with pytest.raises(ValueError, match="distractor_segments"):
        train_stages(model, [Plain()], recipe)
    with pytest.raises(ValueError, match="write_penalty_on"):
        CapacityRecipe(write_penalty_on="facts")


def test_open_gate_share_counts_distractor_segments_whose_gate_opens():
    from armt.evaluation.needle import NeedleStage, open_gate_share

    cfg = NeedleConfig(num_facts=2, num_segments=8)
    spec = CapacityModelSpec(**SMALL, options=(("write_gate", "hard"),))
    model = spec.build(cfg)
    memory = model.cell.memory_layers[0]
    with torch.no_grad():  # the gate's input is the bias alone: shut, then open, everywhere
        memory.W_mb.weight.zero_()
        memory.W_mb.bias.fill_(-3.0)
        assert open_gate_share(model, cfg, num_samples=4) == 0.0
        assert NeedleStage(2, 4).leak(model, 8, num_samples=4) == 0.0
        memory.W_mb.bias.fill_(3.0)
        assert open_gate_share(model, cfg, num_samples=4) == 1.0
        assert open_gate_share(model, cfg, num_samples=4, after=6) == 1.0
        assert NeedleStage(2, 4).leak(model, 8, num_samples=4) == 1.0
    with pytest.raises(ValueError, match="after=8"):
        open_gate_share(model, cfg, after=8)
    model.train()
    open_gate_share(model, cfg, num_samples=2)
    assert model.training  # the mode it had
    with pytest.raises(ValueError, match="write_gate='hard'"):
        open_gate_share(CapacityModelSpec(**SMALL).build(cfg), cfg)
