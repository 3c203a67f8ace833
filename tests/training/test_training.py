"""Training on the Hugging Face Trainer: logging, best model, gradient accumulation, exact
resume, curriculum, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
import torch
from safetensors.torch import load_file
from transformers import TrainerCallback, TrainingArguments

from armt.config import ARMTConfig
from armt.training.config import RunConfig, load_run_config
from armt.training.run import train
from armt.training.trainer import ARMTTrainer, SegmentCollator


def tiny_run(out: Path, stages=((1, 20),), dropout: float | None = None, **training) -> RunConfig:
    values = {
        "model": {"tiny": {"family": "gpt2", "layers": 2, "hidden": 32, "vocab": 32,
                           **({} if dropout is None else {"dropout": dropout})}},
        "armt": {"num_mem_tokens": 2, "d_mem": 8, "segment_size": 12},
        "data": {"kind": "associative_retrieval", "num_train": 256, "num_eval": 8,
                 "options": {"key_len": 1, "value_len": 1}},
        "curriculum": [{"num_segments": n, "max_steps": s} for n, s in stages],
        "training": {"output_dir": str(out), "learning_rate": 3e-3, "per_device_train_batch_size": 4,
                     "per_device_eval_batch_size": 8, "eval_strategy": "steps", "eval_steps": 5,
                     "save_steps": 5, "logging_steps": 1, "report_to": [], "use_cpu": True, "seed": 0,
                     "disable_tqdm": True, "dataloader_num_workers": 0, **training},
        "metrics": ["exact_match"],
    }
    return RunConfig.from_dict(values)


def event_tags(directory: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tags = set()
    for events in directory.rglob("events.out.tfevents.*"):
        acc = EventAccumulator(str(events))
        acc.Reload()
        tags |= set(acc.Tags()["scalars"])
    return tags


def test_twenty_steps_log_to_tensorboard_and_keep_the_best_model(tmp_path):
    cfg = tiny_run(tmp_path / "run", report_to=["tensorboard"], metric_for_best_model="eval_loss",
                   greater_is_better=False, save_total_limit=2)
    [result] = train(cfg)
    stage = tmp_path / "run" / "stage1-1seg"
    tags = event_tags(stage)
    for tag in ("train/loss", "train/learning_rate", "train/grad_norm", "train/tokens_per_second",
                "train/num_segments", "eval/loss", "eval/exact_match", "eval/segment_1_loss"):
        assert tag in tags, (tag, sorted(tags))
    state = json.loads((stage / "checkpoint-20" / "trainer_state.json").read_text())
    evals = [(h["eval_loss"], h["step"]) for h in state["log_history"] if "eval_loss" in h]
    best_loss, best_step = min(evals)
    assert result.best_metric == pytest.approx(best_loss)
    assert state["best_model_checkpoint"].endswith(f"checkpoint-{best_step}")
    # best/ is a save_pretrained directory holding the best checkpoint's weights
    import armt

    best = armt.ARMTForCausalLM.from_pretrained(stage / "best")
    kept = load_file(str(Path(state["best_model_checkpoint"]) / "armt_model.safetensors"))
    torch.testing.assert_close(best.cell.armt_state_dict()["memory_tokens"], kept["memory_tokens"])
    assert len(list(stage.glob("checkpoint-*"))) <= 2  # save_total_limit (+ the best is kept)
    assert (tmp_path / "run" / "run_config.yaml").exists() and (tmp_path / "run" / "best" / "armt_config.json").exists()


def _grads_after_one_step(tmp_path, batch, accumulation, penalty=None, logs=None):
    from armt.training.run import build_model
    from armt.training.write_penalty import WritePenalty

    cfg = tiny_run(tmp_path)
    if penalty is not None:
        cfg = RunConfig.from_dict({**cfg.to_dict(), "armt": {**cfg.to_dict()["armt"], "write_gate": "hard"},
                                   "write_penalty": penalty, "write_margin": 0.25})
    torch.manual_seed(0)
    model = build_model(cfg)
    for module in model.modules():  # dropout masks would differ between the two batchings
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    # items with different numbers of scored tokens, so weighting by tokens matters
    items = []
    for i in range(4):
        ids = torch.randint(3, 32, (24,), generator=torch.Generator().manual_seed(i))
        labels = ids.clone()
        labels[: 4 + 5 * i] = -100
        items.append({"input_ids": ids, "labels": labels})
    grads, losses, seen = {}, [], {} if logs is None else logs

    class Grab(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            grads.update({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                losses.append(logs["loss"])
                seen.update(logs)

    args = TrainingArguments(output_dir=str(tmp_path / f"ga{accumulation}"), per_device_train_batch_size=batch,
                             gradient_accumulation_steps=accumulation, max_steps=1, learning_rate=1e-3,
                             logging_steps=1, report_to=[], use_cpu=True, save_strategy="no", disable_tqdm=True,
                             remove_unused_columns=False, seed=0, data_seed=0)
    trainer = ARMTTrainer(model=model, args=args, train_dataset=items, data_collator=SegmentCollator(),
                          callbacks=[Grab()],
                          write_penalty=WritePenalty.for_model(model, cfg.write_penalty, cfg.write_margin))
    trainer.train()
    return grads, losses[0]


def test_gradient_accumulation_equals_the_full_batch(tmp_path):
    full, loss_full = _grads_after_one_step(tmp_path, 4, 1)
    accumulated, loss_acc = _grads_after_one_step(tmp_path, 1, 4)
    assert full.keys() == accumulated.keys() and len(full) > 10
    for name in full:
        torch.testing.assert_close(accumulated[name], full[name], atol=1e-5, rtol=1e-4)
    assert loss_acc == pytest.approx(loss_full, abs=1e-5)


def test_write_penalty_joins_the_training_loss_and_accumulates_like_the_full_batch(tmp_path):
    logs = {}
    full, loss_full = _grads_after_one_step(tmp_path / "a", 4, 1, penalty=5.0, logs=logs)
    accumulated, loss_acc = _grads_after_one_step(tmp_path / "b", 1, 4, penalty=5.0)
    plain, loss_plain = _grads_after_one_step(tmp_path / "c", 4, 1, penalty=0.0)
    for name in full:
        torch.testing.assert_close(accumulated[name], full[name], atol=1e-5, rtol=1e-4)
    assert loss_acc == pytest.approx(loss_full, abs=1e-5)
    # the logged loss is the task loss plus 5 x the (margin-widened) write strength
    assert 0 < logs["write_strength"] <= 1.25 and 0 <= logs["write_open"] <= 1
    assert loss_full == pytest.approx(loss_plain + 5.0 * logs["write_strength"], abs=1e-4)
    # the penalty reaches the write gates' weights and nothing of the base's first layer
    gate = [n for n in full if "W_mb" in n]
    assert gate and any(not torch.allclose(full[n], plain[n]) for n in gate)


def test_write_penalty_config_is_checked(tmp_path):
    values = tiny_run(tmp_path / "run").to_dict()
    assert "write_penalty" not in values  # runs saved before the key existed resume unchanged
    with pytest.raises(ValueError, match="write_gate: hard"):
        RunConfig.from_dict({**values, "write_penalty": 1.0, "write_margin": 0.25})
    with pytest.raises(ValueError, match="write_penalty must be"):
        RunConfig.from_dict({**values, "write_penalty": -1})
    rmt = {**values, "armt": {**values["armt"], "memory": "tokens"}, "write_penalty": 1.0}
    with pytest.raises(ValueError, match="associative"):
        RunConfig.from_dict(rmt)
    cfg = RunConfig.from_dict({**values, "armt": {**values["armt"], "write_gate": "hard"}, "write_penalty": 2,
                               "write_margin": 0.25})
    assert cfg.to_dict()["write_penalty"] == 2 and RunConfig.from_dict(cfg.to_dict()) == cfg
    assert "write_penalty_shape" not in cfg.to_dict()  # the default is not written
    linear = RunConfig.from_dict({**cfg.to_dict(), "write_penalty_shape": "linear"})
    assert RunConfig.from_dict(linear.to_dict()).write_penalty_shape == "linear"
    with pytest.raises(ValueError, match="write_penalty_shape='linear' needs"):
        RunConfig.from_dict({**values, "write_penalty": 1.0, "write_penalty_shape": "linear"})


class Crash(TrainerCallback):
    """Stops the process the hard way right after a given step (a killed job)."""

    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            raise KeyboardInterrupt


def _losses(stage_dir: Path, last: int) -> list[float]:
    state = json.loads((stage_dir / f"checkpoint-{last}" / "trainer_state.json").read_text())
    return [h["loss"] for h in state["log_history"] if "loss" in h]


def test_resume_equals_the_uninterrupted_run(tmp_path):
    stages = ((1, 6), (2, 6))
    train(tiny_run(tmp_path / "a", stages=stages, save_steps=3, eval_steps=3))
    cfg = tiny_run(tmp_path / "b", stages=stages, save_steps=3, eval_steps=3)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=(Crash(4),))  # in stage 2, after its checkpoint at step 3
    with pytest.raises(FileExistsError, match="--resume"):
        train(cfg)
    # a run config written before memory: none spelled the switch use_memory; it resumes
    saved = tmp_path / "b" / "run_config.yaml"
    values = yaml.safe_load(saved.read_text())
    values["armt"]["use_memory"] = True
    saved.write_text(yaml.safe_dump(values, sort_keys=False))
    results = train(cfg, resume=True)
    assert [r.stage for r in results] == [1, 2]
    for stage in ("stage1-1seg", "stage2-2seg"):
        a, b = _losses(tmp_path / "a" / stage, 6), _losses(tmp_path / "b" / stage, 6)
        assert len(a) == len(b) == 6
        assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-6, (a, b)


def test_three_stage_curriculum_starts_each_stage_from_the_previous_best(tmp_path):
    starts = []

    class Snapshot(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            starts.append(model.cell.memory_tokens.detach().clone())

    cfg = tiny_run(tmp_path / "c", stages=((1, 5), (2, 5), (3, 5)), metric_for_best_model="eval_loss",
                   greater_is_better=False)
    results = train(cfg, callbacks=(Snapshot(),))
    assert [r.num_segments for r in results] == [1, 2, 3]
    for previous, start in zip(results[:-1], starts[1:]):
        best = load_file(str(Path(previous.best_dir) / "armt_model.safetensors"))["memory_tokens"]
        torch.testing.assert_close(start, best, rtol=0, atol=0)
    logs = json.loads((tmp_path / "c" / "stage3-3seg" / "checkpoint-5" / "trainer_state.json").read_text())
    assert {h.get("num_segments") for h in logs["log_history"]} == {3}


def test_a_stage_may_set_its_own_learning_rate(tmp_path):
    cfg = tiny_run(tmp_path / "lr", stages=((1, 5), (2, 5)), lr_scheduler_type="constant")
    cfg.curriculum[1].learning_rate = 1e-4
    train(cfg)
    rates = []
    for stage in ("stage1-1seg", "stage2-2seg"):
        logs = json.loads((tmp_path / "lr" / stage / "checkpoint-5" / "trainer_state.json").read_text())
        rates.append({h["learning_rate"] for h in logs["log_history"] if "learning_rate" in h})
    assert rates == [{3e-3}, {1e-4}]
    with pytest.raises(ValueError, match="learning_rate must be a positive number"):
        RunConfig.from_dict({**cfg.to_dict(), "curriculum": [{"num_segments": 1, "max_steps": 2, "learning_rate": 0}]})


def test_stage_stops_when_its_goal_is_reached(tmp_path):
    cfg = tiny_run(tmp_path / "g", stages=((1, 20),))
    cfg.curriculum[0].stop_metric, cfg.curriculum[0].stop_value = "eval_loss", 100.0
    [result] = train(cfg)
    assert result.stopped_at_goal and result.steps == 5


def test_sampled_segments_vary_per_item(tmp_path):
    from armt.data.retrieval import RetrievalConfig, RetrievalDataset
    from armt.training.curriculum import MixedSegments

    mixed = MixedSegments(lambda k: RetrievalDataset(RetrievalConfig(vocab_size=32, segment_size=12,
                                                                     num_segments=k, key_len=1)), 4)
    lengths = {len(mixed[i]["input_ids"]) for i in range(40)}
    assert lengths == {12, 24, 36, 48}
    batch = SegmentCollator()([mixed[i] for i in range(6)])
    assert batch["attention_mask"].sum(1).tolist() == [len(mixed[i]["input_ids"]) for i in range(6)]
    chosen = MixedSegments(lambda k: RetrievalDataset(RetrievalConfig(vocab_size=32, segment_size=12,
                                                                     num_segments=k, key_len=1)), 4,
                           choices=[1, 1, 4])
    counts = [len(chosen[i]["input_ids"]) for i in range(300)]
    assert set(counts) == {12, 48} and 150 < counts.count(12) < 250  # 1 is listed twice: ~2/3
    with pytest.raises(ValueError, match="choices"):
        MixedSegments(lambda k: [0], 4, choices=[1, 5])


def test_segment_choices_reach_the_training_data(tmp_path, monkeypatch):
    from armt.training import run as run_module

    cfg = RunConfig.from_dict({**tiny_run(tmp_path / "run").to_dict(),
                               "curriculum": [{"num_segments": 3, "max_steps": 2, "segment_choices": [1, 3]}]})
    seen = set()
    make_stage = run_module._stage_dataset

    def spy(make, stage, seed):
        ds = make_stage(make, stage, seed)
        seen.update(len(ds[i]["input_ids"]) for i in range(40))
        return ds

    monkeypatch.setattr(run_module, "_stage_dataset", spy)
    train(cfg)
    assert seen == {12, 36}
    assert yaml.safe_load((tmp_path / "run" / "run_config.yaml").read_text())["curriculum"][0]["segment_choices"] == [1, 3]


@pytest.mark.parametrize("stage, match", [
    ({"num_segments": 3, "max_steps": 1, "segment_choices": [1, 2]}, "must equal num_segments"),
    ({"num_segments": 2, "max_steps": 1, "segment_choices": [1, 2], "sample_segments": True}, "not both"),
    ({"num_segments": 2, "max_steps": 1, "segment_choices": [0, 2]}, "positive ints"),
    ({"num_segments": 2, "max_steps": 1, "segment_choices": []}, "positive ints"),
])
def test_bad_segment_choices_are_refused(stage, match):
    from armt.training.config import Stage

    with pytest.raises(ValueError, match=match):
        Stage(**stage)


@pytest.mark.parametrize("text, match", [
    ("model: {tiny: {family: gpt2}}\ntraining: {output_dir: x, learnign_rate: 1.0}\n", "training.learnign_rate"),
    ("model: {tiny: {family: gpt2}}\narmt: {segment_sise: 4}\ntraining: {output_dir: x}\n", "armt.segment_sise"),
    ("model: {tiny: {family: gpt2}}\ncurriculum: [{num_segments: 2, max_steps: 3, batch: 4}]\n"
     "training: {output_dir: x}\n", "curriculum\\[0\\].batch"),
    ("modell: {}\n", "config.modell"),
])
def test_unknown_keys_are_refused_by_name(tmp_path, text, match):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=match):
        load_run_config(path)


def test_overrides_apply_on_top_of_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {tiny: {family: gpt2}}\ntraining: {output_dir: x, learning_rate: 1.0}\n")
    cfg = load_run_config(path, ["--training.learning_rate", "0.5", "--armt.segment_size=32",
                                 "--curriculum", "[{num_segments: 2, max_steps: 3}]"])
    assert cfg.training["learning_rate"] == 0.5 and cfg.armt.segment_size == 32
    assert cfg.stages[0].num_segments == 2


def test_a_null_override_removes_a_training_key_so_a_curriculum_can_replace_max_steps(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {tiny: {family: gpt2}}\ntraining: {output_dir: x, max_steps: 50}\n")
    stages = ["--curriculum", "[{num_segments: 2, max_steps: 3}]"]
    with pytest.raises(ValueError, match="--training.max_steps null"):
        load_run_config(path, stages)
    cfg = load_run_config(path, [*stages, "--training.max_steps", "null"])
    assert "max_steps" not in cfg.training and cfg.stages[0].max_steps == 3
    # null elsewhere is a value, not a removal
    cfg = load_run_config(path, ["--early_stopping_patience", "null"])
    assert cfg.early_stopping_patience is None and cfg.training["max_steps"] == 50


def test_init_from_keeps_the_saved_memory_and_takes_new_run_options(tmp_path):
    from armt.training.run import build_model

    [first] = train(tiny_run(tmp_path / "first", stages=((2, 2),)))
    values = tiny_run(tmp_path / "second", stages=((2, 2),)).to_dict()
    values["model"]["init_from"] = first.best_dir
    values["armt"] = {"bptt_segments": 1}  # the saved model's num_mem_tokens=2 etc. are not repeated
    cfg = RunConfig.from_dict(values)
    model = build_model(cfg)
    assert model.config.bptt_segments == 1 and model.config.num_mem_tokens == 2 and model.config.segment_size == 12
    saved = load_file(str(Path(first.best_dir) / "armt_model.safetensors"))
    torch.testing.assert_close(model.cell.memory_tokens.detach(), saved["memory_tokens"])
    # the base was trained too (and saved with the memory): it is not replaced by a fresh one
    saved_base = load_file(str(Path(first.best_dir) / "model.safetensors"))
    name, weight = next((k, v) for k, v in saved_base.items() if k.endswith("wte.weight"))
    torch.testing.assert_close(model.base_model.state_dict()[name], weight)
    train(cfg)
    written = yaml.safe_load((tmp_path / "second" / "run_config.yaml").read_text())["armt"]
    assert written["bptt_segments"] == 1 and written["segment_size"] == 12 and written["num_mem_tokens"] == 2
    # a layout key that differs from the saved model is refused, not silently replaced
    values["armt"] = {"segment_size": 24, "bptt_segments": 1}
    with pytest.raises(ValueError, match=r"saved with segment_size=12; the run sets armt.segment_size=24"):
        build_model(RunConfig.from_dict(values))
    # built in Python (no record of the keys given): values other than the defaults count as given
    cfg = RunConfig(model=cfg.model, armt=ARMTConfig(segment_size=24), training=cfg.training)
    with pytest.raises(ValueError, match="armt.segment_size=24"):
        build_model(cfg)


def test_the_trainer_keeps_only_the_last_segments_logits(tmp_path):
    from armt.tiny import tiny_base_model
    from armt import ARMTForCausalLM

    model = ARMTForCausalLM(tiny_base_model("gpt2", layers=2, hidden=32, vocab=32),
                            ARMTConfig(num_mem_tokens=2, d_mem=8, segment_size=4))
    ids = torch.randint(32, (2, 12))
    batch = {"input_ids": ids, "labels": ids}
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    loss, out = ARMTTrainer(model=model, args=args).compute_loss(model, batch, return_outputs=True)
    assert out.logits.shape[1] == 4  # the last segment only
    torch.testing.assert_close(loss, model(**batch).loss)


def _qa_items(model, starts, length=2, seed=0):
    """Items whose answers are the model's own greedy continuation (right) or that plus one
    (wrong), alternately, answered at the given positions."""
    gen = torch.Generator().manual_seed(seed)
    items = []
    for i, start in enumerate(starts):
        prompt = torch.randint(99, (1, start), generator=gen)
        out = model.generate(prompt, max_new_tokens=length, do_sample=False, pad_token_id=0)
        answer = out[0, start:] if i % 2 == 0 else (out[0, start:] + 1) % 99
        ids = torch.cat([prompt[0], answer])
        labels = torch.full_like(ids, -100)
        labels[start:] = ids[start:]
        items.append({"input_ids": ids.tolist(), "labels": labels.tolist(), "answer_start": start})
    return items


def test_exact_match_from_the_loss_forward_equals_generating(tmp_path, monkeypatch, tiny_armt):
    model = tiny_armt("llama", segment_size=4, num_mem_tokens=2)  # float64: no near-ties
    # answers inside a segment (read from the loss forward) and one starting a segment (generated)
    items = _qa_items(model, starts=[9, 10, 13, 6, 8, 17])
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True, per_device_eval_batch_size=1)
    trainer = ARMTTrainer(model=model, args=args, metrics=["exact_match"],
                          data_collator=SegmentCollator(), generation_kwargs={"pad_token_id": 0})
    calls = []
    generate = model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **k: calls.append(1) or generate(*a, **k))
    forced = trainer.evaluation_records(items)
    assert len(calls) == 1  # only the answer at 8, the first token of the third segment
    trainer.answers_from_loss = False
    generated = trainer.evaluation_records(items)
    assert len(calls) == 1 + len(items)
    right = [p == t for p, t in zip(forced.predictions, forced.targets)]
    assert right == [p == t for p, t in zip(generated.predictions, generated.targets)]
    assert right == [True, False] * 3
    assert forced.targets == generated.targets and forced.loss == generated.loss
    # the wrong answers' first tokens are the model's own (the targets add one to them)
    assert all(p[0] == (t[0] - 1) % 99 for p, t, ok in zip(forced.predictions, forced.targets, right) if not ok)


def _write_config(path: Path, out: Path, **training) -> Path:
    import yaml

    values = tiny_run(out, stages=((2, 6),), dropout=None, **training).to_dict()
    values["model"]["tiny"]["dropout"] = 0.0  # identical random streams are not promised across ranks
    path.write_text(yaml.safe_dump(values))
    return path


def test_cli_train_runs_and_refuses_unknown_keys(tmp_path, capsys):
    from armt.cli import main

    cfg = _write_config(tmp_path / "run.yaml", tmp_path / "out")
    assert main(["train", str(cfg), "--training.max_grad_norm", "0.5", "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    assert "stage 1: 2 segments, 6 steps" in printed and (tmp_path / "out" / "best" / "armt_config.json").exists()
    assert main(["train", str(cfg), "--training.learnig_rate", "1", "--overwrite"]) == 2
    assert "training.learnig_rate" in capsys.readouterr().err


def test_two_processes_with_gloo_equal_one_process(tmp_path):
    import os
    import subprocess
    import sys

    cfg = _write_config(tmp_path / "run.yaml", tmp_path / "unused")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    single = tmp_path / "single"
    subprocess.run([sys.executable, "-m", "armt.cli", "train", str(cfg), "--threads", "1",
                    f"--training.output_dir={single}", "--training.per_device_train_batch_size=4"],
                   check=True, env=env, capture_output=True, timeout=300)
    ddp = tmp_path / "ddp"
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29533",
                          "-m", "armt.cli", "train", str(cfg), "--threads", "1", f"--training.output_dir={ddp}",
                          "--training.per_device_train_batch_size=2", "--training.ddp_backend=gloo"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = _losses(single / "stage1-2seg", 6), _losses(ddp / "stage1-2seg", 6)
    assert len(a) == len(b) == 6
    assert max(abs(x - y) for x, y in zip(a, b)) <= 1e-4, (a, b)


def test_fsdp_on_the_cpu_runs_as_ddp_and_says_so_and_fsdp_proper_is_refused(tmp_path, monkeypatch, caplog):
    """accelerate enables FSDP only on accelerator devices: asked for on the CPU, the run is DDP (a
    warning says so); where FSDP would shard, armt refuses, as its checkpoints would be shards."""
    import logging
    from types import SimpleNamespace

    from armt.training.run import _check_fsdp

    def trainer(fsdp, kind):
        return SimpleNamespace(args=SimpleNamespace(fsdp=fsdp),
                               accelerator=SimpleNamespace(distributed_type=SimpleNamespace(value=kind)))

    with caplog.at_level(logging.WARNING, logger="armt.training.run"):
        _check_fsdp(trainer(["full_shard"], "MULTI_CPU"))
        _check_fsdp(trainer([], "MULTI_CPU"))
    assert [r.getMessage() for r in caplog.records if "FSDP was asked" in r.getMessage()] == [
        "FSDP was asked for, but accelerate runs it as MULTI_CPU (plain data parallelism: every process holds every "
        "parameter); it enables FSDP only on GPUs and similar devices"]
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(ValueError, match="FSDP is not supported"):
        _check_fsdp(trainer([], "FSDP"))


def test_babilong_recipe_trains_on_real_babi_and_books(data_dir, tmp_path, capsys):
    from armt.cli import main

    if not (data_dir / "babi" / "en").is_dir() or not (data_dir / "gutenberg").is_dir():
        pytest.skip(f"bAbI / Gutenberg data not found under {data_dir}")
    out = tmp_path / "bl"
    code = main(["babilong", "train", "--threads", "1", f"--training.output_dir={out}",
                 f"--data.options.babi={data_dir / 'babi'}", f"--data.options.background={data_dir / 'gutenberg'}",
                 "--data.options.tokenizer_vocab=300", "--data.options.tokenizer_train_chars=200000","--data.num_train=16", "--data.num_eval=4",
                 "--curriculum=[{num_segments: 1, max_steps: 3}, {num_segments: 2, max_steps: 3}]",
                 "--training.eval_steps=3", "--training.save_steps=3", "--training.report_to=[]",
                 "--armt.segment_size=96", "--early_stopping_patience=null"])
    assert code == 0, capsys.readouterr().err[-2000:]
    state = json.loads((out / "stage2-2seg" / "checkpoint-3" / "trainer_state.json").read_text())
    evals = [h for h in state["log_history"] if "eval_exact_match" in h]
    assert evals and 0.0 <= evals[-1]["eval_exact_match"] <= 1.0
    assert (out / "tokenizer" / "tokenizer.json").exists() and (out / "best" / "tokenizer.json").exists()
    # run_config.yaml is the config the run used, derived values included
    from transformers import AutoTokenizer

    written = yaml.safe_load((out / "run_config.yaml").read_text())
    assert written["model"]["tiny"]["vocab"] == len(AutoTokenizer.from_pretrained(str(out / "tokenizer")))


def test_scientific_notation_reads_as_numbers(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("model: {tiny: {family: gpt2}}\ntraining: {output_dir: x, learning_rate: 1e-5}\n")
    cfg = load_run_config(path, ["--training.weight_decay", "1E-2"])
    assert cfg.training["learning_rate"] == 1e-5 and cfg.training["weight_decay"] == 0.01


def test_early_stopping_and_trainer_options(tmp_path):
    # lr 0: eval_loss never improves, so patience 1 stops after the second evaluation
    cfg = tiny_run(tmp_path / "e", stages=((2, 40),), learning_rate=0.0, metric_for_best_model="eval_loss",
                   greater_is_better=False, gradient_checkpointing=True, bf16=True, max_grad_norm=0.5,
                   lr_scheduler_type="cosine")
    cfg.early_stopping_patience = 1
    [result] = train(cfg)
    assert result.steps == 10
    import armt

    best = armt.ARMTForCausalLM.from_pretrained(Path(result.best_dir))
    assert best.config.gradient_checkpointing  # the Trainer turned on ARMT's per-segment checkpointing
