"""How an input is cut into segments: the one rule that the forward pass, generation,
reading and per-segment evaluation share."""

from __future__ import annotations

import math


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
