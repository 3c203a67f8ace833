"""Needles in a long haystack: the length-generalisation task.

``num_facts`` key-value facts ``k1 k2 : v`` (one per segment, as in :mod:`armt.data.capacity`)
sit at random segments among ``num_segments`` segments; every other segment is a distractor
with no ``:``; a query segment ``k1 k2 ? v`` comes last and only its value is scored. A model
answers only if its memory kept the fact across every segment after it, so exact match by
``num_segments`` far beyond the training length measures whether the memory generalises in
length.

Distractors:

- ``symbols``: random symbols of the task's alphabet.
- ``text``: real book text, one character per token, each character mapped onto the alphabet
  (:func:`text_symbols`): the letters most frequent in English get symbols of their own and the
  rest share, so common words become recurring symbol patterns, as they would for a tokenizer.
  A sample's distractors are one contiguous run of the text (the facts sit between its pieces),
  starting at a random place in the source.

Variants: ``remember`` (distinct keys; any fact may be asked) and ``rewrite`` (the keys come from
a pool of about half as many keys, so keys are re-assigned along the way and the answer is the
value given most recently; the memory must overwrite across long gaps).

Token ids as in :mod:`armt.data.capacity`: symbols ``0 .. num_symbols - 1``, then ``:`` and ``?``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..checks import check_positive_int
from .capacity import VARIANTS, PairTokens

DISTRACTORS = ("symbols", "text")

# English letters by frequency, space first: the first ``num_symbols`` get their own symbol
_FREQUENCY_ORDER = " etaoinshrdlcumwfgypbvkjxqz"


def text_symbols(text: str, num_symbols: int = 16) -> np.ndarray:
    """Map text onto an alphabet of ``num_symbols``: lower-cased, every run of non-letters one
    space, then the ``i``-th character of :data:`_FREQUENCY_ORDER` becomes symbol
    ``i % num_symbols``. Returns an int64 array, one symbol per character kept.

    Example:
        >>> text_symbols("The tea.", 16).tolist()
        [2, 8, 1, 0, 2, 1, 3, 0]
    """
    table = np.zeros(256, dtype=np.int64)  # every byte that is not a letter: the space's symbol
    is_letter = np.zeros(256, dtype=bool)
    for i, ch in enumerate(_FREQUENCY_ORDER):
        table[ord(ch)] = i % num_symbols
        is_letter[ord(ch)] = ch != " "
    raw = np.frombuffer(text.lower().encode("utf-8"), dtype=np.uint8)
    letter = is_letter[raw]
    # keep the letters and the first byte of every run of other bytes
    keep = letter | np.concatenate([[True], letter[:-1]])
    return table[raw[keep]]


class TextStream:
    """The distractor characters of ``text`` distractors: one long array of symbols built
    from a source of books (:func:`armt.data.books.load_books`), and a description of it.

    Args:
        source: a folder of .txt books, one .txt file, ``"builtin"``/``None`` for generated prose
            (no data needed), or a dataset name (see :func:`armt.data.books.load_books`).
        num_symbols: the alphabet size of the task.
        max_chars: stop reading books once this many characters are kept.

    Example:
        >>> stream = TextStream("builtin", max_chars=5000)
        >>> len(stream.symbols) >= 5000, stream.description.startswith("built-in")
        (True, True)
    """

    def __init__(self, source=None, *, num_symbols: int = 16, max_chars: int = 8_000_000):
        from .books import load_books

        books = load_books(source)
        parts, total = [], 0
        for book in books.books():
            parts.append(text_symbols(book.text, num_symbols))
            total += len(parts[-1])
            if total >= max_chars:
                break
        if total == 0:
            raise ValueError(f"source={source!r} holds no text; give a folder of .txt books or 'builtin'.")
        self.symbols = np.concatenate(parts)[:max_chars]
        self.num_symbols = num_symbols
        self.description = f"{books.description}, {len(self.symbols):,} characters"

    def runs(self, starts: np.ndarray, length: int) -> np.ndarray:
        """``len(starts)`` runs of ``length`` symbols, each from its start, wrapping at the end."""
        idx = (starts[:, None] + np.arange(length)[None, :]) % len(self.symbols)
        return self.symbols[idx]


@dataclass(frozen=True)
class NeedleConfig(PairTokens):
    """Shape of the needle samples.

    Args:
        num_facts: key-value segments hidden among the segments (``K``).
        num_segments: segments before the query, facts included (``M >= K``).
        distractors: ``symbols`` (random symbols) or ``text`` (book text; give a
            :class:`TextStream` to :func:`needle_batch`).
        variant: ``remember`` (distinct keys) or ``rewrite`` (keys repeat; the latest value wins).
        num_symbols, key_len, value_len: as in :class:`armt.data.capacity.CapacityConfig`.

    Example:
        >>> cfg = NeedleConfig(num_facts=4, num_segments=16)
        >>> cfg.segment_size, cfg.vocab_size, cfg.length
        (4, 18, 68)
    """

    num_facts: int = 4
    num_segments: int = 16
    distractors: str = "symbols"
    variant: str = "remember"
    num_symbols: int = 16
    key_len: int = 2
    value_len: int = 1

    def __post_init__(self) -> None:
        for name, hint in (("num_facts", "Use the number of facts to hide, e.g. 4."),
                           ("num_segments", "Use the number of segments before the query, e.g. 16."),
                           ("num_symbols", "The capacity task uses 16."),
                           ("key_len", "Use keys of 2 symbols."), ("value_len", "Use values of 1 symbol.")):
            check_positive_int(self, name, hint)
        if self.distractors not in DISTRACTORS:
            raise ValueError(f"distractors={self.distractors!r} is unknown; use one of {DISTRACTORS}.")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant={self.variant!r} is unknown; use one of {VARIANTS}.")
        if self.num_facts > self.num_segments:
            raise ValueError(f"num_facts={self.num_facts} facts do not fit in num_segments={self.num_segments} "
                             "segments; use num_segments >= num_facts.")
        if self.num_symbols < 2:
            raise ValueError(f"num_symbols={self.num_symbols} is too small; use at least 2.")
        if self.variant == "remember" and self.num_facts > self.num_symbols ** self.key_len:
            raise ValueError(f"num_facts={self.num_facts} distinct keys do not exist with num_symbols="
                             f"{self.num_symbols} and key_len={self.key_len}; use variant='rewrite' or longer keys.")

    @property
    def length(self) -> int:
        return (self.num_segments + 1) * self.segment_size


def needle_batch(config: NeedleConfig, batch_size: int, generator: torch.Generator | None = None,
                 text: TextStream | None = None) -> dict[str, Tensor]:
    """``batch_size`` fresh samples; the draws depend only on ``generator``'s state.

    Returns ``input_ids`` ``(B, L)``, ``labels`` (``-100`` except at the answer),
    ``answer_start`` ``(B,)`` and ``fact_segments`` ``(B, K)`` (where the facts are, sorted),
    ``asked`` ``(B,)`` (the index among them of the fact whose value is the answer) and
    ``distractor_segments`` ``(B, M)`` (True where a segment holds no fact).

    Example:
        >>> cfg = NeedleConfig(num_facts=2, num_segments=5)
        >>> b = needle_batch(cfg, 3, torch.Generator().manual_seed(0))
        >>> b["input_ids"].shape, int((b["input_ids"][:, :-4] == cfg.colon).sum(1)[0])
        (torch.Size([3, 24]), 2)
    """
    c = config
    if c.distractors == "text" and text is None:
        raise ValueError("distractors='text' needs text=TextStream(...) (book text mapped to the alphabet).")
    if text is not None and text.num_symbols != c.num_symbols:
        raise ValueError(f"text has num_symbols={text.num_symbols}, the task {c.num_symbols}; build the "
                         f"TextStream with num_symbols={c.num_symbols}.")
    B, K, M, S = batch_size, c.num_facts, c.num_segments, c.segment_size
    num_keys = c.num_symbols ** c.key_len
    rows = torch.arange(B)
    # keys as in the capacity task: distinct, or from a pool of about K/2 that makes repeats common
    if c.variant == "remember":
        key_index = torch.rand(B, num_keys, generator=generator).argsort(dim=1)[:, :K]
    else:
        pool = max(1, min(num_keys, (K + 1) // 2))
        pool_keys = torch.rand(B, num_keys, generator=generator).argsort(dim=1)[:, :pool]
        key_index = pool_keys.gather(1, torch.randint(pool, (B, K), generator=generator))
    asked = torch.randint(K, (B,), generator=generator)
    if c.variant == "rewrite":
        same = key_index == key_index[rows, asked].unsqueeze(1)
        asked = (same * torch.arange(1, K + 1)).argmax(dim=1)  # the latest fact with the asked key
    digits = c.num_symbols ** torch.arange(c.key_len - 1, -1, -1)
    keys = (key_index.unsqueeze(-1) // digits) % c.num_symbols  # (B, K, key_len)
    values = torch.randint(c.num_symbols, (B, K, c.value_len), generator=generator)
    facts = torch.cat([keys, torch.full((B, K, 1), c.colon), values], dim=-1)  # (B, K, S)
    # the facts' segments: K distinct of M, in order
    where = torch.rand(B, M, generator=generator).argsort(dim=1)[:, :K].sort(dim=1).values
    D = M - K
    if c.distractors == "symbols":
        noise = torch.randint(c.num_symbols, (B, D * S), generator=generator)
    else:
        starts = torch.randint(len(text.symbols), (B,), generator=generator).numpy()
        noise = torch.from_numpy(text.runs(starts, D * S))
    segments = torch.empty(B, M, S, dtype=torch.long)
    is_fact = torch.zeros(B, M, dtype=torch.bool)
    is_fact[rows.unsqueeze(1), where] = True
    segments[is_fact] = facts.reshape(B * K, S)  # row-major order keeps each row's facts in order
    segments[~is_fact] = noise.reshape(B * D, S)
    answer = values[rows, asked]  # (B, value_len)
    query = torch.cat([keys[rows, asked], torch.full((B, 1), c.ask), answer], dim=-1)
    ids = torch.cat([segments.view(B, M * S), query], dim=1)
    labels = torch.full_like(ids, -100)
    start = ids.shape[1] - c.value_len
    labels[:, start:] = answer
    return {"input_ids": ids, "labels": labels, "answer_start": torch.full((B,), start),
            "fact_segments": where, "asked": asked, "distractor_segments": ~is_fact}


def fixed_needle_batch(config: NeedleConfig, num_samples: int, seed: int,
                       text: TextStream | None = None) -> dict[str, Tensor]:
    """A fixed evaluation set: depends only on ``config``, ``num_samples`` and ``seed``.

    Example:
        >>> cfg = NeedleConfig(num_facts=1, num_segments=3)
        >>> a, b = fixed_needle_batch(cfg, 2, 7), fixed_needle_batch(cfg, 2, 7)
        >>> torch.equal(a["input_ids"], b["input_ids"])
        True
    """
    salt = (DISTRACTORS.index(config.distractors) * 7 + VARIANTS.index(config.variant)) * 1_000_003
    gen = torch.Generator().manual_seed(seed * 2_147_483_647 + salt + config.num_segments * 101 + config.num_facts)
    return needle_batch(config, num_samples, gen, text)
