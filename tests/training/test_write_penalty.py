"""The write penalty: what it measures is the model's own write strength."""

from __future__ import annotations

import pytest
import torch

from armt import ARMTConfig, ARMTForCausalLM
from armt.inspection import watch_memory
from armt.tiny import tiny_base_model
from armt.training.write_penalty import WritePenalty


def _model(**options):
    torch.manual_seed(0)
    model = ARMTForCausalLM(tiny_base_model("gpt2", layers=2, hidden=32),
                            ARMTConfig(num_mem_tokens=2, d_mem=4, segment_size=8, **options))
    with torch.no_grad():  # layer 0's writes shut (hard gate), layer 1's open
        for mem, bias in zip(model.cell.memory_layers, (-3.0, 3.0)):
            mem.W_mb.bias.fill_(bias)
    return model


@pytest.mark.parametrize("gate", ["sigmoid", "hard"])
def test_strength_is_the_mean_beta_the_memory_writes_with(gate):
    model = _model(write_gate=gate)
    ids = torch.randint(1000, (2, 40))
    betas = []
    penalty = WritePenalty(weight=3.0, hard=gate == "hard")
    with watch_memory(model, on_write=lambda layer, old, k, beta, new: betas.append(beta.detach())):
        with penalty.watch(model):
            out = model(ids, labels=ids)
    want = torch.stack([b.mean() for b in betas]).mean()
    torch.testing.assert_close(penalty.strength().detach(), want)
    assert float(penalty.term().detach()) == pytest.approx(3.0 * float(want), rel=1e-6)
    # the term has a gradient into the write gates
    (out.loss + penalty.term()).backward()
    assert all(mem.W_mb.weight.grad is not None for mem in model.cell.memory_layers)
    if gate == "hard":
        share = torch.stack([(b > 0).float().mean() for b in betas]).mean()
        assert float(share) == 0.5 and penalty.open_share() == pytest.approx(0.5)
    else:
        assert penalty.open_share() is None


def test_margin_counts_a_just_shut_gate_as_open():
    model = _model(write_gate="hard")
    ids = torch.randint(1000, (2, 40))
    plain, wide = WritePenalty(1.0, hard=True), WritePenalty(1.0, margin=0.5, hard=True)
    with plain.watch(model), wide.watch(model), torch.no_grad():
        model(ids)
    # clip(x/4 + 1/2 + m, 0, 1 + m) >= clip(x/4 + 1/2, 0, 1) for every x, strictly somewhere
    assert float(wide.strength()) > float(plain.strength())
    # a new watch starts from nothing
    with plain.watch(model):
        pass
    assert plain.strength() is None and plain.term() == 0.0


def test_for_model_and_bad_values():
    assert WritePenalty.for_model(_model(), 0.0) is None
    assert WritePenalty.for_model(_model(memory="tokens"), 1.0) is None  # RMT: no writes to penalise
    assert WritePenalty.for_model(_model(write_gate="hard"), 1.0, 0.25).margin == 0.25
    with pytest.raises(ValueError, match="write_gate='hard'"):
        WritePenalty.for_model(_model(), 1.0, 0.25)
    with pytest.raises(ValueError, match="wavefront"):
        WritePenalty.for_model(_model(wavefront=True), 1.0)
    with pytest.raises(ValueError, match="write_penalty must be >= 0"):
        WritePenalty(-1.0)


def test_on_distractors_counts_only_the_named_segments():
    model = _model(write_gate="hard")
    ids = torch.randint(1000, (2, 40))  # 5 segments of 8
    betas = []  # (layer, segment) -> per-sample mean beta
    everything = WritePenalty(1.0, hard=True)
    some = WritePenalty(1.0, hard=True, on="distractors")
    mask = torch.tensor([[1, 0, 1, 0, 0], [0, 0, 1, 1, 0]])
    some.only_segments(mask)
    with watch_memory(model, on_write=lambda layer, old, k, beta, new: betas.append(beta.detach())):
        with everything.watch(model), some.watch(model):
            out = model(ids, labels=ids)
    L = model.cell.num_layers
    # the writes come segment by segment, layer by layer
    per_call = [b.flatten(1).mean(1) for b in betas]
    want = torch.stack([(per_call[i] * mask[:, i // L].float()).mean() for i in range(len(per_call))]).mean()
    torch.testing.assert_close(some.strength().detach(), want)
    # all segments named: the plain penalty
    same = WritePenalty(1.0, hard=True, on="distractors")
    same.only_segments(torch.ones(2, 5))
    with same.watch(model), torch.no_grad():
        model(ids)
    torch.testing.assert_close(same.strength(), everything.strength().detach())
    # a fact segment's writes get no gradient from it
    (out.loss * 0 + some.term()).backward()
    assert model.cell.memory_layers[1].W_mb.weight.grad is not None


def test_on_distractors_needs_the_segments_and_known_targets():
    model = _model(write_gate="hard")
    penalty = WritePenalty(1.0, hard=True, on="distractors")
    with pytest.raises(ValueError, match="only_segments"):
        with penalty.watch(model), torch.no_grad():
            model(torch.randint(1000, (1, 16)))
    with pytest.raises(ValueError, match="use one of"):
        WritePenalty(1.0, on="facts")
    with pytest.raises(ValueError, match="on='distractors'"):
        WritePenalty(1.0).only_segments(torch.ones(1, 2))


def _gate_grads(shape, bias):
    model = _model(write_gate="hard")
    with torch.no_grad():
        for mem in model.cell.memory_layers:
            mem.W_mb.bias.fill_(bias)
    ids = torch.randint(1000, (2, 40), generator=torch.Generator().manual_seed(1))
    inputs = []
    penalty = WritePenalty(1.0, margin=0.25, hard=True, shape=shape)
    with watch_memory(model, on_gate=lambda layer, x: inputs.append(x.detach())), penalty.watch(model):
        out = model(ids, labels=ids)
    task = torch.autograd.grad(out.loss, [m.W_mb.bias for m in model.cell.memory_layers], allow_unused=True,
                               retain_graph=True)
    penalty.term().backward()
    return torch.cat(inputs), penalty, [m.W_mb.bias.grad for m in model.cell.memory_layers], task


def test_linear_shape_pulls_back_a_gate_stuck_open():
    # every gate far past the fully open point (x >= 2): the write is flat there, so neither the
    # task nor the clipped penalty has a gradient that could shut it again
    x, clipped, clipped_grads, task = _gate_grads("clipped", 20.0)
    assert float(x.min()) > 2.0
    assert all(g is None or float(g.abs().max()) == 0.0 for g in task)
    assert all(float(g.abs().max()) == 0.0 for g in clipped_grads)
    assert float(clipped.strength().detach()) == pytest.approx(1.25)
    x, linear, linear_grads, _ = _gate_grads("linear", 20.0)
    # the linear penalty is x/4 + 3/4 there, and its gradient lowers every gate's bias
    assert float(linear.strength().detach()) == pytest.approx(float((x / 4 + 0.75).mean()), rel=1e-5)
    assert all(float(g.min()) > 0 for g in linear_grads)


def test_linear_shape_equals_the_clipped_one_below_the_open_point():
    x, clipped, clipped_grads, _ = _gate_grads("clipped", -1.0)
    assert float(x.max()) < 2.0  # nothing fully open: the two shapes must agree exactly
    _, linear, linear_grads, _ = _gate_grads("linear", -1.0)
    torch.testing.assert_close(linear.strength(), clipped.strength())
    for a, b in zip(linear_grads, clipped_grads):
        torch.testing.assert_close(a, b)


def test_linear_shape_needs_the_hard_gate():
    assert WritePenalty.for_model(_model(write_gate="hard"), 1.0, shape="linear").shape == "linear"
    with pytest.raises(ValueError, match="write_penalty_shape='linear' needs ARMTConfig"):
        WritePenalty.for_model(_model(), 1.0, shape="linear")
    with pytest.raises(ValueError, match="write_penalty_shape='flat': use one of"):
        WritePenalty(1.0, hard=True, shape="flat")
