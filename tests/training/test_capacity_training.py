"""The capacity-task loop, evaluation, the benchmark (smoke) and ``data.kind: capacity``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from armt.evaluation.capacity import capacity_markdown, run_capacity_benchmark, write_capacity
from armt.training.capacity import CapacityModelSpec, CapacityRecipe, evaluate_capacity, train_capacity
from armt.training.config import RunConfig
from armt.training.run import train

ROOT = Path(__file__).resolve().parents[2]
SMALL = dict(layers=1, hidden=32, heads=2, intermediate=64)


def test_training_learns_one_pair_and_the_wiped_memory_control_does_not():
    """N=1: the value must cross one segment boundary. A tiny ARMT learns it in a few hundred
    steps; the same weights with the memory wiped before the query stay near chance."""
    torch.manual_seed(0)
    model = CapacityModelSpec(layers=2, hidden=64, heads=2, intermediate=128, d_mem=16).build()
    recipe = CapacityRecipe(curriculum=(1,), max_steps_per_stage=400, eval_every=50, eval_samples=128,
                            learning_rate=3e-3, warmup_steps=20)
    run = train_capacity(model, recipe)
    assert run.reached == 1, run.evaluations
    em = evaluate_capacity(model, [1], num_samples=256)[1]
    wiped = evaluate_capacity(model, [1], num_samples=256, wipe_memory=True)[1]
    assert em >= 0.95 and wiped < 0.2, (em, wiped)


def test_evaluation_scores_the_value_only():
    model = CapacityModelSpec(kind="none", **SMALL).build()
    # a model without memory cannot know the value: it scores near chance (1/16)
    assert evaluate_capacity(model, [4], num_samples=512)[4] < 0.2


def test_time_budget_and_step_limit_end_training(tmp_path):
    model = CapacityModelSpec(**SMALL).build()
    run = train_capacity(model, CapacityRecipe(curriculum=(1, 2), max_steps_per_stage=3, eval_every=3,
                                               eval_samples=8), log_path=str(tmp_path / "log.jsonl"))
    assert run.steps == 3 and run.stages[0]["passed"] is False and len(run.stages) == 1
    lines = [json.loads(x) for x in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert lines[0]["step"] == 3 and "stage_done" in lines[-1]
    run = train_capacity(model, CapacityRecipe(curriculum=(1,), time_budget_s=1e-9))
    assert run.steps == 0
    # a step budget over the whole curriculum: the same run on any machine
    run = train_capacity(model, CapacityRecipe(curriculum=(1, 2), advance_at=0.0, eval_every=2, eval_samples=8,
                                               max_steps=3, hold_last=True))
    assert run.steps == 3 and [s["steps"] for s in run.stages] == [2, 1]


def test_recipe_refuses_bad_values():
    with pytest.raises(ValueError, match="curriculum"):
        CapacityRecipe(curriculum=(0,))
    with pytest.raises(ValueError, match="variant"):
        CapacityRecipe(variant="x")
    with pytest.raises(ValueError, match="kind"):
        CapacityModelSpec(kind="lstm")


def test_benchmark_writes_json_table_and_plot(tmp_path):
    recipe = CapacityRecipe(curriculum=(1,), max_steps_per_stage=2, eval_every=2, eval_samples=8)
    res = run_capacity_benchmark(["armt", "rmt"], recipe=recipe, model=CapacityModelSpec(**SMALL),
                                 eval_pairs=[2, 4], eval_samples=8, log=lambda s: None)
    paths = write_capacity(res, tmp_path)
    assert [p.name for p in paths] == ["capacity.json", "capacity.md", "capacity.png"]
    table = capacity_markdown(res)
    assert "| 4 |" in table and "RMT" in table and "memory wiped" in table
    with pytest.raises(FileExistsError, match="overwrite"):
        write_capacity(res, tmp_path)


def test_benchmark_script_smoke(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "capacity.py"), "--smoke", "--threads", "1",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "exact match by N" in out.stdout and (tmp_path / "capacity.png").exists()
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "capacity.py"), "--smoke", "--out",
                            str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "overwrite" in again.stderr  # refused before any training


def test_armt_train_with_data_kind_capacity(tmp_path):
    cfg = RunConfig.from_dict({
        "model": {"tiny": {"family": "gpt_neox", "layers": 1, "hidden": 32, "vocab": 18}},
        "armt": {"num_mem_tokens": 2, "d_mem": 8, "segment_size": 4, "memory": "tokens"},
        "data": {"kind": "capacity", "num_train": 64, "num_eval": 8, "options": {"variant": "rewrite"}},
        "curriculum": [{"num_segments": 3, "max_steps": 4}],
        "training": {"output_dir": str(tmp_path / "run"), "per_device_train_batch_size": 8, "report_to": [],
                     "use_cpu": True, "eval_strategy": "steps", "eval_steps": 2, "save_steps": 2,
                     "disable_tqdm": True, "metric_for_best_model": "eval_exact_match", "greater_is_better": True},
        "metrics": ["exact_match"],
    })
    [result] = train(cfg)
    assert result.steps == 4 and result.best_metric is not None
    bad = cfg.to_dict()
    bad["armt"]["segment_size"] = 8
    bad["training"]["output_dir"] = str(tmp_path / "bad")
    with pytest.raises(ValueError, match="segment_size to 4"):
        train(RunConfig.from_dict(bad))


def test_write_penalty_lowers_the_write_strength_and_needs_the_sequential_loop():
    from armt.evaluation.needle import NeedleStage
    from armt.training.capacity import train_stages

    def strength(penalty):
        model = CapacityModelSpec(options=(("write_gate", "hard"),), **SMALL).build()
        recipe = CapacityRecipe(max_steps_per_stage=40, eval_every=20, eval_samples=8, warmup_steps=1,
                                learning_rate=1e-2, write_penalty=penalty)
        return train_stages(model, [NeedleStage(1, 2)], recipe).evaluations[-1].get("write_strength")

    free, penalised = strength(0.0), strength(10.0)
    assert free is None  # nothing recorded without a penalty
    assert penalised < 0.1, penalised
    # a stage without distractors needs every write: no penalty there
    model = CapacityModelSpec(options=(("write_gate", "hard"),), **SMALL).build()
    run = train_stages(model, [NeedleStage(2, 2)], CapacityRecipe(max_steps_per_stage=2, eval_every=2,
                                                                 eval_samples=8, write_penalty=10.0))
    assert "write_strength" not in run.evaluations[-1]
    with pytest.raises(ValueError, match="write_penalty must be >= 0"):
        CapacityRecipe(write_penalty=-1.0)
    with pytest.raises(ValueError, match="wavefront=False"):
        train_capacity(CapacityModelSpec(wavefront=True, **SMALL).build(),
                       CapacityRecipe(curriculum=(1,), max_steps_per_stage=1, write_penalty=0.1))


def test_hold_last_keeps_training_the_last_stage_after_it_passes():
    def run(hold):
        model = CapacityModelSpec(**SMALL).build()
        recipe = CapacityRecipe(curriculum=(1, 2), advance_at=0.0, max_steps_per_stage=6, eval_every=2,
                                eval_samples=8, hold_last=hold)
        return train_capacity(model, recipe)

    plain, held = run(False), run(True)
    # every evaluation passes (advance_at 0): plain stops each stage at its first evaluation
    assert [s["steps"] for s in plain.stages] == [2, 2] and plain.steps == 4
    # held: only the last stage goes on, to its step limit, and still counts as passed
    assert [s["steps"] for s in held.stages] == [2, 6] and held.steps == 8
    assert all(s["passed"] for s in held.stages) and held.reached == 2
    assert [e["step"] for e in held.evaluations] == [2, 4, 6, 8]


def test_keep_best_ends_with_the_weights_of_the_best_held_evaluation():
    from armt.evaluation.needle import NeedleStage
    from armt.training.capacity import train_stages

    class Scripted(NeedleStage):
        """A needle stage whose evaluations are scripted, recording the weights each one saw."""

        def __init__(self, scores):
            super().__init__(1, 2)
            self.scores, self.seen = list(scores), []

        def evaluate(self, model, num_samples, seed):
            self.seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            return self.scores[len(self.seen) - 1]

    def run(keep_best, scores):
        model = CapacityModelSpec(**SMALL).build()
        stage = Scripted(scores)
        recipe = CapacityRecipe(curriculum=(1,), advance_at=0.5, max_steps_per_stage=8, eval_every=2,
                                eval_samples=4, hold_last=True, keep_best=keep_best, learning_rate=1e-2)
        return model, stage, train_stages(model, [stage], recipe)

    # the held stage peaks at its second evaluation (step 4), then collapses
    model, stage, result = run(True, [0.6, 0.9, 0.1, 0.2])
    assert result.stages[-1]["kept_step"] == 4 and result.stages[-1]["passed"]
    final = model.state_dict()
    assert all(torch.equal(final[k], stage.seen[1][k]) for k in final)
    assert not all(torch.equal(final[k], stage.seen[3][k]) for k in final)
    # equal scores: the latest is kept; without keep_best the last step's weights stay
    _, _, result = run(True, [0.9, 0.9, 0.1, 0.9])
    assert result.stages[-1]["kept_step"] == 8
    model, stage, result = run(False, [0.6, 0.9, 0.1, 0.2])
    assert "kept_step" not in result.stages[-1]
    assert not all(torch.equal(v, stage.seen[1][k]) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="hold_last"):
        CapacityRecipe(keep_best=True)


def test_leak_stop_ends_the_held_stage_and_keep_best_keeps_the_least_leak():
    from armt.evaluation.needle import NeedleStage
    from armt.training.capacity import train_stages

    class Scripted(NeedleStage):
        """Scripted exact match and leak; records the weights each evaluation saw."""

        def __init__(self, scores, leaks):
            super().__init__(1, 2)
            self.scores, self.leaks, self.seen, self.leak_calls = list(scores), list(leaks), [], []

        def evaluate(self, model, num_samples, seed):
            self.seen.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            return self.scores[len(self.seen) - 1]

        def leak(self, model, num_segments, num_samples=32):
            self.leak_calls.append((num_segments, num_samples))
            return self.leaks[len(self.seen) - 1]

    def run(scores, leaks, stop, keep_best=True):
        model = CapacityModelSpec(**SMALL).build()
        stage = Scripted(scores, leaks)
        recipe = CapacityRecipe(curriculum=(1,), advance_at=0.5, max_steps_per_stage=8, eval_every=2,
                                eval_samples=4, hold_last=True, keep_best=keep_best, learning_rate=1e-2,
                                leak_stop=stop, leak_segments=9, leak_samples=3)
        return model, stage, train_stages(model, [stage], recipe)

    # never below the stop: held to the step limit, the least-leaking passing evaluation kept
    model, stage, result = run([0.9, 0.9, 0.9, 0.9], [0.3, 0.1, 0.2, 0.15], stop=0.01)
    done = result.stages[-1]
    assert done["steps"] == 8 and done["kept_step"] == 4 and done["kept_leak"] == 0.1
    assert [e["leak"] for e in result.evaluations] == [0.3, 0.1, 0.2, 0.15]
    assert stage.leak_calls == [(9, 3)] * 4
    final = model.state_dict()
    assert all(torch.equal(final[k], stage.seen[1][k]) for k in final)
    # the first passing evaluation at or below the stop ends the stage
    _, _, result = run([0.9, 0.9, 0.9, 0.9], [0.3, 0.1, 0.2, 0.15], stop=0.12)
    assert result.stages[-1]["steps"] == 4 and result.stages[-1]["kept_step"] == 4
    # a failing evaluation neither stops the stage nor is kept, however little it leaks
    _, _, result = run([0.9, 0.1, 0.9, 0.9], [0.3, 0.0, 0.4, 0.35], stop=0.01)
    assert result.stages[-1]["steps"] == 8 and result.stages[-1]["kept_step"] == 2
    with pytest.raises(ValueError, match="hold_last"):
        CapacityRecipe(leak_stop=0.1)
    with pytest.raises(ValueError, match="leak_stop"):
        CapacityRecipe(hold_last=True, leak_stop=1.5)

    class Plain:
        key, fields = "plain", {}

    with pytest.raises(ValueError, match="leak"):
        train_stages(CapacityModelSpec(**SMALL).build(), [Plain()], CapacityRecipe(hold_last=True, leak_stop=0.1))


def test_write_margin_shuts_gates_with_room_to_spare():
    from armt.evaluation.needle import NeedleStage
    from armt.training.capacity import train_stages

    def last(margin):
        model = CapacityModelSpec(options=(("write_gate", "hard"),), **SMALL).build()
        recipe = CapacityRecipe(max_steps_per_stage=40, eval_every=20, eval_samples=8, warmup_steps=1,
                                learning_rate=1e-2, write_penalty=10.0, write_margin=margin)
        return train_stages(model, [NeedleStage(1, 2)], recipe).evaluations[-1]

    plain, margined = last(0.0), last(0.5)
    # the penalty's strength with a margin is >= the gate's own, and the gates end up shut
    assert 0.0 <= plain["write_open"] <= 1.0 and margined["write_open"] < 0.1, (plain, margined)
    with pytest.raises(ValueError, match="write_margin needs ARMTConfig"):
        train_stages(CapacityModelSpec(**SMALL).build(), [NeedleStage(1, 2)],
                     CapacityRecipe(max_steps_per_stage=1, write_penalty=1.0, write_margin=0.1))
    with pytest.raises(ValueError, match="write_margin must be >= 0"):
        CapacityRecipe(write_margin=-0.1)
    with pytest.raises(ValueError, match="write_penalty_shape='flat'"):
        CapacityRecipe(write_penalty_shape="flat")
