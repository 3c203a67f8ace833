"""Language-modelling windows cut from tokenized books.

A window is ``segment_size * num_segments`` tokens; the model splits it into segments itself.
Windows stay inside one book unless asked otherwise, so a memory never carries facts from one
book into the next, and :func:`split_books` keeps training and evaluation books apart.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from armt.data.books import Book, BookSource

from ..checks import InputTypeError, check_positive_int


@dataclass
class LMWindowsConfig:
    """How books are cut into language-modelling windows.

    Args:
        segment_size: tokens per segment, as in ``ARMTConfig.segment_size``.
        num_segments: segments per window.
        stride: tokens between the starts of consecutive windows; ``None`` means the window
            length (no overlap). Smaller values overlap windows, larger ones skip text.
        cross_books: let a window run from the end of one book into the next; books are then
            read as one stream.
        add_eos_between_books: with ``cross_books``, put the tokenizer's eos token between books.
        max_tokens_per_book: use at most this many tokens of each book (``None``: all).
        no_loss_segments: the tokens of the first this many segments get label ``-100``, so
            the loss scores only the pairs (logits ``t``, token ``t + 1``) whose target lies in
            segment ``no_loss_segments + 1`` or later, the pair from the last token of segment
            ``no_loss_segments`` to the first token after it included. The official recipe's
            ``--no_loss_from_first_segment`` is ``no_loss_segments=1``: the first segment is
            context only, read with no memory of anything before it.

    Example:
        >>> cfg = LMWindowsConfig(segment_size=512, num_segments=4)
        >>> cfg.window, cfg.step
        (2048, 2048)
        >>> LMWindowsConfig(segment_size=512, num_segments=2, no_loss_segments=1).no_loss_tokens
        512
    """

    segment_size: int
    num_segments: int
    stride: int | None = None
    cross_books: bool = False
    add_eos_between_books: bool = True
    max_tokens_per_book: int | None = None
    no_loss_segments: int = 0

    def __post_init__(self) -> None:
        check_positive_int(self, "segment_size", "Use the number of real tokens per segment, e.g. 512.")
        check_positive_int(self, "num_segments", "Use 1 for windows of a single segment.")
        if self.stride is not None:
            check_positive_int(self, "stride", "Use None for non-overlapping windows.")
        if self.max_tokens_per_book is not None:
            check_positive_int(self, "max_tokens_per_book", "Use None to read whole books.")
        for name in ("cross_books", "add_eos_between_books"):
            if not isinstance(getattr(self, name), bool):
                raise InputTypeError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        value = self.no_loss_segments
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputTypeError(f"no_loss_segments must be an int, got {type(value).__name__} ({value!r}).")
        if not 0 <= value < self.num_segments:
            raise ValueError(
                f"no_loss_segments={value} with num_segments={self.num_segments} leaves no segment to score; "
                f"use 0 <= no_loss_segments < num_segments (train on windows of at least {value + 1} segments)."
            )

    @property
    def window(self) -> int:
        """Tokens per window: ``segment_size * num_segments``."""
        return self.segment_size * self.num_segments

    @property
    def step(self) -> int:
        """Tokens between window starts (``stride``, or the window when it is ``None``)."""
        return self.window if self.stride is None else self.stride

    @property
    def no_loss_tokens(self) -> int:
        """Tokens at the start of every window whose labels are ``-100``."""
        return self.no_loss_segments * self.segment_size


_CUT = re.compile(r"\S(?=\s)")


def _chunks(text: str, chunk_chars: int) -> list[str]:
    # Cut just before a run of whitespace: GPT-2-style pre-tokenizers start a new token there
    # anyway, so byte-level BPE gives the same ids as for the whole text.
    pieces = []
    start = 0
    while len(text) - start > chunk_chars:
        m = _CUT.search(text, start + chunk_chars)
        if m is None:
            break
        pieces.append(text[start:m.end()])
        start = m.end()
    pieces.append(text[start:])
    return pieces


def tokenize_books(source: BookSource | Iterable[Book], tokenizer: Any, *,
                   max_tokens_per_book: int | None = None,
                   chunk_chars: int = 100_000) -> Iterator[tuple[str, list[int]]]:
    """Tokenize books one at a time into ``(title, ids)`` pairs, without special tokens.

    Each book is encoded in pieces of about ``chunk_chars`` characters, cut just before
    whitespace, so that very long books never go through one giant call. For byte-level BPE
    tokenizers (GPT-2 style, and those from :func:`~armt.data.tokenizer.train_bpe_tokenizer`)
    this gives exactly the ids of the whole text; tokenizers that add a prefix space to every
    call (SentencePiece) can differ by a token at each cut.

    Args:
        source: a :class:`~armt.data.books.BookSource` or any iterable of books.
        tokenizer: a Hugging Face tokenizer.
        max_tokens_per_book: stop reading a book once this many tokens are collected (the
            list is then cut to exactly this length).
        chunk_chars: characters per tokenizer call.

    Example:
        >>> from armt.data.tokenizer import train_bpe_tokenizer
        >>> tok = train_bpe_tokenizer(["one two three. " * 30], vocab_size=300)
        >>> [(t, tok.decode(ids)) for t, ids in tokenize_books([Book("b", "two one.")], tok)]
        [('b', 'two one.')]
    """
    if chunk_chars < 1:
        raise ValueError(f"chunk_chars must be >= 1, got {chunk_chars}.")
    books = source.books() if isinstance(source, BookSource) else source
    for book in books:
        ids: list[int] = []
        pieces = _chunks(book.text, chunk_chars)
        # A few pieces per call lets the Rust tokenizer work on them in parallel.
        for i in range(0, len(pieces), 8):
            batch = tokenizer(pieces[i:i + 8], add_special_tokens=False)["input_ids"]
            for part in batch:
                ids.extend(part)
            if max_tokens_per_book is not None and len(ids) >= max_tokens_per_book:
                del ids[max_tokens_per_book:]
                break
        yield book.title, ids


def lm_windows(token_streams: Iterable[Sequence[int] | tuple[str, Sequence[int]]],
               config: LMWindowsConfig, *, eos_token_id: int | None = None) -> Iterator[list[int]]:
    """Cut token streams into windows of exactly ``config.window`` tokens.

    Windows start every ``config.step`` tokens. Without ``cross_books`` each stream (book) is
    cut on its own and a window never spans two books; with it, the streams are read as one,
    with ``eos_token_id`` between books when ``add_eos_between_books``. Tokens left over at the
    end (of each book, or of everything with ``cross_books``) that do not fill a window are
    dropped, so every window has the same length.

    Args:
        token_streams: id lists, or ``(title, ids)`` pairs as :func:`tokenize_books` yields.
        config: window length, stride and book handling.
        eos_token_id: separator for ``cross_books`` with ``add_eos_between_books``.

    Example:
        >>> cfg = LMWindowsConfig(segment_size=2, num_segments=2, stride=3)
        >>> list(lm_windows([list(range(10)), [20, 21, 22]], cfg))
        [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]]
        >>> cfg = LMWindowsConfig(segment_size=2, num_segments=2, cross_books=True)
        >>> list(lm_windows([[1, 2, 3], [4, 5, 6, 7, 8]], cfg, eos_token_id=0))
        [[1, 2, 3, 0], [4, 5, 6, 7]]
    """
    window, step = config.window, config.step
    separate = config.cross_books and config.add_eos_between_books
    if separate and eos_token_id is None:
        raise ValueError(
            "eos_token_id is None but cross_books and add_eos_between_books are set; pass "
            "eos_token_id=tokenizer.eos_token_id, or add_eos_between_books=False."
        )
    buffer: list[int] = []
    skip = 0
    for index, item in enumerate(token_streams):
        ids = item[1] if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str) else item
        ids = list(ids[:config.max_tokens_per_book] if config.max_tokens_per_book is not None else ids)
        if not config.cross_books:
            for start in range(0, len(ids) - window + 1, step):
                yield ids[start:start + window]
            continue
        if separate and index > 0:
            buffer.append(eos_token_id)
        buffer.extend(ids)
        # ``skip`` carries a stride longer than the window across books.
        drop = min(skip, len(buffer))
        del buffer[:drop]
        skip -= drop
        start = 0
        while len(buffer) - start >= window:
            yield buffer[start:start + window]
            start += step
        if start > len(buffer):
            skip = start - len(buffer)
            start = len(buffer)
        del buffer[:start]


def split_books(source: BookSource | Sequence[str], held_out: float | Sequence[str]) -> tuple[list[str], list[str]]:
    """Split book titles into training and evaluation titles that share no book.

    Titles are sorted and the last ones are held out (or the ones named), so the split depends
    only on the titles.

    Args:
        source: a :class:`~armt.data.books.BookSource` (its distinct titles) or titles.
        held_out: how many books to hold out (an int >= 1), which fraction (a float in
            ``(0, 1)``, rounded, at least one book), or which books (a list of titles).

    Returns:
        ``(train_titles, eval_titles)``, each sorted.

    Example:
        >>> split_books(["c", "a", "b", "d"], held_out=0.25)
        (['a', 'b', 'c'], ['d'])
        >>> split_books(["c", "a", "b", "d"], held_out=["b"])
        (['a', 'c', 'd'], ['b'])
    """
    titles = sorted(set(source.titles() if isinstance(source, BookSource) else source))
    if isinstance(held_out, (list, tuple)):
        named = sorted(set(held_out))
        unknown = [t for t in named if t not in titles]
        if unknown or not named or len(named) == len(titles):
            problem = f"{unknown} are not titles of the source" if unknown else "it must name some but not all books"
            raise ValueError(f"held_out={list(held_out)}: {problem}; the titles are {titles}.")
        return [t for t in titles if t not in set(named)], named
    if isinstance(held_out, bool) or not isinstance(held_out, (int, float)):
        raise InputTypeError(f"held_out must be an int, a float or a list of titles, got {type(held_out).__name__} "
                        f"({held_out!r}).")
    if isinstance(held_out, float):
        if not 0.0 < held_out < 1.0:
            raise ValueError(f"held_out={held_out} as a fraction must lie in (0, 1); or pass a book count.")
        count = max(1, round(held_out * len(titles)))
    else:
        count = held_out
    if not 1 <= count < len(titles):
        raise ValueError(
            f"held_out={held_out} holds out {count} of {len(titles)} books; keep at least one book "
            "on each side (use more books or a smaller held_out)."
        )
    return titles[:-count], titles[-count:]


class LMWindowDataset(torch.utils.data.Dataset):
    """Fixed-length language-modelling windows held as one ``LongTensor``.

    Items are ``{"input_ids": (window,), "labels": (window,)}`` with equal values, except the
    first ``no_loss_tokens`` labels, which are ``-100``; the model shifts the labels itself.

    Args:
        windows: ``(num_windows, window)`` token ids, or a list of equal-length id lists.
        description: where the windows came from, for logs.
        titles: the books the windows were cut from.
        no_loss_tokens: leading tokens of every window that are not targets of the loss
            (:attr:`LMWindowsConfig.no_loss_tokens`).

    Example:
        >>> ds = LMWindowDataset([[1, 2, 3, 4], [5, 6, 7, 8]])
        >>> len(ds), ds[1]["input_ids"].tolist(), ds[1]["labels"].tolist()
        (2, [5, 6, 7, 8], [5, 6, 7, 8])
        >>> LMWindowDataset([[1, 2, 3, 4]], no_loss_tokens=2)[0]["labels"].tolist()
        [-100, -100, 3, 4]
    """

    def __init__(self, windows: torch.Tensor | Sequence[Sequence[int]], description: str = "",
                 titles: Sequence[str] = (), no_loss_tokens: int = 0) -> None:
        data = windows if isinstance(windows, torch.Tensor) else torch.tensor(list(windows), dtype=torch.long)
        if data.dim() != 2:
            raise ValueError(f"windows must be (num_windows, window), got shape {tuple(data.shape)}.")
        if isinstance(no_loss_tokens, bool) or not isinstance(no_loss_tokens, int) or \
                not 0 <= no_loss_tokens < max(data.shape[1], 1):
            raise ValueError(f"no_loss_tokens={no_loss_tokens!r} must be an int in [0, window={data.shape[1]}); "
                             "some tokens of a window must remain targets.")
        self.windows = data.long()  # (N, window)
        self.description = description
        self.titles = list(titles)
        self.no_loss_tokens = no_loss_tokens

    @classmethod
    def from_books(cls, source: BookSource, tokenizer: Any, config: LMWindowsConfig, *,
                   books: slice | Sequence[str] | None = None) -> LMWindowDataset:
        """Tokenize ``source`` and cut it into windows.

        Args:
            source: where the books come from.
            tokenizer: a Hugging Face tokenizer (its ``eos_token_id`` separates books with
                ``cross_books``).
            config: window length, stride and book handling.
            books: which books: a slice of the books in source order, a list of titles (for
                example one side of :func:`split_books`), or ``None`` for all.

        Example:
            >>> from armt.data.books import builtin_books
            >>> from armt.data.tokenizer import train_bpe_tokenizer
            >>> src = builtin_books(num_books=2, chars_per_book=3000)
            >>> tok = train_bpe_tokenizer([b.text for b in src.books()], vocab_size=300)
            >>> ds = LMWindowDataset.from_books(src, tok, LMWindowsConfig(64, 2), books=src.titles()[1:])
            >>> ds.windows.shape[1], ds.num_books
            (128, 1)
        """
        titles: list[str] = []

        def selected() -> Iterator[Book]:
            # Books stream through one at a time; only their titles are kept.
            for book in _select(source, books):
                titles.append(book.title)
                yield book

        streams = tokenize_books(selected(), tokenizer, max_tokens_per_book=config.max_tokens_per_book)
        rows = list(lm_windows(streams, config, eos_token_id=getattr(tokenizer, "eos_token_id", None)))
        windows = torch.tensor(rows, dtype=torch.long) if rows else torch.empty(0, config.window, dtype=torch.long)
        which = "all" if books is None else "selected"
        description = (f"{len(rows)} windows of {config.window} tokens (stride {config.step}) from "
                       f"{len(titles)} {which} books of {source.description}")
        if config.no_loss_segments:
            description += f", no loss on the first {config.no_loss_segments} segment(s)"
        return cls(windows, description, titles, no_loss_tokens=config.no_loss_tokens)

    @property
    def num_books(self) -> int:
        """How many books the windows were cut from (0 when built from raw windows)."""
        return len(self.titles)

    def __len__(self) -> int:
        return self.windows.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.windows[index]
        # A copy, so that a collator masking labels in place never edits the inputs.
        labels = ids.clone()
        labels[:self.no_loss_tokens] = -100
        return {"input_ids": ids, "labels": labels}


def _select(source: BookSource, books: slice | Sequence[str] | None) -> Iterator[Book]:
    if books is None:
        yield from source.books()
        return
    if isinstance(books, slice):
        if (books.step or 1) > 0 and all(v is None or v >= 0 for v in (books.start, books.stop)):
            yield from itertools.islice(source.books(), books.start, books.stop, books.step)
            return
        # Negative bounds need the number of books first; books still come in source order.
        keep = set(range(len(source.titles()))[books])
        yield from (book for index, book in enumerate(source.books()) if index in keep)
        return
    if isinstance(books, str):
        raise InputTypeError(f"books must be a list of titles, not one string; use books=[{books!r}].")
    wanted = set(books)
    seen: list[str] = []
    for book in source.books():
        seen.append(book.title)
        if book.title in wanted:
            yield book
    missing = sorted(wanted - set(seen))
    if missing:
        raise ValueError(
            f"books={missing} are not titles of {source.description}; available titles include "
            f"{seen[:5]}. Use split_books(source, ...) to get valid titles."
        )
