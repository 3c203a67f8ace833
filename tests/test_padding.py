"""Padded batches: every row's real-token logits, memory state (A, z, RMT tokens, segment count),
loss and generated tokens equal the row run alone, for left and right padding."""

from __future__ import annotations

import pytest
import torch

from armt import MemoryState
from armt.padding import PaddingPlan

S = 8


def _batch(lengths, side, seed=0, vocab=99):
    g = torch.Generator().manual_seed(seed)
    L = max(lengths)
    ids = torch.randint(vocab, (len(lengths), L), generator=g)
    mask = torch.zeros(len(lengths), L, dtype=torch.long)
    spans = []
    for i, n in enumerate(lengths):
        span = slice(0, n) if side == "right" else slice(L - n, L)
        mask[i, span] = 1
        spans.append(span)
    return ids, mask, spans


def _same_state(a: MemoryState, b: MemoryState, atol):
    assert a.segments == b.segments
    for x, y in zip(a.layers, b.layers):
        torch.testing.assert_close(x.A, y.A, rtol=0, atol=atol)
        if x.z is not None:
            torch.testing.assert_close(x.z, y.z, rtol=0, atol=atol)
    if a.tokens is not None:
        torch.testing.assert_close(a.tokens, b.tokens, rtol=0, atol=atol)


@pytest.mark.parametrize("side", ["right", "left"])
@pytest.mark.parametrize("family, sink, memory", [("gpt2", False, "associative"), ("llama", True, "associative"),
                                                   ("gpt_neox", False, "tokens"), ("llama", True, "tokens")])
@pytest.mark.parametrize("seed", [0, 1])
def test_every_row_equals_the_row_alone(tiny_armt, side, family, sink, memory, seed):
    model = tiny_armt(family, use_sink=sink, memory=memory, live=memory == "associative")
    g = torch.Generator().manual_seed(100 + seed)
    lengths = torch.randint(1, 6 * S, (4,), generator=g).tolist()
    ids, mask, spans = _batch(lengths, side, seed)
    with torch.no_grad():
        out = model(ids, attention_mask=mask, labels=ids)
        assert out.memory.segment_counts().tolist() == [-(-n // S) for n in lengths]
        total = 0.0
        for i, span in enumerate(spans):
            alone = model(ids[i:i + 1, span], labels=ids[i:i + 1, span])
            torch.testing.assert_close(out.logits[i:i + 1, span], alone.logits, rtol=0, atol=1e-10)
            _same_state(out.memory.select([i]), alone.memory, 1e-10)
            total += float(alone.loss * alone.num_loss_tokens) if alone.loss is not None else 0.0
        assert int(out.num_loss_tokens) == sum(n - 1 for n in lengths)
        assert float(out.loss * out.num_loss_tokens) == pytest.approx(total, rel=1e-10)
        # continuing every row from the batch's state equals continuing it alone
        more = torch.randint(99, (4, S + 3), generator=g)
        nxt = model(more, memory=out.memory)
        for i, span in enumerate(spans):
            alone = model(ids[i:i + 1, span])
            torch.testing.assert_close(nxt.logits[i:i + 1], model(more[i:i + 1], memory=alone.memory).logits,
                                       rtol=0, atol=1e-10)


def test_float32_and_gradients_equal_rows_alone(tiny_armt):
    model = tiny_armt("llama", dtype=torch.float32).float().train()
    ids, mask, spans = _batch([5, 21, 16], "right")

    def grads(fn):
        model.zero_grad()
        fn().backward()
        return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])

    batched = grads(lambda: (lambda o: o.loss * o.num_loss_tokens)(model(ids, attention_mask=mask, labels=ids)))
    alone = grads(lambda: sum((lambda o: o.loss * o.num_loss_tokens)(model(ids[i:i + 1, s], labels=ids[i:i + 1, s]))
                              for i, s in enumerate(spans)))
    torch.testing.assert_close(batched, alone, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("side", ["left", "right"])
def test_greedy_generation_of_a_padded_batch_equals_each_row_alone(tiny_armt, side):
    model = tiny_armt("llama", use_sink=True)
    ids, mask, spans = _batch([3, 13, 20], side, seed=3)
    out, state = model.generate(ids, attention_mask=mask, max_new_tokens=2 * S, do_sample=False, return_memory=True)
    assert torch.equal(out[:, :ids.shape[1]], ids)
    for i, span in enumerate(spans):
        alone, alone_state = model.generate(ids[i:i + 1, span], max_new_tokens=2 * S, do_sample=False,
                                            return_memory=True)
        new = alone[0, span.stop - span.start:]
        L = ids.shape[1]
        assert torch.equal(out[i, L:L + len(new)], new)
        assert (out[i, L + len(new):] == model.base_model.generation_config.eos_token_id).all()  # stopped: padded
        _same_state(state.select([i]), alone_state, 1e-10)


def test_layouts_that_cannot_be_exact_are_refused(tiny_armt):
    ids, mask, _ = _batch([5, 12], "right")
    with pytest.raises(ValueError, match="segment_alignment='left'"):
        tiny_armt("gpt2", segment_alignment="right")(ids, attention_mask=mask)
    with pytest.raises(ValueError, match="sliding_window"):
        tiny_armt("llama", sliding_window=True)(ids, attention_mask=mask)
    with pytest.raises(ValueError, match="last_segment_loss_only"):
        tiny_armt("gpt2", last_segment_loss_only=True)(ids, attention_mask=mask, labels=ids)
    tiny_armt("gpt2", last_segment_loss_only=True)(ids, attention_mask=mask)  # no loss asked: nothing to refuse
    with pytest.raises(ValueError, match="only 0"):
        tiny_armt("gpt2")(ids, attention_mask=mask * 2)
    empty = mask.clone()
    empty[0] = 0
    with pytest.raises(ValueError, match="no real token"):
        tiny_armt("gpt2")(ids, attention_mask=empty)
    with pytest.raises(ValueError, match="between real tokens"):
        PaddingPlan.from_mask(torch.tensor([[1, 0, 1]]))


def test_state_counts_survive_select_cat_and_save(tiny_armt, tmp_path):
    model = tiny_armt("gpt2")
    ids, mask, _ = _batch([3, 20, 9], "right")
    with torch.no_grad():
        state = model(ids, attention_mask=mask).memory
    assert state.segment_counts().tolist() == [1, 3, 2] and state.segments == 3
    state.save(tmp_path / "s.safetensors")
    loaded = MemoryState.load(tmp_path / "s.safetensors")
    assert loaded.segment_counts().tolist() == [1, 3, 2]
    assert MemoryState.cat([state.select([2]), state.select([0, 1])]).segment_counts().tolist() == [2, 1, 3]
    assert state.select([1]).counts is None and state.select([1]).segments == 3


def test_reading_rows_that_end_at_different_times_equals_each_row_alone(tiny_armt):
    model = tiny_armt("llama", use_sink=True)
    lengths = [9, 30, 17]
    ids, mask, spans = _batch(lengths, "right", seed=5)
    reader_kwargs = dict(compute_loss=True, keep_last_logits=True)
    from armt.streaming import MemoryReader

    reader = MemoryReader(model, **reader_kwargs)
    for a in range(0, ids.shape[1], 7):  # chunks that do not line up with segments
        reader.feed(ids[:, a:a + 7], attention_mask=mask[:, a:a + 7])
    batched = reader.finish()
    assert batched.memory.segment_counts().tolist() == [-(-n // S) for n in lengths]
    total, count = 0.0, 0
    for i, span in enumerate(spans):
        alone = model.read([ids[i:i + 1, span]], **reader_kwargs)
        _same_state(batched.memory.select([i]), alone.memory, 1e-10)
        torch.testing.assert_close(batched.last_logits[i:i + 1], alone.last_logits, rtol=0, atol=1e-10)
        total, count = total + alone.loss_sum, count + alone.loss_count
    assert batched.loss_count == count and batched.loss_sum == pytest.approx(total, rel=1e-10)
    with pytest.raises(ValueError, match="after padding"):
        MemoryReader(model).feed(ids[:, :4], attention_mask=torch.tensor([[1, 0, 1, 1]] * 3))
    ended = MemoryReader(model)
    ended.feed(ids[:, :4], attention_mask=torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]))
    with pytest.raises(ValueError, match="after their stream ended"):
        ended.feed(ids[:, 4:6])


@pytest.mark.parametrize("family, memory, start", [("llama", "associative", False), ("gpt2", "associative", True),
                                                   ("gpt_neox", "tokens", True)])
def test_padded_generation_reads_in_one_pass_and_decodes_in_groups(tiny_armt, monkeypatch, family, memory, start):
    import armt.generation as generation

    model = tiny_armt(family, memory=memory)
    lengths = [3, 13, 20, 21, 5, 16, 29]  # open segments of 3, 5, 4, 5, 5, 8, 5 tokens
    ids, mask, spans = _batch(lengths, "left", seed=4)
    prefix = torch.randint(99, (len(lengths), 11), generator=torch.Generator().manual_seed(9))
    state = model(prefix).memory if start else None
    calls = []
    real = generation.generate
    monkeypatch.setattr(generation, "generate", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    out, end = model.generate(ids, attention_mask=mask, memory=state, max_new_tokens=S + 3, do_sample=False,
                              return_memory=True)
    # one call for the batch, then one per (open length, has a state) group, not one per row
    assert len(calls) == 1 + (5 if not start else 4), calls
    monkeypatch.setattr(generation, "generate", real)
    L = ids.shape[1]
    for i, span in enumerate(spans):
        own = None if state is None else state.select([i])
        alone, alone_state = model.generate(ids[i:i + 1, span], memory=own, max_new_tokens=S + 3, do_sample=False,
                                            return_memory=True)
        new = alone[0, span.stop - span.start:]
        assert torch.equal(out[i, L:L + len(new)], new)
        _same_state(end.select([i]), alone_state, 1e-10)
