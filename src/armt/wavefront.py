"""Diagonal (wavefront) reading: all layers of ARMT at once, one segment apart.

Cell (segment s, layer l) needs only the output of (s, l-1) and the memory that (s-1, l)
wrote, so every cell with the same ``s + l`` can run together: ``N + L - 1`` steps instead
of ``N x L`` (diagonal batching, arXiv 2506.05229). In step t, layer l works on segment
``t - l``; the L layers' weights are stacked so that each operation of a step is one batched
matrix product over the active layers. On a CPU or GPU that spends its time launching small
operations this divides their number by up to L; the arithmetic is unchanged.

The layers are rewritten as functions of stacked weights (each family's ``stacked`` layer in
:mod:`armt.families`), so only families whose layer maths is written down there run this way; anything else (other
families, peft adapters, the sliding window, the RMT baseline, dropout in training mode) is
refused with the reason. Results equal the sequential segment loop (tested to 1e-10 in
float64).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable

import torch
from torch import Tensor, nn

from . import families
from .adapters import has_adapters
from .families.stacked import linear, stack
from .ops import fused
from .segments import SegmentStep, run_segment
from .state import LayerMemory, MemoryState


def wavefront_blocker(cell) -> str | None:
    """Why the model of ``cell`` (an :class:`armt.ARMTCell`) cannot run along the diagonals,
    with what to do instead; ``None`` when it can."""
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
    config = cell.runner.config
    family = families.family_of(config)
    if family is None:
        return (f"it supports model types {families.SUPPORTED_TYPES}, not {getattr(config, 'model_type', None)!r}; "
                "use wavefront=False")
    kinds = {type(layer).__name__ for layer in cell.decoder_layers}
    if not kinds <= set(family.layer_classes):
        return (f"it knows the layers {family.layer_classes} for {config.model_type!r}, but this model has "
                f"{sorted(kinds)}; use wavefront=False")
    unknown = families.unknown_fields(config)
    if unknown:
        return f"its {family.name} layer does not follow " + ", ".join(unknown) + "; use wavefront=False"
    return None


def _active_dropout(model: nn.Module) -> bool:
    """Does ``model`` drop anything in training mode (dropout modules, or attention dropout
    that Hugging Face layers read from the config)?"""
    if any(isinstance(m, nn.Dropout) and m.p > 0 for m in model.modules()):
        return True
    config = getattr(model, "config", None)
    return any(float(getattr(config, name, 0) or 0) > 0 for name in ("attention_dropout", "attn_pdrop"))


def use_wavefront(cell, wavefront: bool | None, *, padded: bool, checkpointing: bool = False) -> bool:
    """Should this pass of ``cell``'s model run along the diagonals? ``wavefront`` is the call's
    option (``None``: ``ARMTConfig.wavefront``, which covers passes without gradients only:
    training through the wavefront pays only for small models, since it restacks the weights
    every pass); ``checkpointing``: per-segment gradient checkpointing is on. An explicit
    ``True`` that cannot run raises with the reason; the config's default falls back to the
    segment loop."""
    config = cell.config
    if wavefront is False or (wavefront is None and not config.wavefront):
        return False
    grad = torch.is_grad_enabled()
    if wavefront is None and grad:
        return False
    blocker = None
    if grad and checkpointing:
        blocker = "per-segment gradient checkpointing is on (it recomputes segments one by one)"
    elif grad and config.bptt_segments is not None:
        blocker = "bptt_segments is set (truncated backpropagation detaches between segments)"
    elif cell.training and _active_dropout(cell.runner):
        blocker = ("the model is in training mode with dropout (the wavefront has none); call model.eval() or "
                   "set the dropout to 0")
    elif padded:
        blocker = "the batch is padded (padded rows run segment by segment)"
    elif config.segment_alignment != "left":
        blocker = f"segment_alignment={config.segment_alignment!r} (it needs 'left')"
    if blocker is None and wavefront:
        blocker = wavefront_blocker(cell)
    if blocker is None:
        return True
    if wavefront:
        raise ValueError(f"wavefront=True cannot run here: {blocker}.")
    return False


# cell -> (the weights' versions, the plan built from them); a cache, not state: it is rebuilt
# whenever a weight changes and dropped with its cell
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def wavefront_plan(cell) -> "Wavefront":
    """The :class:`Wavefront` of ``cell``'s current weights: rebuilt only when a weight changed
    (an optimizer step, ``load_state_dict``), since it holds stacked copies."""
    key = tuple((id(p), p._version, p.dtype, p.device, p.data_ptr()) for p in cell.parameters())
    cached = _PLANS.get(cell)
    if cached is None or cached[0] != key:
        with torch.no_grad():
            cached = (key, Wavefront(cell))
        _PLANS[cell] = cached
    return cached[1]


def wavefront_segments(cell, embed: Callable[[int, int], Tensor], bounds, memory: MemoryState | None,
                       logits_for: Callable[[int, bool], bool]) -> list[SegmentStep] | None:
    """The segments ``bounds`` of one input as :class:`armt.segments.SegmentStep` (the same
    arguments as :func:`armt.segments.iter_segments`): the full ones run along the diagonals,
    a short last one after them; ``None`` when fewer than two are full. Only the last step
    carries the memory."""
    S = cell.config.segment_size
    n, n_full = len(bounds), sum(1 for a, b in bounds if b - a == S)
    if n_full < 2:
        return None
    # with gradients the stacked weights are built for this call, so they carry gradients back
    plan = Wavefront(cell) if torch.is_grad_enabled() else wavefront_plan(cell)
    logits, memory = plan.run(embed(0, n_full * S), memory, lambda s: logits_for(s, s == n - 1))
    steps = [SegmentStep(s, a, b, logits[s], None, s == n - 1) for s, (a, b) in enumerate(bounds[:n_full])]
    if n_full == n:
        steps[-1].memory = memory
        return steps
    a, b = bounds[-1]
    last_logits, memory = run_segment(cell, embed(a, b), None, memory, compute_logits=logits_for(n - 1, True))
    return steps + [SegmentStep(n - 1, a, b, last_logits, memory, True)]


class Wavefront:
    """Reads full segments of a model's :class:`armt.ARMTCell` along the diagonals.

    Built once per stream (it stacks a copy of the decoder layers' weights, so it sees the
    weights as they were when it was built). Used by :class:`armt.streaming.MemoryReader`
    with ``wavefront=True`` (and so ``model.read(..., wavefront=True)``).

    Example:
        >>> import torch
        >>> from armt import ARMTConfig, ARMTForCausalLM
        >>> from armt.tiny import tiny_base_model
        >>> model = ARMTForCausalLM(tiny_base_model("llama"), ARMTConfig(num_mem_tokens=4, d_mem=8, segment_size=16))
        >>> ids = torch.randint(1000, (1, 64))
        >>> state = Wavefront(model.cell).read(ids, None)
        >>> torch.allclose(state.layers[3].A, model.read([ids]).memory.layers[3].A, atol=1e-5)
        True
    """

    def __init__(self, cell):
        reason = wavefront_blocker(cell)
        if reason:
            raise ValueError(f"wavefront reading cannot run here: {reason}.")
        runner = cell.runner
        layers = cell.decoder_layers
        self.cell = cell
        self.layers = families.family_of(runner.config).stacked(runner, layers)
        mem = cell.memory_layers
        self.memory = mem[0]  # every layer's memory has the same shapes and options
        self.use_denom, self.correction = self.memory.use_denom, self.memory.correction
        self.state_dtype = self.memory.state_dtype
        self.W_q = stack((m.W_mq.weight for m in mem), True)  # (L, D, d_mem)
        projections = [m.write_projection() for m in mem]
        self.W_kvb = stack((w for w, _ in projections), True)
        self.b_kvb = stack(b for _, b in projections)

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
        kvb = linear(out.reshape(Lp, B * M, D), self.W_kvb[sl], self.b_kvb[sl]).view(Lp * B, M, -1)
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
