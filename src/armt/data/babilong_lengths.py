"""BABILong lengths: ``"4k"`` is 4096 tokens of context, ``"1M"`` 1024 * 1024, ``"0k"`` facts only."""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..checks import InputTypeError

KIB = 1024
MIB = 1024 * 1024
BABILONG_LENGTHS = ("0k", "1k", "2k", "4k", "8k", "16k", "32k", "64k", "128k", "256k", "512k", "1M", "10M")


def parse_length(spec: str | int) -> int:
    """Tokens of a BABILong length name: ``k`` is 1024 tokens and ``M`` is 1024 * 1024.

    ``"0k"`` is 0, which means "facts only" (no background text). Plain numbers are tokens.

    Example:
        >>> parse_length("16k"), parse_length("1M"), parse_length("0k"), parse_length(4096)
        (16384, 1048576, 0, 4096)
    """
    if isinstance(spec, bool):
        raise InputTypeError(f"length must be a name like '4k' or a token count, got {spec!r}.")
    if isinstance(spec, int):
        if spec < 0:
            raise ValueError(f"length={spec} is negative; use 0 (facts only) or more tokens.")
        return spec
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmM]?)\s*", str(spec))
    if not match:
        raise ValueError(f"length={spec!r} is not a length; use e.g. '0k', '4k', '1M' or a number of tokens.")
    value = float(match.group(1)) * {"": 1, "k": KIB, "m": MIB}[match.group(2).lower()]
    if value != int(value):
        raise ValueError(f"length={spec!r} is not a whole number of tokens ({value}).")
    return int(value)


def parse_lengths(specs: str | int | Sequence[str | int]) -> list[int]:
    """Tokens of each length in ``"0k,1k,4k"`` (or a list of names), in the given order.

    Example:
        >>> parse_lengths("0k, 1k,4k")
        [0, 1024, 4096]
    """
    items = specs.split(",") if isinstance(specs, str) else [specs] if isinstance(specs, int) else list(specs)
    lengths = [parse_length(item) for item in items if not (isinstance(item, str) and not item.strip())]
    if not lengths:
        raise ValueError(f"lengths={specs!r} names no length; use e.g. '0k,1k,4k'.")
    return lengths


def length_name(tokens: int | str) -> str:
    """The short name of a length: 16384 -> ``"16k"``, 1048576 -> ``"1M"``, 512 -> ``"0.5k"``,
    256 -> ``"0.25k"``, 1000 -> ``"1000"``.

    Example:
        >>> length_name(0), length_name(16384), length_name(10 * 1024 * 1024), length_name("4096")
        ('0k', '16k', '10M', '4k')
        >>> length_name(512), length_name(1536), length_name(256), length_name(1000)
        ('0.5k', '1.5k', '0.25k', '1000')
    """
    tokens = parse_length(tokens)
    if tokens and tokens % MIB == 0:
        return f"{tokens // MIB}M"
    if tokens % KIB == 0:
        return f"{tokens // KIB}k"
    if tokens % (KIB // 4) == 0:  # 512 -> "0.5k", as BABILong's shortest lengths are named
        return f"{tokens / KIB:g}k"
    return str(tokens)
