"""inspect_memory records what the memory holds and how it is written, without changing the reading."""

from __future__ import annotations

import math

import pytest
import torch

from armt.inspection import inspect_memory
from armt.ops import fused


def test_norms_are_those_of_the_state_read_so_far(tiny_armt):
    model = tiny_armt("gpt_neox")
    ids = torch.randint(99, (2, 8 * 5), generator=torch.Generator().manual_seed(0))
    trace = inspect_memory(model, ids)
    assert trace.segments == [1, 2, 3, 4, 5]
    for s in (1, 3, 5):
        state = model.read([ids[:, :8 * s]]).memory
        for layer, mem in enumerate(state.layers):
            assert trace.stats["A_norm"][s - 1][layer] == pytest.approx(mem.A.flatten(1).norm(dim=1).mean().item())
            assert trace.stats["z_norm"][s - 1][layer] == pytest.approx(mem.z.flatten(1).norm(dim=1).mean().item())
    # the memories' own methods are back
    assert all("read" not in m.__dict__ and "write" not in m.__dict__ for m in model.cell.memory_layers)


def test_the_write_statistics_by_hand(tiny_armt):
    """k . z, gamma and the step of layer 0 in segment 2, from the layer's own outputs."""
    model = tiny_armt("gpt2")
    M = model.config.num_mem_tokens
    ids = torch.randint(99, (1, 16), generator=torch.Generator().manual_seed(1))
    outputs = []
    layer0 = model.cell.decoder_layers[0]
    handle = layer0.register_forward_hook(lambda mod, args, out: outputs.append(out[0] if isinstance(out, tuple) else out))
    try:
        model(ids)
    finally:
        handle.remove()
    mem = model.cell.memory_layers[0]
    z1 = model.read([ids[:, :8]]).memory.layers[0].z
    k, _, beta = mem.write_features(torch.nn.functional.linear(outputs[1][:, -M:], *mem.write_projection()))
    kz = (k * z1.unsqueeze(-2)).sum(-1) + fused.EPS
    gamma = (1 - kz / (k * k).sum(-1)).clamp(0, 1)
    trace = inspect_memory(model, ids)
    row = {name: trace.stats[name][1][0] for name in trace.stats}
    assert row["kz_mean"] == pytest.approx(kz.mean().item())
    assert row["kz_max"] == pytest.approx(kz.max().item())
    assert row["gamma_mean"] == pytest.approx(gamma.mean().item())
    assert row["beta_mean"] == pytest.approx(beta.mean().item())
    assert row["step_max"] == pytest.approx((beta.squeeze(-1) / kz).max().item())
    # the first segment writes into the empty memory: k . z = 0, gamma = 1, and it does not read
    first = {name: trace.stats[name][0][0] for name in trace.stats}
    assert first["kz_mean"] == 0 and first["gamma_mean"] == 1 and math.isnan(first["read_ratio"])
    assert row["read_ratio"] > 0


def test_a_fresh_memory_reads_zero(tiny_armt):
    model = tiny_armt("llama", live=False)  # W_mv = 0: A stays 0 and so does every read
    trace = inspect_memory(model, torch.randint(99, (1, 32), generator=torch.Generator().manual_seed(2)))
    assert trace.series("read_ratio", 1)[1:] == [0.0, 0.0, 0.0]
    assert trace.series("A_norm", 0) == [0.0] * 4


def test_marks_trace_only_the_segments_asked_and_the_json_plot_are_written(tiny_armt, tmp_path):
    model = tiny_armt("gpt2")
    trace = inspect_memory(model, torch.randint(99, (1, 8 * 6)), marks=[2, 6])
    assert trace.segments == [2, 6] and len(trace.stats["beta_max"]) == 2
    trace.plot(tmp_path / "m.png")
    data = trace.save_json(tmp_path / "m.json").read_text()
    assert '"read_ratio"' in data and (tmp_path / "m.png").stat().st_size > 0


def test_models_without_an_associative_memory_are_refused(tiny_armt):
    with pytest.raises(ValueError, match="needs the associative memory"):
        inspect_memory(tiny_armt("gpt2", memory="tokens"), torch.randint(99, (1, 16)))


def test_the_command_on_a_needle_model(tmp_path, capsys):
    from armt.cli import main
    from armt.training.capacity import CapacityModelSpec

    model = CapacityModelSpec(layers=1, hidden=32, heads=2, intermediate=64).build()
    model.save_pretrained(tmp_path / "m", save_base=True)
    args = ["inspect-memory", "--model", str(tmp_path / "m"), "--input", "needle:2x20", "--out", str(tmp_path / "o")]
    assert main(args) == 0
    assert "20 segments" in capsys.readouterr().out
    assert (tmp_path / "o" / "memory.png").exists()
    assert main(args) == 2  # the files exist now
    assert "--overwrite" in capsys.readouterr().err
    assert main(args[:4] + ["needle:2by3", "--out", str(tmp_path / "p")]) == 2
    assert "needle:KxM" in capsys.readouterr().err


@pytest.mark.parametrize("gate", ["sigmoid", "hard"])
def test_watch_memory_gives_the_gate_input_of_every_write(gate):
    from armt import ARMTConfig, ARMTForCausalLM
    from armt.inspection import watch_memory
    from armt.tiny import tiny_base_model

    model = ARMTForCausalLM(tiny_base_model("gpt2", layers=2, hidden=32),
                            ARMTConfig(num_mem_tokens=2, d_mem=4, segment_size=8, write_gate=gate))
    with torch.no_grad():
        for mem in model.cell.memory_layers:
            mem.W_mb.weight.normal_(std=2.0)
    xs, betas = [], []
    with watch_memory(model, on_write=lambda layer, old, k, beta, new: betas.append(beta),
                      on_gate=lambda layer, x: xs.append(x)):
        model(torch.randint(1000, (1, 24)))
    assert len(xs) == len(betas) == 6
    for x, beta in zip(xs, betas):
        torch.testing.assert_close(fused.gate(x, gate), beta)
