"""The segment engine: how an input is cut into segments, and the one loop that runs them.

``forward``, ``generate`` (reading its context and writing full segments while decoding),
:class:`armt.streaming.MemoryReader` and per-segment perplexity (which reads windows with the
reader) all run their segments through :func:`run_segment`; whole inputs are walked with
:func:`iter_segments`. So the rule for cutting, per-segment gradient checkpointing, and the rule
that padded rows without tokens keep their memory live here and nowhere else.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from .padding import keep_inactive
from .state import MemoryState


def segment_bounds(length: int, segment_size: int, alignment: str) -> list[tuple[int, int]]:
    """``(start, end)`` of every segment, split as the official code splits.

    Example:
        >>> segment_bounds(10, 4, "left"), segment_bounds(10, 4, "right")
        ([(0, 4), (4, 8), (8, 10)], [(0, 2), (2, 6), (6, 10)])
    """
    if alignment == "left":
        starts = list(range(0, length, segment_size))
    elif alignment == "right":
        starts = sorted({max(0, e - segment_size) for e in range(length, 0, -segment_size)})
    else:  # center: torch.chunk into ceil(length / segment_size) pieces
        n = math.ceil(length / segment_size)
        starts = list(range(0, length, math.ceil(length / n)))
    return list(zip(starts, starts[1:] + [length]))


def run_segment(cell, embeds: Tensor, mask: Tensor | None, memory: MemoryState | None, *,
                compute_logits: bool = True, last_logits_only: bool = False, return_hidden: bool = False,
                checkpointing: bool = False, active: Tensor | None = None) -> tuple[Tensor | None, MemoryState]:
    """One segment through ``cell`` (an :class:`armt.cell.ARMTCell`).

    Args:
        embeds: ``(B, T, d_model)`` embeddings of the segment's tokens.
        mask: ``(B, T)`` padding mask of those tokens, or ``None``.
        memory: the state before the segment (``None``: empty).
        compute_logits, last_logits_only, return_hidden: as :meth:`ARMTCell.forward`.
        checkpointing: recompute the segment in the backward pass (only while gradients are on).
        active: ``(B,)`` bool, rows that have tokens in this segment; the others keep ``memory``.

    Returns:
        ``(logits, the hidden states with return_hidden, or None; state after the segment)``.
    """
    if checkpointing and torch.is_grad_enabled():
        logits, new = _checkpointed(cell, embeds, mask, memory, compute_logits, last_logits_only, return_hidden)
    else:
        logits, new = cell(embeds, mask, memory, compute_logits, last_logits_only, return_hidden)
    if active is not None:
        new = keep_inactive(active, new, memory)
    return logits, new


def _checkpointed(cell, embeds, mask, memory, compute_logits, last_logits_only, return_hidden):
    # without memory the state holds only the (detached) window: nothing to pass through
    carried = memory is not None and cell.config.use_memory
    flat = [t for m in memory.layers for t in (m.A, m.z) if t is not None] if carried else []
    use_denom = cell.config.use_denom

    def run(embeds, *flat):
        mem = memory
        if carried:
            step = 2 if use_denom else 1
            # the window (keys, values, mask) is detached: it rides along unchanged
            mem = replace(memory, layers=tuple(
                replace(m, A=flat[i], z=flat[i + 1] if use_denom else None)
                for m, i in zip(memory.layers, range(0, len(flat), step))
            ))
        return cell(embeds, mask, mem, compute_logits, last_logits_only, return_hidden)

    return checkpoint(run, embeds, *flat, use_reentrant=False)


@dataclass
class SegmentStep:
    """One segment of :func:`iter_segments`: its index, its ``[start, end)`` in the input, its
    logits (``None`` when not asked for), the memory after it, whether it is the last, and the
    base model's last hidden states where they were asked for instead of the logits."""

    index: int
    start: int
    end: int
    logits: Tensor | None
    memory: MemoryState | None
    last: bool
    hidden: Tensor | None = None


def iter_segments(cell, embed: Callable[[int, int], Tensor], bounds: Sequence[tuple[int, int]],
                  attention_mask: Tensor | None, memory: MemoryState | None, *,
                  logits_for: Callable[[int, bool], bool] = lambda index, last: True,
                  hidden_for: Callable[[int, bool], bool] | None = None, checkpointing: bool = False,
                  active: Callable[[int], Tensor] | None = None, detach_every: int | None = None) -> Iterator[SegmentStep]:
    """Run the segments ``bounds`` of one input through ``cell``, yielding each as it completes.

    Args:
        embed: ``embed(start, end) -> (B, end - start, d_model)`` embeddings of a slice.
        bounds: the segments, from :func:`segment_bounds`.
        attention_mask: ``(B, L)`` padding mask of the whole input, or ``None``.
        memory: the state before the first segment.
        logits_for: ``logits_for(index, last)``: does this segment need logits.
        hidden_for: ``hidden_for(index, last)``: give this segment's hidden states (the head's
            input, ``return_hidden`` of :meth:`ARMTCell.forward`) instead of its logits.
        checkpointing: per-segment gradient checkpointing.
        active: ``active(start) -> (B,)`` rows with tokens in the segment starting there (padded
            batches); the others keep their memory.
        detach_every: truncated backpropagation: detach the memory after every this many
            segments (not after the last).

    Example:
        >>> import torch
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> from armt import ARMTConfig, ARMTForCausalLM
        >>> base = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=99))
        >>> model = ARMTForCausalLM(base, ARMTConfig(num_mem_tokens=4, d_mem=8, segment_size=16))
        >>> ids = torch.randint(99, (1, 40))
        >>> embed = lambda a, b: base.get_input_embeddings()(ids[:, a:b])
        >>> [(s.start, s.end, s.memory.segments) for s in
        ...  iter_segments(model.cell, embed, segment_bounds(40, 16, "left"), None, None)]
        [(0, 16, 1), (16, 32, 2), (32, 40, 3)]
    """
    n = len(bounds)
    for s, (a, b) in enumerate(bounds):
        last = s == n - 1
        mask = None if attention_mask is None else attention_mask[:, a:b]
        hidden = hidden_for is not None and hidden_for(s, last)
        out, memory = run_segment(cell, embed(a, b), mask, memory, compute_logits=not hidden and logits_for(s, last),
                                  return_hidden=hidden, checkpointing=checkpointing,
                                  active=None if active is None else active(a))
        step = SegmentStep(s, a, b, None, memory, last, out) if hidden else SegmentStep(s, a, b, out, memory, last)
        yield step
        if detach_every is not None and (s + 1) % detach_every == 0 and not last:
            memory = memory.detach()
