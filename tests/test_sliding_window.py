"""Sliding window: each segment also attends to the previous segment's tokens (detached keys and
values in the memory state), checked against one hand-masked forward pass over the whole input."""

from __future__ import annotations

import pytest
import torch
import transformers

import armt
from armt import ARMTConfig, ARMTForCausalLM, segment_bounds
from armt.window import move_keys, window_mask


def _ids(B, L, seed=0):
    return torch.randint(99, (B, L), generator=torch.Generator().manual_seed(seed))


# the reference ----------------------------------------------------------------------------
def reference_forward(model, ids):
    """Logits and final ``(A, z)`` per layer, from ONE base-model forward over every segment laid
    out as ``[sink?, tokens, memory tokens]`` one after the other, with a hand-made mask:

    - the sink sees itself; a token sees its segment's sink, its segment's tokens up to itself
      and the previous segment's tokens at most ``segment_size`` tokens back; memory tokens see
      their sink, their segment, the whole previous segment and the memory tokens before them.

    A token of segment k is thus computed once, in its own context, and segment k + 1 attends to
    exactly those keys and values: what the window must reproduce. Every layer reads, on the
    positions of segment k, the memory written by segment k - 1; as that memory comes from the
    same forward, the pass is repeated until nothing changes (segment k's memory is right after
    k passes).
    """
    cell, cfg = model.cell, model.config
    base, S, M, o = model.base_model, cfg.segment_size, cfg.num_mem_tokens, int(cfg.use_sink)
    rope = base.config.model_type != "gpt2"
    B, L = ids.shape
    bounds = segment_bounds(L, S, "left")
    embeds, seg, kind, idx, pos = [], [], [], [], []
    embed = base.get_input_embeddings()
    for k, (a, b) in enumerate(bounds):
        T, W = b - a, 0 if k == 0 else bounds[k - 1][1] - bounds[k - 1][0]
        # GPT-2: the positions each segment gets in the model. RoPE sees only differences, so
        # shifting segment k by the start of segment k - 1 puts every token at its true place.
        shift = bounds[k - 1][0] if rope and k else 0
        parts = ([cell.sink.expand(B, 1, -1)] if o else []) + [embed(ids[:, a:b]),
                                                               cell.memory_tokens.expand(B, M, -1)]
        embeds.append(torch.cat(parts, dim=1))
        for name, n, first in (("sink", o, 0), ("token", T, o + W), ("memory", M, o + W + T)):
            seg += [k] * n
            kind += [name] * n
            idx += list(range(n))
            pos += [shift + (0 if name == "sink" else first + i) for i in range(n)]
    embeds = torch.cat(embeds, dim=1)
    N = embeds.shape[1]
    length = {k: b - a for k, (a, b) in enumerate(bounds)}
    mask = torch.zeros(N, N, dtype=torch.bool)
    for q in range(N):
        for key in range(N):
            same, prev = seg[key] == seg[q], seg[key] == seg[q] - 1
            if kind[q] == "sink":
                mask[q, key] = same and kind[key] == "sink"
            elif kind[q] == "token":
                mask[q, key] = same and (kind[key] == "sink" or (kind[key] == "token" and idx[key] <= idx[q])) \
                    or prev and kind[key] == "token" and length[seg[key]] - idx[key] + idx[q] <= S
            else:
                mask[q, key] = same and (kind[key] != "memory" or idx[key] <= idx[q]) \
                    or prev and kind[key] == "token"
    if base.config._attn_implementation == "eager":
        mask = torch.zeros(N, N, dtype=embeds.dtype).masked_fill(~mask, torch.finfo(embeds.dtype).min)
    segs = torch.tensor(seg)
    mem_pos = [torch.tensor([i for i in range(N) if seg[i] == k and kind[i] == "memory"]) for k in range(len(bounds))]

    layers = cell.memory_layers
    reads = [[None] * len(layers) for _ in bounds]  # memory each segment reads, per layer
    outputs: list = [None] * len(layers)

    def hooks(i, layer):
        def before(module, args, kwargs):
            h = args[0] if args else kwargs["hidden_states"]
            h = h.clone()
            for k in range(1, len(bounds)):
                if reads[k][i] is not None:
                    h[:, segs == k] = layers[i].read(h[:, segs == k], reads[k][i])
            return ((h,) + tuple(args[1:]), kwargs) if args else (args, dict(kwargs, hidden_states=h))

        def after(module, args, kwargs, out):
            outputs[i] = out[0] if isinstance(out, (tuple, list)) else out

        return [layer.register_forward_pre_hook(before, with_kwargs=True),
                layer.register_forward_hook(after, with_kwargs=True)]

    decoder_layers = armt.targets.find_decoder_layers(base)[1]
    handles = [h for i, layer in enumerate(decoder_layers) for h in hooks(i, layer)]
    try:
        with torch.no_grad():
            for _ in range(len(bounds)):
                logits = base(inputs_embeds=embeds, attention_mask=mask[None, None],
                              position_ids=torch.tensor([pos])).logits
                for i, mem in enumerate(layers):
                    state = None
                    for k in range(len(bounds)):
                        state = mem.write(outputs[i][:, mem_pos[k]], state)
                        if k + 1 < len(bounds):
                            reads[k + 1][i] = state
                    reads[0][i] = state  # the final memory, for the comparison
    finally:
        for h in handles:
            h.remove()
    tokens = torch.tensor([kind[i] == "token" for i in range(N)])
    return logits[:, tokens], [reads[0][i] for i in range(len(layers))]


# RoPE models take their angles in float32 even for float64 weights, so a key re-rotated to
# another position differs from the key computed there by ~1e-7 of the angle (seen: 2e-8 with
# sdpa; eager RoPE attention also takes its softmax in float32)
TOLERANCE = {"sdpa": 1e-7, "eager": 1e-6}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.all_families
@pytest.mark.parametrize("use_sink", [False, True])
def test_equals_one_hand_masked_forward_over_all_segments(tiny_armt, family, attn, use_sink):
    model = tiny_armt(family, attn, use_sink=use_sink, sliding_window=True)
    ids = _ids(2, 29)  # segments of 8, 8, 8, 5: the last window is full, the last segment short
    with torch.no_grad():
        out = model(ids)
    logits, memory = reference_forward(model, ids)
    tol = 1e-10 if family == "gpt2" else TOLERANCE[attn]
    torch.testing.assert_close(out.logits, logits, rtol=0, atol=tol)
    for got, want in zip(out.memory.layers, memory):
        torch.testing.assert_close(got.A, want.A, rtol=0, atol=tol)
        torch.testing.assert_close(got.z, want.z, rtol=0, atol=tol)
    # the window really matters: without it the logits differ
    plain = tiny_armt(family, attn, use_sink=use_sink)
    with torch.no_grad():
        assert (plain(ids).logits[:, 8:] - out.logits[:, 8:]).abs().max() > 1e-3


@pytest.mark.parametrize("family", ["gpt2", "llama"])
@pytest.mark.parametrize("use_sink", [False, True])
def test_fresh_wrapper_equals_base_with_the_window_by_hand(tiny_armt, family, use_sink):
    """No memory read (W_mv = 0): segment 2 is the base model over [sink?, segment 2] with
    segment 1's keys and values in a Hugging Face cache and the window mask made by hand."""
    model = tiny_armt(family, live=False, use_sink=use_sink, sliding_window=True)
    base, o = model.base_model, int(use_sink)
    ids = _ids(2, 14)  # a full first segment, a second of 6
    with torch.no_grad():
        out = model(ids)
        embed = base.get_input_embeddings()
        sink = [model.cell.sink.expand(2, 1, -1)] if use_sink else []
        first = base(inputs_embeds=torch.cat(sink + [embed(ids[:, :8])], 1), use_cache=True)
        cache = transformers.DynamicCache([(layer.keys[:, :, o:], layer.values[:, :, o:])
                                           for layer in first.cache.layers])
        # keys: [window 0..7, sink?, tokens 0..5]; token i sees window j >= i and tokens <= i
        allowed = torch.zeros(o + 6, 8 + o + 6, dtype=torch.bool)
        for i in range(6):
            allowed[o + i, i:8] = True
            allowed[o + i, 8:8 + o + i + 1] = True
        if use_sink:
            allowed[0, 8] = True
        positions = ([0] if use_sink else []) + [o + 8 + i for i in range(6)]
        second = base(inputs_embeds=torch.cat(sink + [embed(ids[:, 8:])], 1), cache=cache,
                      attention_mask=allowed[None, None].expand(2, 1, -1, -1),
                      position_ids=torch.tensor([positions])).logits[:, o:]
    torch.testing.assert_close(out.logits[:, :8], first.logits[:, o:], rtol=0, atol=1e-10)
    torch.testing.assert_close(out.logits[:, 8:], second, rtol=0, atol=1e-10)


def one_layer_armt(family, **config):
    """A fresh (memory-free) ARMT over a 1-layer model: window keys are then plain functions
    of the window's tokens, so what a token can see is exactly what influences it."""
    torch.manual_seed(0)
    if family == "gpt2":
        cfg = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=99)
    else:
        cfg = transformers.LlamaConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=4,
                                       num_key_value_heads=2, intermediate_size=64, vocab_size=99)
    base = transformers.AutoModelForCausalLM.from_config(cfg).to(torch.float64).eval()
    return ARMTForCausalLM(base, ARMTConfig(num_mem_tokens=2, d_mem=8, segment_size=8, sliding_window=True,
                                            **config)).eval()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_only_the_window_influences_a_token(family):
    model = one_layer_armt(family, use_sink=True)
    ids = _ids(1, 24)
    with torch.no_grad():
        ref = model(ids).logits[:, 16:]
        for where in range(16):  # change one token of segment 0 or 1, look at segment 2
            changed = ids.clone()
            changed[0, where] = (changed[0, where] + 1) % 99
            diff = (model(changed).logits[:, 16:] - ref).abs().amax(dim=(0, 2))
            j = where - 8  # its index in segment 1, the window of segment 2
            seen = [i for i in range(8) if j >= 0 and j >= i]  # token i sees window entries j >= i
            assert (diff[seen] > 1e-8).all(), (where, diff)
            assert (diff[[i for i in range(8) if i not in seen]] == 0).all(), (where, diff)


def test_mask_semantics():
    full = torch.ones(1, 4, dtype=torch.bool)
    m = window_mask(full, full, sink=True, num_mem_tokens=2, segment_size=4)[0, 0].int()
    # keys: window 0-3 | sink | tokens 0-3 | memory 0-1; queries: sink | tokens 0-3 | memory 0-1
    assert m.tolist() == [
        [0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0],
        [0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0],
        [0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        [0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0],
        [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1],
    ]
    # a short window (2 tokens) is seen up to segment_size tokens back; padding is never seen
    # (a padded token sees itself so that no row is empty)
    window = torch.tensor([[True, False]])
    tokens = torch.tensor([[True, True, False, True]])
    m = window_mask(window, tokens, sink=False, num_mem_tokens=1, segment_size=4)[0, 0].int()
    assert m.tolist() == [
        [1, 0, 1, 0, 0, 0, 0],
        [1, 0, 1, 1, 0, 0, 0],
        [1, 0, 1, 1, 1, 0, 0],
        [0, 0, 1, 1, 0, 1, 0],
        [1, 0, 1, 1, 0, 1, 1],
    ]
    # decoding asks for some rows only: they are those rows of the whole segment's mask
    whole = window_mask(full, full, sink=True, num_mem_tokens=0, segment_size=4)
    rows = window_mask(full, full, sink=True, num_mem_tokens=0, segment_size=4, query_tokens=range(2, 4))
    torch.testing.assert_close(rows, whole[:, :, 3:5], rtol=0, atol=0)


@pytest.mark.parametrize("family", ["gpt_neox", "llama"])  # partial and full rotary
def test_keys_move_to_other_positions_exactly(tiny_base, family):
    base = tiny_base(family, dtype=torch.float64)
    rotary = base.base_model.rotary_emb
    from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

    x = torch.randn(2, 2, 5, 16 if family == "gpt_neox" else 8, dtype=torch.float64)

    def at(start):
        cos, sin = rotary(x, torch.arange(start, start + 5)[None])
        return apply_rotary_pos_emb(x, x, cos, sin)[1]

    torch.testing.assert_close(move_keys(at(13), rotary, 13, 1), at(1), rtol=0, atol=1e-12)
    torch.testing.assert_close(move_keys(at(0), rotary, 0, 40), at(40), rtol=0, atol=1e-12)


def test_padding_is_never_seen(tiny_armt):
    model = tiny_armt("llama", use_sink=True, sliding_window=True)
    ids = _ids(2, 20)
    mask = torch.ones(2, 20, dtype=torch.long)
    mask[0, 3] = 0  # a padded token in segment 0, which is segment 1's window
    other = ids.clone()
    other[0, 3] = (other[0, 3] + 1) % 99
    with torch.no_grad():
        a, b = model(ids, attention_mask=mask), model(other, attention_mask=mask)
    keep = torch.ones(20, dtype=torch.bool)
    keep[3] = False
    torch.testing.assert_close(a.logits[:, keep], b.logits[:, keep], rtol=0, atol=1e-12)
    for x, y in zip(a.memory.layers, b.memory.layers):
        torch.testing.assert_close(x.A, y.A, rtol=0, atol=1e-12)
    assert a.memory.window_mask.all()  # the last window (segment 2) has no padding


def test_a_window_entry_reaches_only_the_tokens_that_see_it():
    model = one_layer_armt("gpt2")  # one layer: no token relays what it saw to later tokens
    torch.nn.init.normal_(model.cell.memory_layers[0].W_mv.weight, std=0.2)
    ids = _ids(1, 24)
    with torch.no_grad():
        memory = model(ids[:, :16]).memory
        base = model(ids[:, 16:], memory=memory)
        m = memory.layers[0]
        poked = armt.LayerMemory(m.A, m.z, m.window_keys, m.window_values.clone().index_fill_(2, torch.tensor([5]), 3.0))
        poked = model(ids[:, 16:], memory=armt.MemoryState((poked,), memory.segments, memory.window_mask))
    diff = (poked.logits - base.logits).abs().amax(dim=(0, 2))
    assert (diff[:6] > 1e-6).all() and (diff[6:] == 0).all()  # token i sees window entry 5 iff i <= 5
    assert (poked.memory.layers[0].A - base.memory.layers[0].A).abs().max() > 1e-6  # memory tokens see it


# the window as state -----------------------------------------------------------------------
def assert_same_memory(a, b, tol=1e-10):
    assert a.segments == b.segments
    torch.testing.assert_close(a.window_mask, b.window_mask, rtol=0, atol=0)
    for x, y in zip(a.layers, b.layers):
        for name in ("A", "z", "window_keys", "window_values"):
            torch.testing.assert_close(getattr(x, name), getattr(y, name), rtol=0, atol=tol)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_two_calls_chunked_reads_and_saved_states_equal_one_forward(tiny_armt, family, tmp_path):
    model = tiny_armt(family, use_sink=True, sliding_window=True)
    ids = _ids(2, 37, seed=1)
    with torch.no_grad():
        full = model(ids, labels=ids)
        first = model(ids[:, :16])
        first.memory.save(tmp_path / "mem.safetensors")
        loaded = armt.MemoryState.load(tmp_path / "mem.safetensors")
        second = model(ids[:, 16:], memory=loaded)
    assert first.memory.window_length == 8 and full.memory.window_length == 5
    torch.testing.assert_close(torch.cat([first.logits, second.logits], 1), full.logits, rtol=0, atol=1e-10)
    assert_same_memory(second.memory, full.memory)
    read = model.read(ids.split([3, 14, 1, 19], dim=1), compute_loss=True)
    assert_same_memory(read.memory, full.memory)
    assert read.loss == pytest.approx(full.loss.item(), abs=1e-10)
    pending = model.read([ids[:, :21]], flush=False)
    rest = model.read([pending.pending, ids[:, 21:]], memory=pending.memory)
    assert_same_memory(rest.memory, full.memory)


def test_state_operations_keep_the_window(tiny_armt):
    model = tiny_armt("llama", sliding_window=True)
    state = model(_ids(3, 12), labels=_ids(3, 12)).memory
    assert state.layers[0].A.requires_grad and not state.layers[0].window_keys.requires_grad
    picked = state.select([2, 0])
    assert picked.window_mask.shape == (2, 4) and picked.layers[1].window_values.shape[0] == 2
    torch.testing.assert_close(picked.layers[1].window_keys[1], state.layers[1].window_keys[0])
    cast = state.detach().to(torch.float32)
    assert cast.window_mask.dtype == torch.bool and cast.layers[0].window_keys.dtype == torch.float32


def test_first_segment_is_unchanged_and_off_keeps_no_window(tiny_armt):
    ids = _ids(2, 20)
    on, off = tiny_armt("llama", sliding_window=True), tiny_armt("llama")
    with torch.no_grad():
        a, b = on(ids), off(ids)
    torch.testing.assert_close(a.logits[:, :8], b.logits[:, :8], rtol=0, atol=0)
    assert b.memory.window_mask is None and all(m.window_keys is None for m in b.memory.layers)
    assert set(b.memory.tensors()) == {f"layer{i}.{n}" for i in range(2) for n in ("A", "z")}


def test_no_gradient_reaches_the_previous_segment_through_the_window(tiny_armt):
    def grads(window):
        model = tiny_armt("llama", segment_size=4, bptt_segments=1, sliding_window=window)
        embeds = model.base_model.get_input_embeddings()(_ids(1, 12)).detach().requires_grad_()
        logits = model(inputs_embeds=embeds).logits
        logits[:, 8:].sum().backward()  # the last segment; the memory is detached before it
        return [embeds.grad[:, a:a + 4].abs().sum().item() for a in (0, 4, 8)]

    assert grads(False)[:2] == [0.0, 0.0]
    on = grads(True)
    assert on[:2] == [0.0, 0.0] and on[2] > 0


def test_gradient_checkpointing_keeps_the_window(tiny_armt):
    ids = _ids(2, 20, seed=8)
    grads = []
    for ckpt in (False, True):
        model = tiny_armt("gpt2", segment_size=6, use_sink=True, sliding_window=True)
        if ckpt:
            model.gradient_checkpointing_enable()
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-9, atol=1e-12)


def test_states_of_the_other_kind_are_refused(tiny_armt):
    on, off = tiny_armt("gpt2", sliding_window=True), tiny_armt("gpt2")
    ids = _ids(1, 10)
    with torch.no_grad():
        with pytest.raises(ValueError, match="has no sliding window but sliding_window=True"):
            on(ids, memory=off(ids).memory)
        with pytest.raises(ValueError, match="holds sliding window but sliding_window=False"):
            off(ids, memory=on(ids).memory)


def test_unsupported_bases_are_refused_at_construction(tiny_base):
    torch.manual_seed(0)
    opt = transformers.OPTForCausalLM(transformers.OPTConfig(
        hidden_size=32, num_hidden_layers=2, num_attention_heads=2, ffn_dim=64, vocab_size=99,
        word_embed_proj_dim=32))
    with pytest.raises(ValueError, match="model_type='opt'"):
        ARMTForCausalLM(opt, ARMTConfig(num_mem_tokens=2, d_mem=8, sliding_window=True))
    base = tiny_base("llama")
    base.config._attn_implementation = "flash_attention_2"
    with pytest.raises(ValueError, match="attn_implementation='flash_attention_2'"):
        ARMTForCausalLM(base, ARMTConfig(num_mem_tokens=2, d_mem=8, sliding_window=True))
    with pytest.raises(ValueError, match="n_positions=512; use segment_size <= 247"):  # 1 + 2 * 256 + 16 > 512
        ARMTForCausalLM(tiny_base("gpt2"), ARMTConfig(num_mem_tokens=16, d_mem=8, segment_size=256,
                                                      use_sink=True, sliding_window=True))
