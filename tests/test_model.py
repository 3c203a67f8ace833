"""ARMTForCausalLM: identity at init, streaming, batching, loss, BPTT, checkpointing, errors."""

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from armt import ARMTConfig, ARMTForCausalLM, segment_bounds


def _ids(B, L, seed=0, vocab=99):
    return torch.randint(vocab, (B, L), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.all_families
def test_fresh_wrapper_reproduces_base_segment_by_segment(tiny_base, family, attn):
    base = tiny_base(family, attn, torch.float64)
    model = ARMTForCausalLM(base, ARMTConfig(num_mem_tokens=4, d_mem=8, segment_size=8)).eval()
    ids = _ids(2, 21)
    with torch.no_grad():
        out = model(ids)
        expected = torch.cat([base(ids[:, a:b]).logits for a, b in segment_bounds(21, 8, "left")], dim=1)
    assert out.logits.shape == (2, 21, 99)
    # the eager attention of the RoPE families takes its softmax in float32 even for float64
    tol = 1e-10 if attn == "sdpa" or family == "gpt2" else 1e-6
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=tol)


@pytest.mark.all_families
def test_memory_carries_information_across_segments(tiny_armt, family):
    model = tiny_armt(family)
    ids = _ids(1, 16)
    other = ids.clone()
    other[:, :8] = _ids(1, 8, seed=5)
    with torch.no_grad():
        a, b = model(ids).logits, model(other).logits
    # the second segment is identical, only the memory written by the first differs
    assert (a[:, 8:] - b[:, 8:]).abs().max() > 1e-6


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_streaming_in_two_calls_equals_one_call(tiny_armt, family):
    model = tiny_armt(family)
    ids = _ids(2, 27, seed=1)
    labels = ids.clone()
    labels[0, 3] = -100
    mask = torch.ones(2, 27, dtype=torch.bool)
    mask[:, 15] = False  # drop the pair that crosses the split so both runs score the same pairs
    with torch.no_grad():
        full = model(ids, labels=labels, labels_mask=mask)
        first = model(ids[:, :16], labels=labels[:, :16], labels_mask=mask[:, :16])
        second = model(ids[:, 16:], labels=labels[:, 16:], labels_mask=mask[:, 16:], memory=first.memory)
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), full.logits, rtol=0, atol=1e-10)
    combined = (first.loss * first.num_loss_tokens + second.loss * second.num_loss_tokens) / (
        first.num_loss_tokens + second.num_loss_tokens)
    torch.testing.assert_close(combined, full.loss, rtol=0, atol=1e-10)
    assert second.memory.segments == full.memory.segments == 4
    for x, y in zip(second.memory.layers, full.memory.layers):
        torch.testing.assert_close(x.A, y.A, rtol=0, atol=1e-10)
        torch.testing.assert_close(x.z, y.z, rtol=0, atol=1e-10)


def test_batch_items_never_share_memory(tiny_armt):
    model = tiny_armt("llama", n_heads=2)
    ids = _ids(3, 30, seed=2)
    with torch.no_grad():
        batched = model(ids)
        for i in range(3):
            alone = model(ids[i:i + 1])
            torch.testing.assert_close(batched.logits[i:i + 1], alone.logits, rtol=0, atol=1e-10)
            torch.testing.assert_close(batched.memory.select([i]).layers[1].A, alone.memory.layers[1].A,
                                       rtol=0, atol=1e-10)


def test_loss_is_cross_entropy_over_concatenated_segments(tiny_armt):
    model = tiny_armt("gpt2", segment_size=5)
    ids = _ids(2, 17, seed=3)
    labels = ids.clone()
    labels[1, 4:9] = -100
    labels_mask = torch.ones(2, 17, dtype=torch.bool)
    labels_mask[0, 10] = False
    with torch.no_grad():
        out = model(ids, labels=labels, labels_mask=labels_mask)
    logits, targets = out.logits[:, :-1], labels[:, 1:].clone()
    targets[~labels_mask[:, :-1]] = -100
    expected = F.cross_entropy(logits.reshape(-1, 99), targets.reshape(-1), ignore_index=-100)
    torch.testing.assert_close(out.loss, expected, rtol=0, atol=1e-12)
    assert out.num_loss_tokens.item() == 2 * 16 - 5 - 1
    # per-segment losses leave out the pair that crosses a boundary
    seg0 = F.cross_entropy(out.logits[0, :4], ids[0, 1:5]).item() * 4
    seg0 += F.cross_entropy(out.logits[1, :3], ids[1, 1:4], reduction="sum").item()
    assert out.segment_losses[0].item() == pytest.approx(seg0 / 7, abs=1e-10)


def test_last_segment_loss_only_and_output_only_last_segment(tiny_armt):
    model = tiny_armt("gpt2", segment_size=6)
    ids = _ids(2, 20, seed=4)
    # the same weights under a changed (frozen) config: a second wrapper around the same base
    other = ARMTForCausalLM(model.base_model, replace(model.config, last_segment_loss_only=True))
    other.cell.load_armt_state_dict(model.cell.armt_state_dict(), "the first wrapper")
    with torch.no_grad():
        full = model(ids, labels=ids)
        last = other(ids, labels=ids, output_only_last_segment=True)
    assert last.logits.shape == (2, 2, 99)  # segments 6, 6, 6, 2
    torch.testing.assert_close(last.logits, full.logits[:, 18:], rtol=0, atol=1e-12)
    expected = F.cross_entropy(full.logits[:, 18:19].reshape(-1, 99), ids[:, 19].reshape(-1))
    torch.testing.assert_close(last.loss, expected, rtol=0, atol=1e-12)
    assert torch.isnan(last.segment_losses[:3]).all()
    with torch.no_grad():
        only_out = model(ids, labels=ids, output_only_last_segment=True)
    torch.testing.assert_close(only_out.loss, full.loss, rtol=0, atol=1e-12)


def test_truncated_bptt_stops_gradients_where_it_should(tiny_armt):
    def grads_per_segment(bptt):
        model = tiny_armt("gpt2", segment_size=4, bptt_segments=bptt)
        ids = _ids(1, 16, seed=6)
        embeds = model.base_model.get_input_embeddings()(ids).detach().requires_grad_()
        logits = model(inputs_embeds=embeds).logits
        logits[:, -1].sum().backward()  # depends on earlier segments only through memory
        return [embeds.grad[:, a:a + 4].abs().sum().item() for a in range(0, 16, 4)]

    full = grads_per_segment(None)
    assert all(g > 0 for g in full)
    cut1 = grads_per_segment(1)
    assert cut1[:3] == [0.0, 0.0, 0.0] and cut1[3] > 0
    cut2 = grads_per_segment(2)  # detached after segments 2 (index 1): segments 3 and 4 stay linked
    assert cut2[:2] == [0.0, 0.0] and cut2[2] > 0 and cut2[3] > 0


def test_gradient_checkpointing_gives_the_same_gradients(tiny_armt):
    ids = _ids(2, 20, seed=8)
    grads = []
    for ckpt in (False, True):
        model = tiny_armt("llama", segment_size=6, use_sink=True, gating=True, n_heads=2)
        if ckpt:
            model.gradient_checkpointing_enable()
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and len(grads[0]) == len(list(model.parameters()))
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-9, atol=1e-12)


def test_base_gradient_checkpointing_is_refused(tiny_armt):
    model = tiny_armt("llama").train()
    base = model.base_model
    (getattr(base, "activation_checkpointing_enable", None) or base.gradient_checkpointing_enable)()
    with pytest.raises(ValueError, match="ARMTConfig\\(gradient_checkpointing=True\\)"):
        model(_ids(1, 10))


@pytest.mark.parametrize("alignment,expected", [
    ("left", [(0, 4), (4, 8), (8, 10)]),
    ("right", [(0, 2), (2, 6), (6, 10)]),
    ("center", [(0, 4), (4, 8), (8, 10)]),
])
def test_segment_alignment(tiny_armt, alignment, expected):
    assert segment_bounds(10, 4, alignment) == expected
    assert segment_bounds(12, 4, alignment) == [(0, 4), (4, 8), (8, 12)]
    assert segment_bounds(9, 4, "center") == [(0, 3), (3, 6), (6, 9)]
    model = tiny_armt("gpt2", segment_size=4, segment_alignment=alignment)
    with torch.no_grad():
        assert model(_ids(1, 10)).memory.segments == 3


def test_sink_is_excluded_from_outputs_and_learned(tiny_armt):
    model = tiny_armt("qwen2", use_sink=True)
    ids = _ids(1, 12)
    out = model(ids, labels=ids)
    assert out.logits.shape == (1, 12, 99)
    out.loss.backward()
    assert model.cell.sink.grad is not None and model.cell.sink.grad.abs().sum() > 0


def test_padding_mask_is_applied(tiny_armt):
    model = tiny_armt("llama")
    ids = _ids(1, 10)
    mask = torch.ones(1, 10, dtype=torch.long)
    mask[0, 9] = 0
    with torch.no_grad():
        a = model(ids, attention_mask=mask)
        b = model(ids, attention_mask=torch.ones_like(mask))
        c = model(ids)
    torch.testing.assert_close(b.logits, c.logits, rtol=0, atol=1e-12)
    # the padded token is in the second segment: the memory tokens no longer see it
    assert (a.memory.layers[0].A - b.memory.layers[0].A).abs().max() > 0


def test_state_dict_names_and_memory_init(tiny_armt):
    model = tiny_armt("gpt2", live=False, use_sink=True)
    names = [n for n in model.cell.state_dict() if not n.startswith("base_model.")]
    assert sorted(names) == sorted(["memory_tokens", "sink"] + [
        f"memory_layers.{i}.{w}" for i in range(2)
        for w in ("W_mq.weight", "W_mk.weight", "W_mv.weight", "W_mb.weight", "W_mb.bias")])
    assert all((m.W_mv.weight == 0).all() for m in model.cell.memory_layers)
    emb_std = model.base_model.get_input_embeddings().weight.std()
    assert model.cell.memory_tokens.std().item() == pytest.approx(emb_std.item(), rel=0.5)
    # the base model keeps its own names
    assert "transformer.h.0.attn.c_attn.weight" in model.base_model.state_dict()


def test_hooks_exist_only_while_a_segment_runs(tiny_armt):
    model = tiny_armt("llama")
    layers = model.cell.decoder_layers
    seen = []
    probe = layers[1].register_forward_pre_hook(lambda m, a: seen.append(len(m._forward_pre_hooks)))
    model(_ids(1, 40))
    probe.remove()
    assert seen and all(n == 2 for n in seen)  # the probe and the segment's own read hook
    assert all(not layer._forward_pre_hooks and not layer._forward_hooks for layer in layers)
    # a segment that fails inside the base model removes its hooks too
    def fail(module, args):
        raise KeyError("boom")

    probe = layers[1].register_forward_pre_hook(fail)
    with pytest.raises(KeyError, match="boom"):
        model(_ids(1, 40))
    probe.remove()
    assert all(not layer._forward_pre_hooks and not layer._forward_hooks for layer in layers)


def test_a_nested_segment_on_the_same_layers_is_refused(tiny_armt):
    model = tiny_armt("gpt2")
    with model.cell.reading(None), pytest.raises(RuntimeError, match="already running a segment"):
        model(_ids(1, 8))


@pytest.mark.parametrize("kwargs,match", [
    (dict(input_ids=torch.zeros(2, 0, dtype=torch.long)), "input is empty"),
    (dict(input_ids=torch.zeros(2, 5)), "integer tensor"),
    (dict(), "exactly one of input_ids"),
    (dict(input_ids=torch.zeros(2, 5, dtype=torch.long), labels=torch.zeros(2, 4, dtype=torch.long)),
     "labels has shape \\(2, 4\\)"),
    (dict(input_ids=torch.zeros(2, 5, dtype=torch.long), attention_mask=torch.ones(1, 5)),
     "attention_mask has shape"),
    (dict(input_ids=torch.zeros(2, 5, dtype=torch.long), labels_mask=torch.ones(2, 6, dtype=torch.bool)),
     "labels_mask has shape"),
    (dict(inputs_embeds=torch.zeros(2, 5, 7)), "inputs_embeds must have shape"),
])
def test_bad_input_is_refused_with_a_clear_error(tiny_armt, kwargs, match):
    model = tiny_armt("gpt2")
    with pytest.raises(ValueError, match=match):
        model(**kwargs)


def test_memory_from_another_batch_or_config_is_refused(tiny_armt):
    model = tiny_armt("gpt2")
    with torch.no_grad():
        state = model(_ids(2, 10)).memory
        with pytest.raises(ValueError, match="another batch size"):
            model(_ids(3, 10), memory=state)
        other = tiny_armt("gpt2", d_mem=16)
        with pytest.raises(ValueError, match="another config"):
            other(_ids(2, 10), memory=state)
        no_denom = tiny_armt("gpt2", use_denom=False)
        with pytest.raises(ValueError, match="use_denom=False"):
            no_denom(_ids(2, 10), memory=state)
    with pytest.raises(TypeError, match="MemoryState"):
        model(_ids(2, 10), memory=[1, 2])


def test_use_denom_false_keeps_no_normaliser(tiny_armt):
    model = tiny_armt("gpt2", use_denom=False, correction=False)
    with torch.no_grad():
        out = model(_ids(1, 20))
    assert all(layer.z is None for layer in out.memory.layers)


def test_float32_training_step_runs_and_changes_memory_params(tiny_armt):
    model = tiny_armt("mistral", dtype=torch.float32).train()
    opt = torch.optim.AdamW([p for n, p in model.named_parameters() if "base_model" not in n], lr=1e-2)
    ids = _ids(2, 24)
    before = model.cell.memory_layers[0].W_mq.weight.clone()
    loss = model(ids, labels=ids).loss
    loss.backward()
    opt.step()
    assert torch.isfinite(loss) and not torch.equal(before, model.cell.memory_layers[0].W_mq.weight)


def test_deepcopy_gets_its_own_hooks(tiny_armt):
    import copy

    model = tiny_armt("gpt2")
    clone = copy.deepcopy(model)
    ids = _ids(1, 20)
    with torch.no_grad():
        before = model(ids).logits
        torch.testing.assert_close(clone(ids).logits, before, rtol=0, atol=0)
        for mem in clone.cell.memory_layers:
            mem.W_mv.weight.mul_(3)
        assert (clone(ids).logits - before).abs().max() > 1e-6
        torch.testing.assert_close(model(ids).logits, before, rtol=0, atol=0)


def test_memory_dtype_keeps_the_state_wide_under_a_bf16_model(tiny_armt):
    ids = _ids(1, 40)
    wide = tiny_armt("llama", dtype=torch.bfloat16, memory_dtype="float32")
    narrow = tiny_armt("llama", dtype=torch.bfloat16)
    with torch.no_grad():
        out = wide(ids, labels=ids)
        state = {m.A.dtype for m in out.memory.layers} | {m.z.dtype for m in out.memory.layers}
        assert state == {torch.float32} and out.logits.dtype == torch.bfloat16
        assert {m.A.dtype for m in narrow(ids).memory.layers} == {torch.bfloat16}
        # the same hidden states, so the two states differ only by the rounding of the state
        torch.testing.assert_close(out.memory.layers[0].A, narrow(ids).memory.layers[0].A.float(),
                                   atol=0.02, rtol=0.02)
    assert wide.read([ids]).memory.layers[0].A.dtype == torch.float32


@pytest.mark.all_families
@pytest.mark.parametrize("options", [{}, {"memory": "tokens"}, {"sliding_window": True}, {"bptt_segments": 2},
                                     {"gradient_checkpointing": True}])
def test_a_loss_without_its_logits_has_the_same_value_and_gradients(tiny_armt, family, options):
    # output_only_last_segment: the scored segments that are not returned get their loss from the
    # head applied to their hidden states, recomputed in the backward (armt.loss.head_pair_nll)
    model = tiny_armt(family, **options)  # eval mode (no dropout), gradients on
    assert model.cell.head is not None
    ids = _ids(2, 29, seed=7)
    mask = torch.ones_like(ids)
    if not options.get("sliding_window"):
        mask[1, :5] = 0  # a padded row takes the padding plan's path too (the window refuses padding)
    results = []
    for only_last in (False, True):
        model.zero_grad()
        out = model(ids, attention_mask=mask, labels=ids, output_only_last_segment=only_last)
        out.loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((out.loss.detach(), out.segment_losses, grads))
    (loss, seg, grads), (loss2, seg2, grads2) = results
    torch.testing.assert_close(loss2, loss, rtol=0, atol=1e-12)
    torch.testing.assert_close(seg2, seg, rtol=0, atol=1e-12, equal_nan=True)
    assert grads.keys() == grads2.keys() and len(grads) > 0
    for name in grads:
        torch.testing.assert_close(grads2[name], grads[name], rtol=0, atol=1e-10, msg=name)


def test_a_training_pass_keeps_no_earlier_segment_logits(tiny_armt):
    model = tiny_armt("llama", segment_size=4)
    vocab = model.cell.vocab_size
    ids = _ids(1, 24, seed=3)

    weights = {p.untyped_storage().data_ptr() for p in model.parameters()}

    def saved_vocab_rows(only_last):
        rows = []

        def pack(t):  # activations of vocabulary size (not the head's weight)
            if t.dim() and t.shape[-1] == vocab and t.untyped_storage().data_ptr() not in weights:
                rows.append(t.numel() // vocab)
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            model(ids, labels=ids, output_only_last_segment=only_last).loss.backward()
        return sum(rows)

    # logits or log-probabilities of all 6 segments (4 positions each) against the last one's only
    assert saved_vocab_rows(False) >= 24
    assert saved_vocab_rows(True) <= 2 * 4
