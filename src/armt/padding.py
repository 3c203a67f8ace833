"""Padded batches that give every item exactly what it would get alone.

An item run alone is cut into segments from its first real token. In a padded batch the items
have different lengths, so the batch is first rearranged so that every item's real tokens start
at position 0 (right padding; left-padded rows are rotated). Then segment ``[a, b)`` holds, for
each item, its own ``a``-th.. tokens: an item whose tokens all lie before ``a`` keeps its memory
unchanged (the segment is pure padding for it), and in a partly padded segment the memory tokens
get the positions right after the item's last real token. Outputs are rotated back.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .state import LayerMemory, MemoryState


@dataclass(frozen=True)
class PaddingPlan:
    """Where each row's real tokens are: ``starts`` (first real index) and ``lengths``.

    Example:
        >>> mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
        >>> plan = PaddingPlan.from_mask(mask)
        >>> plan.lengths.tolist(), plan.to_start(torch.arange(5).expand(2, 5)).tolist()
        ([3, 4], [[2, 3, 4, 0, 1], [0, 1, 2, 3, 4]])
    """

    starts: Tensor
    lengths: Tensor
    width: int

    @classmethod
    def from_mask(cls, attention_mask: Tensor) -> PaddingPlan:
        """Read a 0/1 mask whose ones form one run per row (left or right padding); anything else
        is refused with a message."""
        plan = cls.detect(attention_mask)
        if plan is None:
            raise ValueError(
                "attention_mask has padding between real tokens; ARMT takes left or right padding only "
                "(one run of real tokens per row)."
            )
        return plan

    @classmethod
    def detect(cls, attention_mask: Tensor) -> PaddingPlan | None:
        """Like :meth:`from_mask`, but ``None`` for rows with holes (masked tokens between real
        ones), which are then only hidden as keys, not cut out of the row."""
        mask = attention_mask
        if mask.dtype == torch.bool:
            mask = mask.long()
        elif mask.is_floating_point() or not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token) values.")
        B, L = mask.shape
        lengths = mask.sum(dim=1)
        if bool((lengths == 0).any()):
            rows = (lengths == 0).nonzero().flatten().tolist()
            raise ValueError(f"attention_mask rows {rows} have no real token; drop those rows from the batch.")
        positions = torch.arange(L, device=mask.device)
        starts = torch.where(mask.bool(), positions, L).amin(dim=1)
        ends = torch.where(mask.bool(), positions, -1).amax(dim=1) + 1
        if bool(((ends - starts) != lengths).any()):
            return None
        return cls(starts, lengths, L)

    @property
    def padded(self) -> bool:
        """Whether any row has padding at all."""
        return bool((self.lengths != self.width).any())

    @property
    def shifted(self) -> bool:
        return bool((self.starts != 0).any())

    def _index(self, L: int, sign: int) -> Tensor:
        return (torch.arange(L, device=self.starts.device).unsqueeze(0) + sign * self.starts.unsqueeze(1)) % L

    def to_start(self, x: Tensor) -> Tensor:
        """Rotate each row of ``x`` (``(B, L, ...)``) so that its real tokens start at 0."""
        if not self.shifted:
            return x
        index = self._index(x.shape[1], +1)
        return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand(x.shape))

    def back(self, x: Tensor) -> Tensor:
        """Undo :meth:`to_start` on an output ``(B, L, ...)``."""
        if not self.shifted:
            return x
        index = self._index(x.shape[1], -1)
        return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand(x.shape))

    def active(self, start: int) -> Tensor:
        """``(B,)`` bool: which rows still have real tokens at or after ``start`` (rotated layout)."""
        return self.lengths > start


def keep_inactive(active: Tensor, new: MemoryState, old: MemoryState | None) -> MemoryState:
    """``new`` for the active rows, ``old`` (unchanged) for the others, segment counts per row."""
    if bool(active.all()):
        return new
    if old is None:
        rows = (~active).nonzero().flatten().tolist()
        raise ValueError(f"rows {rows} have no real token in their first segment; drop empty rows from the batch.")

    def pick(a: Tensor | None, b: Tensor | None) -> Tensor | None:
        if a is None:
            return None
        if a.shape != b.shape:
            raise ValueError(
                "this padded batch changes the sliding window's length between segments for some rows; "
                "pad the batch so that every row has a whole number of segments, or run the rows separately."
            )
        return torch.where(active.view(-1, *([1] * (a.dim() - 1))), a, b)

    layers = tuple(
        LayerMemory(pick(n.A, o.A), pick(n.z, o.z), pick(n.window_keys, o.window_keys),
                    pick(n.window_values, o.window_values))
        for n, o in zip(new.layers, old.layers)
    )
    active_rows = active.cpu()
    counts = torch.where(active_rows, old.segment_counts() + 1, old.segment_counts())
    return MemoryState(layers, int(counts.max()), pick(new.window_mask, old.window_mask),
                       pick(new.tokens, old.tokens), counts=counts)
