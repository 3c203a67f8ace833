"""Background sentences for BABILong: a source that can be read again from any position,
cycling at its end, so a long sample can be planned and then written from the same text."""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from ..checks import InputTypeError

# what Sentences accepts: a list of sentences, a BookSource, or a function returning an iterator
SentenceSource = Any


def clean_sentence(text: str) -> str:
    """One space between words, so that pieces joined by one space tokenize as the pieces do."""
    return " ".join(str(text).split())


class Sentences:
    """Background sentences that can be read again from any position, cycling at the end.

    Args:
        source: a list of sentences, an object with a ``sentences()`` method (a
            ``BookSource`` of :mod:`armt.data.books`), or a function returning a fresh
            iterator. A one-shot iterator is refused: a long sample reads its sentences twice
            (once to plan, once to write), so the source must give the same sentences again.
    """

    def __init__(self, source: SentenceSource):
        # sentences per cycle, learnt when a stream first gets through the whole source
        self._period: int | None = None
        if isinstance(source, Sentences):
            self._open: Callable[[], Iterable[str]] = source._open
            self._items: Sequence[str] | None = source._items
            self._period = source._period
            return
        self._items = None
        if isinstance(source, (str, bytes)):
            raise InputTypeError("The sentence source is one string; pass a list of sentences "
                            "(armt.data.books.split_sentences(text)) or load_books(...).")
        if isinstance(source, (list, tuple)):
            self._items = [s for s in (clean_sentence(x) for x in source) if s]
            if not self._items:
                raise ValueError("The sentence source is empty; pass at least one non-empty sentence.")
            self._open = lambda: self._items or ()
        elif callable(getattr(source, "sentences", None)):
            self._open = source.sentences
        elif callable(source):
            self._open = source
        elif isinstance(source, Iterator):
            raise InputTypeError(
                "The sentence source is a one-shot iterator; pass a list, a BookSource "
                "(armt.data.books.load_books) or a function returning a fresh iterator."
            )
        elif isinstance(source, Iterable):
            self._open = lambda: source
        else:
            raise InputTypeError(f"Cannot read sentences from {type(source).__name__}; pass a list of sentences "
                            "or armt.data.books.load_books(...).")

    @property
    def size(self) -> int | None:
        """Number of sentences per cycle when known (a list), else ``None``."""
        return None if self._items is None else len(self._items)

    def stream(self, start: int = 0) -> Iterator[str]:
        """Cleaned, non-empty sentences from position ``start`` on, restarting the source at its end."""
        if start < 0:
            raise ValueError(f"start={start} is negative; positions count from 0.")
        if self._items is not None:
            items, n = self._items, len(self._items)
            return (items[i % n] for i in itertools.count(start))
        # the n-th sample of a long set starts far into the stream: without the period every
        # re-read would walk all the text of the samples before it (quadratic in n)
        if self._period:
            start %= self._period
        return itertools.islice(self._cycle(), start, None)

    def _cycle(self) -> Iterator[str]:
        while True:
            count = 0
            for raw in self._open():
                text = clean_sentence(raw)
                if text:
                    count += 1
                    yield text
            if not count:
                raise ValueError("The sentence source gave no sentences; pass a non-empty source.")
            self._period = count
