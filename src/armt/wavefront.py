"""Diagonal (wavefront) reading: all layers of ARMT at once, one segment apart.

Cell (segment s, layer l) needs only the output of (s, l-1) and the memory that (s-1, l)
wrote, so every cell with the same ``s + l`` can run together: ``N + L - 1`` steps instead
of ``N x L`` (diagonal batching, arXiv 2506.05229). In step t, layer l works on segment
``t - l``; the L layers' weights are stacked so that each operation of a step is one batched
matrix product over the active layers. On a CPU or GPU that spends its time launching small
operations this divides their number by up to L; the arithmetic is unchanged.

The layers are rewritten here as functions of stacked weights, so only families whose layer
maths is written down in :data:`WAVEFRONT_FAMILIES` run this way; anything else (other
families, peft adapters, the sliding window, the RMT baseline, dropout in training mode) is
refused with the reason. Results equal the sequential segment loop (tested to 1e-10 in
float64).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .adapters import has_adapters
from .ops import fused
from .segments import SegmentStep, run_segment
from .state import LayerMemory, MemoryState


def _stack(tensors, transpose: bool = False) -> Tensor:
    # differentiable when built with gradients on (a training forward), a plain copy otherwise
    return torch.stack([t.t() if transpose else t for t in tensors]).contiguous()


def _bias(linear: nn.Module, out_features: int, like: Tensor) -> Tensor:
    b = getattr(linear, "bias", None)
    return b if b is not None else like.new_zeros(out_features)


def _linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x @ weight + bias`` for each active layer: x ``(L', n, in)``, weight ``(L', in, out)``."""
    if bias is None:
        return torch.bmm(x, weight)
    return torch.baddbmm(bias.unsqueeze(1), x, weight)


def _layer_norm(h: Tensor, params: tuple[Tensor, Tensor], sl: slice, eps: float) -> Tensor:
    """LayerNorm of ``h`` ``(L', B, P, D)`` with each active layer's own weight and bias."""
    w, b = params
    return torch.addcmul(b[sl, None, None, :], F.layer_norm(h, h.shape[-1:], eps=eps), w[sl, None, None, :])


def _rope_tables(rotary: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(cos, sin)`` ``(1, 1, P, rotary_dim)`` of the base model's rotary embedding for a
    segment's positions ``0 .. P-1`` (x: ``(..., P, D)``)."""
    P = x.shape[-2]
    cos, sin = rotary(x.reshape(-1, P, x.shape[-1])[:1], torch.arange(P, device=x.device).unsqueeze(0))
    return cos.unsqueeze(1), sin.unsqueeze(1)


def _rotate(x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
    """Rotary position embedding of the first ``rotary_dim`` features of ``x`` (all of them
    for Llama, a share for GPT-NeoX), as Hugging Face's ``rotate_half`` convention."""
    cos, sin = rope
    r = cos.shape[-1]
    x_rot = x[..., :r]
    rotated = torch.cat([-x_rot[..., r // 2:], x_rot[..., :r // 2]], dim=-1)
    out = x_rot * cos + rotated * sin
    return out if r == x.shape[-1] else torch.cat([out, x[..., r:]], dim=-1)


def _attend(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)


class _GPT2:
    """GPT-2 blocks: ``h + attn(ln_1 h)``, then ``h + mlp(ln_2 h)``, learned positions."""

    layer_classes = ("GPT2Block",)

    def __init__(self, runner: nn.Module, layers):
        cfg = runner.config
        if getattr(cfg, "scale_attn_by_inverse_layer_idx", False) or getattr(cfg, "reorder_and_upcast_attn", False):
            raise ValueError("wavefront reading does not implement GPT-2's scale_attn_by_inverse_layer_idx or "
                             "reorder_and_upcast_attn; read with wavefront=False.")
        from transformers.activations import ACT2FN

        self.act = ACT2FN[cfg.activation_function]
        if cfg.activation_function in ("gelu_new", "gelu_pytorch_tanh"):
            # the same tanh approximation as one fused kernel instead of seven elementwise passes
            self.act = lambda x: F.gelu(x, approximate="tanh")
        self.heads = cfg.n_head
        self.eps = cfg.layer_norm_epsilon
        D = cfg.n_embd
        self.scale = (D // self.heads) ** -0.5 if cfg.scale_attn_weights else 1.0
        self.wpe = runner.transformer.wpe
        self.final_norm = runner.transformer.ln_f
        self.ln1 = (_stack(l.ln_1.weight for l in layers), _stack(l.ln_1.bias for l in layers))
        self.ln2 = (_stack(l.ln_2.weight for l in layers), _stack(l.ln_2.bias for l in layers))
        # Conv1D keeps its weight as (in, out): already the layout of x @ W
        self.qkv = (_stack(l.attn.c_attn.weight for l in layers), _stack(l.attn.c_attn.bias for l in layers))
        self.proj = (_stack(l.attn.c_proj.weight for l in layers), _stack(l.attn.c_proj.bias for l in layers))
        self.fc = (_stack(l.mlp.c_fc.weight for l in layers), _stack(l.mlp.c_fc.bias for l in layers))
        self.fc_out = (_stack(l.mlp.c_proj.weight for l in layers), _stack(l.mlp.c_proj.bias for l in layers))

    def embed(self, x: Tensor) -> Tensor:
        """Model-level input of the first layer: the token (and memory) embeddings plus positions."""
        P = x.shape[-2]
        return x + self.wpe(torch.arange(P, device=x.device))

    def _norm(self, h, params, sl):
        return _layer_norm(h, params, sl, self.eps)

    def __call__(self, h: Tensor, sl: slice) -> Tensor:
        Lp, B, P, D = h.shape
        H = self.heads
        flat = self._norm(h, self.ln1, sl).view(Lp, B * P, D)
        qkv = _linear(flat, self.qkv[0][sl], self.qkv[1][sl]).view(Lp * B, P, 3, H, D // H)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (L'B, H, P, D/H)
        o = _attend(q, k, v, self.scale).transpose(1, 2).reshape(Lp, B * P, D)
        h = h + _linear(o, self.proj[0][sl], self.proj[1][sl]).view(h.shape)
        flat = self._norm(h, self.ln2, sl).view(Lp, B * P, D)
        m = self.act(_linear(flat, self.fc[0][sl], self.fc[1][sl]))
        return h + _linear(m, self.fc_out[0][sl], self.fc_out[1][sl]).view(h.shape)


class _Llama:
    """Llama-style blocks (Llama, Mistral, Qwen2): RMSNorm, rotary attention with grouped
    key/value heads, gated MLP."""

    layer_classes = ("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer")

    def __init__(self, runner: nn.Module, layers):
        cfg = runner.config
        from transformers.activations import ACT2FN

        self.act = ACT2FN[cfg.hidden_act]
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.eps = cfg.rms_norm_eps
        self.window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
        self.rotary = runner.model.rotary_emb
        self.final_norm = runner.model.norm
        attn = [l.self_attn for l in layers]
        mlp = [l.mlp for l in layers]
        w = attn[0].q_proj.weight
        self.ln1 = _stack(l.input_layernorm.weight for l in layers)
        self.ln2 = _stack(l.post_attention_layernorm.weight for l in layers)
        # q, k, v read the same input: one product; so do the MLP's gate and up
        self.qkv = (_stack((torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]) for a in attn), True),
                    _stack(torch.cat([_bias(a.q_proj, a.q_proj.out_features, w), _bias(a.k_proj, a.k_proj.out_features, w),
                                      _bias(a.v_proj, a.v_proj.out_features, w)]) for a in attn))
        self.o = (_stack((a.o_proj.weight for a in attn), True), _stack(_bias(a.o_proj, a.o_proj.out_features, w) for a in attn))
        I = mlp[0].gate_proj.out_features
        self.gate_up = (_stack((torch.cat([m.gate_proj.weight, m.up_proj.weight]) for m in mlp), True),
                        _stack(torch.cat([_bias(m.gate_proj, I, w), _bias(m.up_proj, I, w)]) for m in mlp))
        self.down = (_stack((m.down_proj.weight for m in mlp), True), _stack(_bias(m.down_proj, cfg.hidden_size, w) for m in mlp))
        self._rope = None

    def embed(self, x: Tensor) -> Tensor:
        P = x.shape[-2]
        if self.window is not None and P > self.window:
            raise ValueError(f"a segment of {P} positions is longer than the base model's own sliding window "
                             f"({self.window}); read with wavefront=False.")
        self._rope = _rope_tables(self.rotary, x)
        return x

    def _norm(self, h, w, sl):
        x = h.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return w[sl, None, None, :] * x.to(h.dtype)


    def __call__(self, h: Tensor, sl: slice) -> Tensor:
        Lp, B, P, D = h.shape
        Hq, Hk, hd = self.heads, self.kv_heads, self.head_dim
        flat = self._norm(h, self.ln1, sl).view(Lp, B * P, D)
        qkv = _linear(flat, self.qkv[0][sl], self.qkv[1][sl]).view(Lp * B, P, Hq + 2 * Hk, hd).transpose(1, 2)
        q, k, v = qkv.split([Hq, Hk, Hk], dim=1)
        q, k = _rotate(q, self._rope), _rotate(k, self._rope)
        if Hk != Hq:
            k, v = k.repeat_interleave(Hq // Hk, dim=1), v.repeat_interleave(Hq // Hk, dim=1)
        o = _attend(q, k, v, hd ** -0.5).transpose(1, 2).reshape(Lp, B * P, Hq * hd)
        h = h + _linear(o, self.o[0][sl], self.o[1][sl]).view(h.shape)
        flat = self._norm(h, self.ln2, sl).view(Lp, B * P, D)
        gate, up = _linear(flat, self.gate_up[0][sl], self.gate_up[1][sl]).chunk(2, dim=-1)
        return h + _linear(self.act(gate) * up, self.down[0][sl], self.down[1][sl]).view(h.shape)


class _GPTNeoX:
    """GPT-NeoX (Pythia) layers: LayerNorm, fused query/key/value laid out per head, partial
    rotary, and the parallel residual ``h + attn(ln_1 h) + mlp(ln_2 h)`` (or the sequential one)."""

    layer_classes = ("GPTNeoXLayer",)

    def __init__(self, runner: nn.Module, layers):
        cfg = runner.config
        from transformers.activations import ACT2FN

        self.act = ACT2FN[cfg.hidden_act]
        self.heads = cfg.num_attention_heads
        self.eps = cfg.layer_norm_eps
        self.parallel = cfg.use_parallel_residual
        self.rotary = runner.gpt_neox.rotary_emb
        self.final_norm = runner.gpt_neox.final_layer_norm
        w = layers[0].attention.query_key_value.weight
        D = cfg.hidden_size
        self.ln1 = (_stack(l.input_layernorm.weight for l in layers), _stack(l.input_layernorm.bias for l in layers))
        self.ln2 = (_stack(l.post_attention_layernorm.weight for l in layers),
                    _stack(l.post_attention_layernorm.bias for l in layers))
        att = [l.attention for l in layers]
        self.qkv = (_stack((a.query_key_value.weight for a in att), True),
                    _stack(_bias(a.query_key_value, 3 * D, w) for a in att))
        self.dense = (_stack((a.dense.weight for a in att), True), _stack(_bias(a.dense, D, w) for a in att))
        mlp = [l.mlp for l in layers]
        self.up = (_stack((m.dense_h_to_4h.weight for m in mlp), True), _stack(m.dense_h_to_4h.bias for m in mlp))
        self.down = (_stack((m.dense_4h_to_h.weight for m in mlp), True), _stack(m.dense_4h_to_h.bias for m in mlp))
        self._rope = None

    def embed(self, x: Tensor) -> Tensor:
        self._rope = _rope_tables(self.rotary, x)
        return x

    def _norm(self, h, params, sl):
        return _layer_norm(h, params, sl, self.eps)


    def __call__(self, h: Tensor, sl: slice) -> Tensor:
        Lp, B, P, D = h.shape
        H = self.heads
        flat = self._norm(h, self.ln1, sl).view(Lp, B * P, D)
        qkv = _linear(flat, self.qkv[0][sl], self.qkv[1][sl]).view(Lp * B, P, H, 3 * (D // H)).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=-1)
        o = _attend(_rotate(q, self._rope), _rotate(k, self._rope), v, (D // H) ** -0.5).transpose(1, 2).reshape(Lp, B * P, D)
        attn = _linear(o, self.dense[0][sl], self.dense[1][sl]).view(h.shape)
        base = h if self.parallel else h + attn
        flat = self._norm(base, self.ln2, sl).view(Lp, B * P, D)
        mlp = _linear(self.act(_linear(flat, self.up[0][sl], self.up[1][sl])), self.down[0][sl], self.down[1][sl])
        return h + attn + mlp.view(h.shape)


# model_type -> the layer maths written with stacked weights
WAVEFRONT_FAMILIES = {"gpt2": _GPT2, "gpt_neox": _GPTNeoX, "llama": _Llama, "mistral": _Llama, "qwen2": _Llama}


def wavefront_blocker(model) -> str | None:
    """Why ``model`` (an :class:`armt.ARMTForCausalLM`) cannot run along the diagonals, with
    what to do instead; ``None`` when it can."""
    cell = model.cell
    config = cell.config
    if config.memory != "associative":
        return ("it needs the associative memory (memory='associative'); other configs "
                "carry nothing between the layers of one step to batch")
    if config.sliding_window:
        return ("sliding_window=True is not supported (each segment would need the previous segment's keys at "
                "every layer); use wavefront=False")
    if has_adapters(cell.base_model):
        return ("it runs the base layers from their weights and does not apply peft adapters; merge them first "
                "(model.cell.base_model.merge_and_unload()) or use wavefront=False")
    model_type = getattr(cell.runner.config, "model_type", None)
    family = WAVEFRONT_FAMILIES.get(model_type)
    if family is None:
        return f"it supports model types {sorted(WAVEFRONT_FAMILIES)}, not {model_type!r}; use wavefront=False"
    kinds = {type(layer).__name__ for layer in cell.decoder_layers}
    if not kinds <= set(family.layer_classes):
        return (f"it knows the layers {family.layer_classes} for {model_type!r}, but this model has "
                f"{sorted(kinds)}; use wavefront=False")
    return None


def _active_dropout(model: nn.Module) -> bool:
    """Does ``model`` drop anything in training mode (dropout modules, or attention dropout
    that Hugging Face layers read from the config)?"""
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
        return True
    config = getattr(model, "config", None)
    return any(float(getattr(config, name, 0) or 0) > 0 for name in ("attention_dropout", "attn_pdrop"))


def use_wavefront(model, wavefront: bool | None, *, padded: bool) -> bool:
    """Should this pass of ``model`` run along the diagonals? ``wavefront`` is the call's option
    (``None``: ``ARMTConfig.wavefront``, which covers passes without gradients only: training
    through the wavefront pays only for small models, since it restacks the weights every pass).
    An explicit ``True`` that cannot run raises with the reason; the config's default falls
    back to the segment loop."""
    if wavefront is False or (wavefront is None and not model.config.wavefront):
        return False
    grad = torch.is_grad_enabled()
    if wavefront is None and grad:
        return False
    blocker = None
    if grad and model.gradient_checkpointing:
        blocker = "per-segment gradient checkpointing is on (it recomputes segments one by one)"
    elif grad and model.config.bptt_segments is not None:
        blocker = "bptt_segments is set (truncated backpropagation detaches between segments)"
    elif model.training and _active_dropout(model.cell.runner):
        blocker = ("the model is in training mode with dropout (the wavefront has none); call model.eval() or "
                   "set the dropout to 0")
    elif padded:
        blocker = "the batch is padded (padded rows run segment by segment)"
    elif model.config.segment_alignment != "left":
        blocker = f"segment_alignment={model.config.segment_alignment!r} (it needs 'left')"
    if blocker is None and wavefront:
        blocker = wavefront_blocker(model)
    if blocker is None:
        return True
    if wavefront:
        raise ValueError(f"wavefront=True cannot run here: {blocker}.")
    return False


def wavefront_segments(model, embed: Callable[[int, int], Tensor], bounds, memory: MemoryState | None,
                       logits_for: Callable[[int, bool], bool]) -> list[SegmentStep] | None:
    """The segments ``bounds`` of one input as :class:`armt.segments.SegmentStep` (the same
    arguments as :func:`armt.segments.iter_segments`): the full ones run along the diagonals,
    a short last one after them; ``None`` when fewer than two are full. Only the last step
    carries the memory."""
    S = model.config.segment_size
    n, n_full = len(bounds), sum(1 for a, b in bounds if b - a == S)
    if n_full < 2:
        return None
    # with gradients the stacked weights are built for this call, so they carry gradients back
    plan = Wavefront(model) if torch.is_grad_enabled() else model.wavefront_plan()
    logits, memory = plan.run(embed(0, n_full * S), memory, lambda s: logits_for(s, s == n - 1))
    steps = [SegmentStep(s, a, b, logits[s], None, s == n - 1) for s, (a, b) in enumerate(bounds[:n_full])]
    if n_full == n:
        steps[-1].memory = memory
        return steps
    a, b = bounds[-1]
    last_logits, memory = run_segment(model.cell, embed(a, b), None, memory, compute_logits=logits_for(n - 1, True))
    return steps + [SegmentStep(n - 1, a, b, last_logits, memory, True)]


class Wavefront:
    """Reads full segments of an :class:`armt.ARMTForCausalLM` along the diagonals.

    Built once per stream (it stacks a copy of the decoder layers' weights, so it sees the
    weights as they were when it was built). Used by :class:`armt.streaming.MemoryReader`
    with ``wavefront=True`` (and so ``model.read(..., wavefront=True)``).

    Example:
        >>> import torch
        >>> from armt import ARMTConfig, ARMTForCausalLM
        >>> from armt.tiny import tiny_base_model
        >>> model = ARMTForCausalLM(tiny_base_model("llama"), ARMTConfig(num_mem_tokens=4, d_mem=8, segment_size=16))
        >>> ids = torch.randint(1000, (1, 64))
        >>> state = Wavefront(model).read(ids, None)
        >>> torch.allclose(state.layers[3].A, model.read([ids]).memory.layers[3].A, atol=1e-5)
        True
    """

    def __init__(self, model):
        cell = model.cell
        reason = wavefront_blocker(model)
        if reason:
            raise ValueError(f"wavefront reading cannot run here: {reason}.")
        runner = cell.runner
        family = WAVEFRONT_FAMILIES[runner.config.model_type]
        layers = cell.decoder_layers
        self.cell = cell
        self.layers = family(runner, layers)
        mem = cell.memory_layers
        self.memory = mem[0]  # every layer's memory has the same shapes and options
        self.use_denom, self.correction = self.memory.use_denom, self.memory.correction
        self.state_dtype = self.memory.state_dtype
        self.W_q = _stack((m.W_mq.weight for m in mem), True)  # (L, D, d_mem)
        projections = [m.write_projection() for m in mem]
        self.W_kvb = _stack((w for w, _ in projections), True)
        self.b_kvb = _stack(b for _, b in projections)

    def _read(self, h: Tensor, A: Tensor, z: Tensor | None, sl: slice) -> Tensor:
        Lp, B, P, D = h.shape
        q = torch.bmm(h.reshape(Lp, B * P, D), self.W_q[sl]).view(Lp * B, P, -1)
        out = self.memory.read_projected(h.reshape(Lp * B, P, D), q, A.flatten(0, 1),
                                         None if z is None else z.flatten(0, 1))
        return out.view(h.shape)

    def _write(self, out: Tensor, A: Tensor, z: Tensor | None, sl: slice, fresh: bool):
        """Write the memory-token outputs of the active layers into their memories ``A``, ``z``
        (stacked over those layers); with ``fresh`` the last active layer is on the stream's
        first segment and writes into the empty memory. Returns the new ``(A, z)``."""
        Lp, B, M, D = out.shape
        kvb = _linear(out.reshape(Lp, B * M, D), self.W_kvb[sl], self.b_kvb[sl]).view(Lp * B, M, -1)
        k, v, beta = self.memory.write_features(kvb)
        n = (Lp - 1 if fresh else Lp) * B
        kw = self.memory.write_options()
        parts = []
        if n:
            old = (A.flatten(0, 1)[:n], None if z is None else z.flatten(0, 1)[:n])
            parts.append(fused.write(k[:n], v[:n], beta[:n], old, **kw))
        if fresh:
            parts.append(fused.write(k[n:], v[n:], beta[n:], None, **kw))
        newA = torch.cat([p[0] for p in parts]) if len(parts) > 1 else parts[0][0]
        if z is None:
            return newA.view(A.shape), None
        newz = torch.cat([p[1] for p in parts]) if len(parts) > 1 else parts[0][1]
        return newA.view(A.shape), newz.view(z.shape)

    def read(self, ids: Tensor, memory: MemoryState | None) -> MemoryState:
        """Write ``ids`` ``(B, N * segment_size)``, N full segments, into ``memory``; returns the
        state after the last, equal to running the segments one after another."""
        return self.run(self.cell.runner.get_input_embeddings()(ids), memory)[1]

    def run(self, embeds: Tensor, memory: MemoryState | None,
            logits_for: Callable[[int], bool] = lambda s: False) -> tuple[list[Tensor | None], MemoryState]:
        """Run N full segments of embeddings ``(B, N * segment_size, d_model)`` after ``memory``.

        Returns the logits ``(B, segment_size, vocab)`` of every segment ``s`` with
        ``logits_for(s)`` (``None`` for the others) and the state after the last segment.
        Differentiable when gradients are on and the plan was built with them (the stacked
        weights then carry the gradients back to each layer's own)."""
        cell = self.cell
        S, M, L = cell.config.segment_size, cell.num_mem_tokens, cell.num_layers
        B, total, D = embeds.shape
        if total == 0 or total % S:
            raise ValueError(f"wavefront reading takes whole segments: {total} tokens is not a positive multiple "
                             f"of segment_size={S}.")
        N = total // S
        embeds = embeds.view(B, N, S, D).transpose(0, 1)  # (N, B, S, D)
        parts = [embeds, cell.memory_tokens.view(1, 1, M, D).expand(N, B, M, D)]
        o = int(cell.sink is not None)
        if o:
            parts.insert(0, cell.sink.view(1, 1, 1, D).expand(N, B, 1, D))
        x0 = self.layers.embed(torch.cat(parts, dim=2))  # (N, B, P, D)

        shape = cell.memory_layers[0].empty_shape(B, D)
        dtype = self.state_dtype or embeds.dtype
        # per layer, replaced (not updated in place) at every write, so autograd can follow
        if memory is None:
            As = [embeds.new_zeros(shape, dtype=dtype)] * L
            zs = [embeds.new_zeros(shape[:-1], dtype=dtype) if self.use_denom else None] * L
        else:
            As = [m.A for m in memory.layers]
            zs = [m.z for m in memory.layers]
        logits: list[Tensor | None] = [None] * N
        head = cell.runner.get_output_embeddings()
        prev, prev_lo = None, 0
        held, A, z = None, None, None  # the active layers' stacked memory after the last step

        def release():  # back into the per-layer lists, when the active layers change
            As[held] = A.unbind(0)
            if z is not None:
                zs[held] = z.unbind(0)

        for t in range(N + L - 1):
            lo, hi = max(0, t - N + 1), min(L - 1, t)  # layer l works on segment t - l
            inputs = []
            if lo == 0:
                inputs.append(x0[t].unsqueeze(0))
            if hi >= 1:
                inputs.append(prev[max(lo, 1) - 1 - prev_lo:hi - prev_lo])
            h = torch.cat(inputs) if len(inputs) > 1 else inputs[0]
            sl = slice(lo, hi + 1)
            if held != sl:  # while every layer is busy the stack carries over without a copy
                if held is not None:
                    release()
                A = torch.stack(As[sl])
                z = torch.stack(zs[sl]) if self.use_denom else None
            # the empty memory reads exactly zero (A = 0, z = 0), as skipping the read does
            h = self._read(h, A, z, sl)
            h = self.layers(h, sl)
            A, z = self._write(h[:, :, -M:], A, z, sl, fresh=memory is None and hi == t)
            held = sl
            if hi == L - 1 and logits_for(t - hi):  # the last layer finished segment t - (L - 1)
                logits[t - hi] = head(self.layers.final_norm(h[-1, :, o:o + S]))
            prev, prev_lo = h, lo
        release()
        layers = tuple(LayerMemory(a, z) for a, z in zip(As, zs))
        if memory is None:
            return logits, MemoryState(layers, N)
        return logits, MemoryState(layers, memory.segments + N,
                                   counts=None if memory.counts is None else memory.counts + N)
