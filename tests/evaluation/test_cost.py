"""Cost accounting: matrix FLOPs, operator profiles, interleaved timing, the profile script."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import armt
from armt.evaluation.cost import count_flops, interleaved_times, op_times, step_functions
from armt.tiny import tiny_base_model

ROOT = Path(__file__).resolve().parents[2]


def test_count_flops_counts_forward_and_backward_products():
    layer = torch.nn.Linear(8, 4, bias=False)
    x = torch.randn(2, 8)
    assert count_flops(lambda: layer(x)) == 2 * 2 * 8 * 4
    # backward: the weight's gradient only (x needs none), one more product of the same size
    assert count_flops(lambda: layer(x).sum().backward()) == 2 * (2 * 2 * 8 * 4)


def test_step_functions_run_the_same_tokens_and_armt_costs_more_arithmetic():
    torch.manual_seed(0)
    base = tiny_base_model("gpt2", layers=2, hidden=32)
    model = armt.ARMTForCausalLM(tiny_base_model("gpt2", layers=2, hidden=32),
                                 armt.ARMTConfig(num_mem_tokens=2, d_mem=4, segment_size=8))
    ids = torch.randint(100, (2, 32))
    fns = step_functions(base, model, ids, 8)
    assert set(fns) == {"train bare", "train ARMT", "read bare", "read ARMT"}
    flops = {name: count_flops(fn) for name, fn in fns.items()}
    # ARMT runs 10 positions per 8 tokens plus the memory: more arithmetic, but not twice
    assert 1.0 < flops["train ARMT"] / flops["train bare"] < 2.0
    assert 1.0 < flops["read ARMT"] / flops["read bare"] < 2.0
    assert model.cell.memory_tokens.grad is not None  # the training pass ran its backward
    ops = op_times(fns["read ARMT"])
    assert ops and all(v >= 0 for v in ops.values()) and list(ops.values()) == sorted(ops.values(), reverse=True)


def test_interleaved_times_time_every_function_in_turns():
    calls = []
    times = interleaved_times({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, repeats=3, warmup=1)
    assert calls == ["a", "b"] + ["a", "b"] * 3 and set(times) == {"a", "b"}
    with pytest.raises(ValueError, match="repeats"):
        interleaved_times({"a": lambda: None}, repeats=0)


def test_profile_script_smoke():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "profile_step.py"), "--families", "gpt2",
                          "--tokens", "32", "--batch", "1", "--segment", "16", "--mem", "2", "--d-mem", "4",
                          "--threads", "1", "--top", "3"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "arithmetic floor" in out.stdout and "| **total** |" in out.stdout


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_gpu_check_runs_every_pass_on_the_cpu(tmp_path, dtype):
    """The GPU script's paths (bf16 base with a float32 memory, checkpointed training, the
    wavefront read, the JSON) on a tiny Llama, so that a rare GPU session cannot fail on a typo."""
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "--tiny", "--device", "cpu",
                          "--dtype", dtype, "--lengths", "32", "64", "--train-up-to", "64", "--checkpoint-from", "64",
                          "--segment", "16", "--mem", "2", "--d-mem", "4", "--repeats", "1",
                          "--out", str(tmp_path / "g.json")], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    import json

    rows = json.loads((tmp_path / "g.json").read_text())["rows"]
    passes = {(r["tokens"], r["pass"]) for r in rows}
    for length in (32, 64):
        for name in ("read bare", "read ARMT", "read ARMT wavefront", "train bare", "train ARMT"):
            assert (length, name) in passes
    assert all(r["seconds"] > 0 for r in rows)
