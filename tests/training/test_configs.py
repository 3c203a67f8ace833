"""Every file in configs/ is a valid run config, and the PG19 files hold the official recipe."""

from __future__ import annotations

from pathlib import Path

import pytest

from armt.training.config import load_run_config

CONFIGS = sorted((Path(__file__).resolve().parents[2] / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert CONFIGS, "configs/ holds no .yaml files"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads(path):
    cfg = load_run_config(path)
    assert cfg.stages and cfg.training["output_dir"]


@pytest.mark.parametrize("name", ["pg19_llama_sliding.yaml", "pg19_tiny.yaml"])
def test_pg19_configs_hold_the_recipe(name):
    cfg = load_run_config(Path(CONFIGS[0]).parent / name)
    a, d, t = cfg.armt, cfg.data, cfg.training
    assert (a.segment_size, a.num_mem_tokens, a.d_mem) == (512, 32, 64)
    assert a.sliding_window and a.use_sink and a.use_memory
    assert d.kind == "lm" and d.num_segments == 2 and d.options["no_loss_segments"] == 1
    assert (t["lr_scheduler_type"], t["warmup_steps"], t["optim"], t["weight_decay"]) == ("linear", 0.1,
                                                                                         "adamw_torch", 0.01)
    if name == "pg19_llama_sliding.yaml":
        assert cfg.model.name_or_path == "meta-llama/Llama-3.2-1B" and t["bf16"]
        assert t["learning_rate"] == 1e-5
        assert t["per_device_train_batch_size"] * t["gradient_accumulation_steps"] == 64
    else:
        assert cfg.model.tiny["family"] == "llama" and (cfg.model.tiny["hidden"], cfg.model.tiny["layers"]) == (128, 4)
    baseline = load_run_config(Path(CONFIGS[0]).parent / name, ["--armt.memory", "none"])
    assert not baseline.armt.use_memory and baseline.armt.sliding_window and baseline.armt.use_sink


def test_smollm2_configs_hold_the_cpu_recipes():
    folder = Path(CONFIGS[0]).parent
    books = load_run_config(folder / "pg19_smollm2.yaml")
    assert books.model.name_or_path == "bases/smollm2-135m" and books.model.lora["r"] == 16
    assert (books.armt.segment_size, books.armt.num_mem_tokens, books.armt.d_mem) == (256, 16, 64)
    assert not books.armt.sliding_window and books.armt.use_sink and books.data.options["no_loss_segments"] == 1
    assert books.data.options["held_out_books"] == ["austen-persuasion", "chesterton-ball"]
    babilong = load_run_config(folder / "babilong_smollm2.yaml")
    assert [s.num_segments for s in babilong.stages] == [1, 2, 4]
    # the answer format at 3e-4 on one segment, then the memory stages at the run's 1e-4
    assert [s.learning_rate for s in babilong.stages] == [3e-4, None, None]
    assert babilong.training["learning_rate"] == 1e-4
    assert babilong.data.options["tasks"] == ["qa1"] and babilong.armt.last_segment_loss_only
    assert babilong.metrics == ["exact_match"] and babilong.armt.segment_size == 256
