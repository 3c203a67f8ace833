"""ARMTConfig(write_gate="hard"): a token the model does not write leaves the memory exactly as it was."""

from __future__ import annotations

import pytest
import torch

import armt


def _set_gate_bias(model, value: float) -> None:
    with torch.no_grad():
        for mem in model.cell.memory_layers:
            mem.W_mb.weight.zero_()
            mem.W_mb.bias.fill_(value)


def _same(a: armt.MemoryState, b: armt.MemoryState) -> bool:
    return all(torch.equal(x.A, y.A) and torch.equal(x.z, y.z) for x, y in zip(a.layers, b.layers))


def test_default_is_the_official_sigmoid_and_bad_values_are_refused():
    assert armt.ARMTConfig().write_gate == "sigmoid"
    with pytest.raises(ValueError, match="write_gate='soft' is unknown"):
        armt.ARMTConfig(write_gate="soft")


@pytest.mark.parametrize("wavefront", [False, True])
@pytest.mark.parametrize("gating", [False, True])
def test_segments_written_with_the_gate_shut_leave_the_state_unchanged(tiny_armt, wavefront, gating):
    model = tiny_armt("gpt_neox", write_gate="hard", gating=gating, n_heads=2 if gating else 1)
    ids = torch.randint(99, (2, 8 * 6), generator=torch.Generator().manual_seed(0))
    _set_gate_bias(model, 1.0)  # beta = 0.75: the prefix is written
    state = model.read([ids[:, :16]]).memory
    _set_gate_bias(model, -3.0)  # beta = 0 exactly: later segments are read but not written
    later = model.read([ids[:, 16:]], state, wavefront=wavefront).memory
    assert later.segments == state.segments + 4
    assert _same(state, later)


def test_the_official_gate_drifts_where_the_hard_gate_holds(tiny_armt):
    """The control: with the sigmoid, a strongly negative gate still writes a little and z still grows."""
    model = tiny_armt("gpt_neox")
    ids = torch.randint(99, (2, 8 * 6), generator=torch.Generator().manual_seed(0))
    _set_gate_bias(model, 1.0)
    state = model.read([ids[:, :16]]).memory
    _set_gate_bias(model, -3.0)
    assert not _same(state, model.read([ids[:, 16:]], state).memory)


def test_a_fresh_hard_gate_wrapper_is_still_the_base_model(tiny_base):
    base = tiny_base("llama", dtype=torch.float64)
    model = armt.ARMTForCausalLM(base, armt.ARMTConfig(num_mem_tokens=4, d_mem=8, segment_size=8,
                                                      write_gate="hard")).eval()
    ids = torch.randint(99, (1, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        wrapped = model(ids).logits
        plain = torch.cat([base(ids[:, i:i + 8]).logits for i in range(0, 24, 8)], dim=1)
    torch.testing.assert_close(wrapped, plain, rtol=0, atol=1e-10)


def test_the_gate_is_saved_with_the_model(tiny_armt, tmp_path):
    model = tiny_armt("gpt2", write_gate="hard")
    model.save_pretrained(tmp_path / "m", save_base=True)
    assert armt.ARMTForCausalLM.from_pretrained(tmp_path / "m").config.write_gate == "hard"
