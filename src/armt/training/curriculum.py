"""Curriculum sampling: training items whose number of segments varies within a stage."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from torch.utils.data import Dataset


class MixedSegments(Dataset):
    """Items whose number of segments varies: item ``i`` comes from ``make(k_i)`` with
    ``k_i`` in ``1 .. max_segments`` drawn from ``(seed, i)``; collate with right padding
    (:class:`armt.training.trainer.SegmentCollator`) so every item scores as if alone."""

    def __init__(self, make: Callable[[int], Dataset], max_segments: int, seed: int = 0):
        if max_segments < 1:
            raise ValueError(f"max_segments must be >= 1, got {max_segments}.")
        self.make, self.max_segments, self.seed = make, max_segments, seed
        self._cache: dict[int, Dataset] = {}
        self._len = len(make(max_segments))

    def __len__(self) -> int:
        return self._len

    def segments_of(self, index: int) -> int:
        digest = hashlib.sha256(f"mixed:{self.seed}:{index}".encode()).digest()
        return 1 + int.from_bytes(digest[:4], "little") % self.max_segments

    def __getitem__(self, index: int) -> dict:
        k = self.segments_of(index)
        if k not in self._cache:
            self._cache[k] = self.make(k)
        return self._cache[k][index]
