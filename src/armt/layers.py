"""The associative memory of one decoder layer and how it attaches to that layer.

The memory hooks onto the original layer instead of replacing it, so the base model keeps
its module names, its ``state_dict`` and its ``save_pretrained``. The hooks exist only while a
segment is running (:meth:`AssociativeMemory.bind` registers them and removes them), closing
over that segment's read/write record; outside a segment the base model is untouched.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import ARMTConfig
from .ops import fused
from .state import LayerMemory
from .checks import InputTypeError


class SegmentRecord:
    """What one layer reads from and writes to during one segment."""

    __slots__ = ("memory", "num_mem_tokens", "write", "written")

    def __init__(self, memory: LayerMemory | None, num_mem_tokens: int, write: bool = True):
        self.memory = memory
        self.written: LayerMemory | None = None
        self.num_mem_tokens = num_mem_tokens
        self.write = write


class AssociativeMemory(nn.Module):
    """Projections of one layer's memory: ``W_mq``, ``W_mk`` (d_model -> d_mem),
    ``W_mv`` (d_model -> d_model, zero at init so a fresh memory reads zero) and ``W_mb``
    (write strength; d_model -> n_heads, or d_model -> d_model with gating).

    Example:
        >>> import torch
        >>> mem = AssociativeMemory(32, ARMTConfig(num_mem_tokens=4, d_mem=8))
        >>> state = mem.write(torch.randn(2, 4, 32), None)
        >>> mem.read(torch.randn(2, 10, 32), state).shape
        torch.Size([2, 10, 32])
    """

    def __init__(self, d_model: int, config: ARMTConfig, *, device=None, dtype=None):
        super().__init__()
        if d_model % config.n_heads != 0:
            raise ValueError(
                f"n_heads={config.n_heads} does not divide the model width {d_model}; "
                "choose n_heads that divides both d_mem and the hidden size."
            )
        kw = dict(device=device, dtype=dtype)
        self.n_heads = config.n_heads
        self.nu = config.dpfp_nu
        self.use_denom = config.use_denom
        self.correction = config.correction
        self.write_gate = config.write_gate
        self.W_mq = nn.Linear(d_model, config.d_mem, bias=False, **kw)
        self.W_mk = nn.Linear(d_model, config.d_mem, bias=False, **kw)
        self.W_mv = nn.Linear(d_model, d_model, bias=False, **kw)
        self.W_mb = nn.Linear(d_model, d_model if config.gating else config.n_heads, **kw)
        nn.init.zeros_(self.W_mv.weight)
        # the state may be kept wider than the model (bf16 model, float32 memory over long streams)
        self._memory_dtype = None if config.memory_dtype is None else getattr(torch, config.memory_dtype)

    @property
    def state_dtype(self) -> torch.dtype | None:
        """dtype of the state and of the read/write maths (``None``: the model's own)."""
        if self._memory_dtype is not None:
            return self._memory_dtype
        # float16's range (65,504) is passed by A's entries within tens of thousands of tokens
        return torch.float32 if self.W_mk.weight.dtype == torch.float16 else None

    def split_heads(self, x: Tensor) -> Tensor:
        """``(B, T, D)`` as ``(B, H, T, D / H)``: this memory's heads."""
        B, T, D = x.shape
        return x.view(B, T, self.n_heads, D // self.n_heads).transpose(1, 2)  # (B, H, T, D/H)

    def read(self, hidden: Tensor, memory: LayerMemory) -> Tensor:
        """``hidden + read(memory)`` at every position; hidden is ``(B, T, d_model)``."""
        return self.read_projected(hidden, self.W_mq(hidden), memory.A, memory.z)

    def read_projected(self, hidden: Tensor, q: Tensor, A: Tensor, z: Tensor | None) -> Tensor:
        """:meth:`read` from the query projection ``q = W_mq hidden`` ``(B, T, d_mem)``, done by
        the caller (the wavefront projects all layers at once)."""
        q = fused.dpfp(self.split_heads(q), self.nu)  # (B, H, T, d_key/H)
        out = fused.read(q.to(A.dtype), A, z)  # (B, H, T, d_model/H)
        return hidden + out.to(hidden.dtype).transpose(1, 2).reshape(hidden.shape)

    def write_projection(self) -> tuple[Tensor, Tensor]:
        """``(weight, bias)`` of ``W_mk``, ``W_mv`` and ``W_mb`` as one linear map: the write's key,
        value and strength read the same outputs, so one product gives all three."""
        d_mem, d_model = self.W_mk.out_features, self.W_mv.out_features
        weight = torch.cat([self.W_mk.weight, self.W_mv.weight, self.W_mb.weight])
        return weight, torch.cat([self.W_mb.bias.new_zeros(d_mem + d_model), self.W_mb.bias])

    def write_features(self, kvb: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(k, v, beta)`` per head from the output ``(B, M, ...)`` of :meth:`write_projection`."""
        k, v, b = kvb.split([self.W_mk.out_features, self.W_mv.out_features, self.W_mb.out_features], dim=-1)
        k = fused.dpfp(self.split_heads(k), self.nu)  # (B, H, M, d_key/H)
        v = self.split_heads(v)  # (B, H, M, d_model/H)
        beta = self.split_heads(fused.gate(b, self.write_gate))  # (B, H, M, 1 or d_model/H)
        if self.state_dtype is not None:
            k, v, beta = k.to(self.state_dtype), v.to(self.state_dtype), beta.to(self.state_dtype)
        return k, v, beta

    def write(self, mem_out: Tensor, memory: LayerMemory | None) -> LayerMemory:
        """Write the memory-token outputs ``(B, M, d_model)`` into ``memory`` (None = empty)."""
        return self.write_features_into(*self.write_features(F.linear(mem_out, *self.write_projection())), memory)

    def write_features_into(self, k: Tensor, v: Tensor, beta: Tensor, memory: LayerMemory | None) -> LayerMemory:
        """The delta-rule write of :meth:`write_features`' ``(k, v, beta)`` into ``memory``."""
        A, z = fused.write(k, v, beta, None if memory is None else (memory.A, memory.z), **self.write_options())
        return LayerMemory(A, z)

    def write_options(self) -> dict[str, bool]:
        """The keyword options of :func:`armt.ops.fused.write` for this memory's config."""
        return dict(use_denom=self.use_denom, correction=self.correction, z_by_beta=self.write_gate == "hard")

    def empty_shape(self, batch_size: int, d_model: int) -> tuple[int, ...]:
        d_key = 2 * self.nu * self.W_mq.out_features
        return (batch_size, self.n_heads, d_key // self.n_heads, d_model // self.n_heads)

    # hooks on the decoder layer, for one segment --------------------------------------
    @contextmanager
    def bind(self, layer: nn.Module, memory: LayerMemory | None, num_mem_tokens: int,
             write: bool = True) -> Iterator[SegmentRecord]:
        """Hook this memory onto ``layer`` for one segment: the layer's input reads ``memory``
        and, with ``write``, the last ``num_mem_tokens`` outputs are written into the yielded
        record's ``written``. The hooks close over that record and are removed when the
        context ends, so outside a segment the base model is plain. ``write=False`` only reads
        (decoding steps of generation, which carry no memory tokens and may run the layer many
        times)."""
        if any(getattr(hook, "armt_segment", False) for hook in layer._forward_pre_hooks.values()):
            raise RuntimeError("This ARMT layer is already running a segment (re-entrant call).")
        record = SegmentRecord(memory, num_mem_tokens, write)

        def before(module, args, kwargs):
            if record.memory is None:
                return None
            if args:
                return (self.read(args[0], record.memory),) + tuple(args[1:]), kwargs
            kwargs = dict(kwargs)
            kwargs["hidden_states"] = self.read(kwargs["hidden_states"], record.memory)
            return args, kwargs

        def after(module, args, kwargs, output):
            if not record.write:
                return
            if record.written is not None:
                raise RuntimeError(
                    f"{type(module).__name__} ran twice in one segment; ARMT cannot write its memory "
                    "twice. Disable the base model's own gradient checkpointing and use "
                    "ARMTConfig(gradient_checkpointing=True) instead."
                )
            hidden = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(hidden, Tensor):
                raise InputTypeError(
                    f"{type(module).__name__} returned {type(output).__name__}; ARMT expects a tensor "
                    "or a tuple whose first item is the hidden states."
                )
            record.written = self.write(hidden[:, -record.num_mem_tokens:], record.memory)

        before.armt_segment = True  # marks our hook, so a nested segment is caught
        handles = [layer.register_forward_pre_hook(before, with_kwargs=True),
                   layer.register_forward_hook(after, with_kwargs=True)]
        try:
            yield record
        finally:
            for handle in handles:
                handle.remove()
