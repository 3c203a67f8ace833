"""The associative-retrieval capacity task of the ARMT paper (arXiv 2407.04841, section 4).

Every segment holds ONE key-value pair, ``k1 k2 : v`` (keys of ``key_len`` symbols, values of
``value_len`` symbols, from an alphabet of ``num_symbols``); after ``num_pairs`` such segments a
query segment ``k1 k2 ? v`` asks for the value of one of the keys. Only the value is scored, so
the model can answer only if its memory carried the pair across up to ``num_pairs`` segments.

Two variants, as in the paper:

- ``remember``: the keys of a sample are distinct; the asked key is any of them.
- ``rewrite``: keys are drawn from a small pool, so they repeat; the answer is the value the
  asked key was given most recently.

Token ids: symbols are ``0 .. num_symbols - 1``, then ``:`` (:data:`COLON` offset) and ``?``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..checks import check_positive_int

VARIANTS = ("remember", "rewrite")


class PairTokens:
    """Token ids of the key-value tasks (capacity, needle), from ``num_symbols``, ``key_len`` and
    ``value_len``: symbols ``0 .. num_symbols - 1``, then ``:`` and ``?``."""

    num_symbols: int
    key_len: int
    value_len: int

    @property
    def colon(self) -> int:
        """Token id of ``:`` (between key and value in a pair segment)."""
        return self.num_symbols

    @property
    def ask(self) -> int:
        """Token id of ``?`` (between key and value in the query segment)."""
        return self.num_symbols + 1

    @property
    def vocab_size(self) -> int:
        return self.num_symbols + 2

    @property
    def segment_size(self) -> int:
        """Tokens of one pair segment (and of the query segment): key, separator, value."""
        return self.key_len + 1 + self.value_len


@dataclass(frozen=True)
class CapacityConfig(PairTokens):
    """Shape of the capacity-task samples.

    Args:
        num_pairs: key-value segments before the query (the ``N`` of the paper's plots).
        variant: ``remember`` (distinct keys) or ``rewrite`` (keys repeat; latest value wins).
        num_symbols: alphabet size (16 in the paper).
        key_len, value_len: symbols per key (2) and per value (1).
        num_samples: length of a :class:`CapacityDataset`.
        seed: samples depend only on ``(seed, num_pairs, variant, index)``.

    Example:
        >>> cfg = CapacityConfig(num_pairs=3)
        >>> cfg.segment_size, cfg.vocab_size, cfg.length
        (4, 18, 16)
    """

    num_pairs: int
    variant: str = "remember"
    num_symbols: int = 16
    key_len: int = 2
    value_len: int = 1
    num_samples: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive_int(self, "num_pairs", "Use the number of key-value segments before the query, e.g. 8.")
        check_positive_int(self, "num_symbols", "The paper uses 16.")
        check_positive_int(self, "key_len", "The paper uses keys of 2 symbols.")
        check_positive_int(self, "value_len", "The paper uses values of 1 symbol.")
        check_positive_int(self, "num_samples", "Use the number of samples the dataset should hold.")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant={self.variant!r} is unknown; use one of {VARIANTS}.")
        if self.num_symbols < 2:
            raise ValueError(f"num_symbols={self.num_symbols} is too small; use at least 2 (the paper uses 16).")
        if self.variant == "remember" and self.num_pairs > self.num_keys:
            raise ValueError(
                f"num_pairs={self.num_pairs} distinct keys do not exist with num_symbols={self.num_symbols} "
                f"and key_len={self.key_len} ({self.num_keys} keys); use variant='rewrite', longer keys or "
                "a larger alphabet."
            )

    @property
    def num_keys(self) -> int:
        return self.num_symbols ** self.key_len

    @property
    def length(self) -> int:
        return (self.num_pairs + 1) * self.segment_size


def capacity_batch(config: CapacityConfig, batch_size: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """``batch_size`` fresh samples drawn at once (training draws a new batch every step).

    Returns ``input_ids`` ``(B, L)``, ``labels`` (``-100`` except at the asked value) and
    ``answer_start`` ``(B,)`` (index of the first value token of the query, the same for all).

    Example:
        >>> cfg = CapacityConfig(num_pairs=2)
        >>> batch = capacity_batch(cfg, 4, torch.Generator().manual_seed(0))
        >>> batch["input_ids"].shape, int((batch["labels"] != -100).sum())
        (torch.Size([4, 12]), 4)
        >>> batch["input_ids"][0, 2].item() == cfg.colon, batch["input_ids"][0, -2].item() == cfg.ask
        (True, True)
    """
    c = config
    B, N = batch_size, c.num_pairs
    if c.variant == "remember":
        # distinct keys per sample: the first N of a random permutation of all keys
        key_index = torch.rand(B, c.num_keys, generator=generator).argsort(dim=1)[:, :N]
        asked = torch.randint(N, (B,), generator=generator)
    else:
        # a pool of about N/2 keys (at least 1) makes repeats common at every N
        pool = max(1, min(c.num_keys, (N + 1) // 2))
        pool_keys = torch.rand(B, c.num_keys, generator=generator).argsort(dim=1)[:, :pool]
        key_index = pool_keys.gather(1, torch.randint(pool, (B, N), generator=generator))
        asked = torch.randint(N, (B,), generator=generator)
    digits = c.num_symbols ** torch.arange(c.key_len - 1, -1, -1)
    keys = (key_index.unsqueeze(-1) // digits) % c.num_symbols  # (B, N, key_len)
    values = torch.randint(c.num_symbols, (B, N, c.value_len), generator=generator)
    rows = torch.arange(B)
    asked_key = keys[rows, asked]  # (B, key_len)
    if c.variant == "rewrite":
        # the answer is the last pair whose key equals the asked one
        same = (key_index == key_index[rows, asked].unsqueeze(1))
        asked = (same * torch.arange(1, N + 1)).argmax(dim=1)
    answer = values[rows, asked]  # (B, value_len)
    colon = torch.full((B, N, 1), c.colon)
    pairs = torch.cat([keys, colon, values], dim=-1).view(B, N * c.segment_size)
    query = torch.cat([asked_key, torch.full((B, 1), c.ask), answer], dim=-1)
    ids = torch.cat([pairs, query], dim=1)
    labels = torch.full_like(ids, -100)
    start = ids.shape[1] - c.value_len
    labels[:, start:] = answer
    return {"input_ids": ids, "labels": labels, "answer_start": torch.full((B,), start)}


class CapacityDataset(Dataset):
    """A fixed set of :func:`capacity_batch` samples (for evaluation and ``armt train``);
    item ``i`` depends only on the config (seed included) and ``i``.

    Example:
        >>> ds = CapacityDataset(CapacityConfig(num_pairs=4, num_samples=10))
        >>> len(ds), ds[3]["input_ids"].shape
        (10, torch.Size([20]))
    """

    _BLOCK = 256

    def __init__(self, config: CapacityConfig):
        self.config = config
        self._blocks: dict[int, dict[str, Tensor]] = {}

    def __len__(self) -> int:
        return self.config.num_samples

    def _block(self, b: int) -> dict[str, Tensor]:
        if b not in self._blocks:
            c = self.config
            salt = (VARIANTS.index(c.variant) * 1_000_003 + c.num_pairs) * 1_000_003 + b
            gen = torch.Generator().manual_seed(c.seed * 2_147_483_647 + salt)
            self._blocks[b] = capacity_batch(c, self._BLOCK, gen)
        return self._blocks[b]

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        if not 0 <= index < len(self):
            raise IndexError(index)
        block = self._block(index // self._BLOCK)
        return {k: v[index % self._BLOCK] for k, v in block.items()}

    def batch(self) -> dict[str, Tensor]:
        """All samples stacked (evaluation in one pass)."""
        n = len(self)
        blocks = [self._block(b) for b in range((n + self._BLOCK - 1) // self._BLOCK)]
        return {k: torch.cat([blk[k] for blk in blocks])[:n] for k in blocks[0]}
