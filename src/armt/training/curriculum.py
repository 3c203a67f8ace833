"""Curriculum sampling: training items whose number of segments varies within a stage."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

from torch.utils.data import Dataset


class MixedSegments(Dataset):
    """Items whose number of segments varies: item ``i`` comes from ``make(k_i)`` with ``k_i``
    drawn from ``(seed, i)``, in ``1 .. max_segments`` or, with ``choices``, from that list
    (uniformly over its entries: a value listed twice is drawn twice as often). Collate with
    right padding (:class:`armt.training.trainer.SegmentCollator`) so every item scores as if
    alone.

    Example:
        >>> mixed = MixedSegments(lambda k: [{"k": k}] * 100, 33, choices=[1, 1, 2, 33])
        >>> sorted({mixed.segments_of(i) for i in range(100)})
        [1, 2, 33]
    """

    def __init__(self, make: Callable[[int], Dataset], max_segments: int, seed: int = 0,
                 choices: Sequence[int] | None = None):
        if max_segments < 1:
            raise ValueError(f"max_segments must be >= 1, got {max_segments}.")
        if choices is not None and (not choices or any(not 1 <= k <= max_segments for k in choices)):
            raise ValueError(f"choices must be a non-empty list of segment counts in 1 .. {max_segments}, "
                             f"got {list(choices)!r}.")
        self.make, self.max_segments, self.seed = make, max_segments, seed
        self.choices = list(choices) if choices is not None else list(range(1, max_segments + 1))
        self._cache: dict[int, Dataset] = {}
        self._len = len(make(max_segments))

    def __len__(self) -> int:
        return self._len

    def segments_of(self, index: int) -> int:
        digest = hashlib.sha256(f"mixed:{self.seed}:{index}".encode()).digest()
        return self.choices[int.from_bytes(digest[:4], "little") % len(self.choices)]

    def __getitem__(self, index: int) -> dict:
        k = self.segments_of(index)
        if k not in self._cache:
            self._cache[k] = self.make(k)
        return self._cache[k][index]
