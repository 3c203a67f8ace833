"""BABILong samples: the facts of a bAbI question hidden at random places in background text.

A sample's *context* is background sentences with the question's facts placed, in their order,
in random gaps between sentences (several facts may share a gap); the question comes after the
context. The length of a sample (``"4k"``) is the number of tokens of its context, as in
BABILong; the question is kept apart, in the fields of lm-evaluation-harness's ``babilong``
task: ``input`` (the context), ``question`` and ``target``.

Token counts: a tokenizer may give a concatenation a different number of tokens than the sum
of its parts (BPE merges, a leading space). Here the context is the pieces (sentences and
facts) joined by single spaces, and its token ids are *defined* as the concatenation of the
ids of each piece tokenized on its own, with its leading space (the first piece without one).
So the length of the id stream is exact. For tokenizers that split words at spaces before
merging (byte-level BPE as in GPT-2, whitespace and character tokenizers, SentencePiece with a
metaspace pre-tokenizer) this is also what tokenizing the joined text gives.
"""

from __future__ import annotations

import itertools
import os
import random
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from armt.data.babi import BabiSample, generate_babi, load_babi_task, normalize_task
from armt.data.babilong_lengths import BABILONG_LENGTHS, KIB, MIB, length_name, parse_length, parse_lengths  # noqa: F401
from armt.data.babilong_prompt import BabilongPrompt, token_ids  # noqa: F401  (BabilongPrompt re-exported)
from armt.data.background import SentenceSource, Sentences, clean_sentence
from armt.data.jsonl import read_jsonl, write_jsonl  # noqa: F401  (re-exported: part of this module's API)

from ..checks import InputTypeError

OVERFLOW_POLICIES = ("warn", "error")
# samples up to this many context tokens keep their background sentences after planning,
# so text() does not stream the source twice; longer ones re-read it on demand
_KEEP_SENTENCES_TOKENS = 1 << 17
_BATCH = 128
_TAIL_SKIPS = 64
_MAX_SKIPS = 4096

Tokenizer = Callable[..., Any]


@dataclass(frozen=True)
class _Noise:
    """Which background sentences a sample uses: the first ``prefix`` from ``start`` on, then
    the ones at the positions ``extra`` (relative to ``start``) that fill the last gap."""

    start: int = 0
    prefix: int = 0
    extra: tuple[int, ...] = ()
    tokens: int = 0
    kept: tuple[str, ...] | None = None

    @property
    def count(self) -> int:
        return self.prefix + len(self.extra)


@dataclass(frozen=True, eq=False)
class BabilongSample:
    """One BABILong sample, held as a plan: its text and token ids are made on demand.

    Attributes:
        task, question, target: as in the bAbI sample.
        facts: the facts, cleaned, in their order.
        length: the asked length of the context in tokens (0: facts only).
        num_tokens: the context's exact number of tokens (the ``input_ids()`` length).
        fact_gaps: for each fact, how many background sentences come before it.
        overflow: the facts alone were longer than ``length``, so the sample is facts only.
        next_start: the position of the first background sentence this sample did not read.
    """

    task: str | None
    facts: tuple[str, ...]
    question: str
    target: str
    length: int
    num_tokens: int
    fact_gaps: tuple[int, ...]
    overflow: bool = False
    next_start: int = 0
    _noise: _Noise = field(default_factory=_Noise, repr=False)
    _tokenizer: Any = field(default=None, repr=False)
    _sentences: Sentences | None = field(default=None, repr=False)

    def _background(self) -> Iterator[str]:
        if self._noise.kept is not None:
            yield from self._noise.kept
            return
        if not self._noise.count:
            return
        assert self._sentences is not None
        extra = set(self._noise.extra)
        last = max(self._noise.extra, default=self._noise.prefix - 1)
        for i, sentence in enumerate(self._sentences.stream(self._noise.start)):
            if i < self._noise.prefix or i in extra:
                yield sentence
            if i >= last:
                return

    def iter_pieces(self) -> Iterator[str]:
        """The context as pieces whose concatenation is :meth:`text`: sentences and facts, each
        after the first with its leading space."""
        facts = iter(zip(self.fact_gaps, self.facts))
        pending = next(facts, None)
        first = True
        for done, sentence in enumerate(itertools.chain(self._background(), [None])):
            while pending is not None and pending[0] == done:
                yield pending[1] if first else " " + pending[1]
                first, pending = False, next(facts, None)
            if sentence is not None:
                yield sentence if first else " " + sentence
                first = False

    def text(self) -> str:
        """The whole context as one string (for short samples; long ones use :meth:`iter_pieces`)."""
        return "".join(self.iter_pieces())

    def iter_token_chunks(self, chunk_size: int) -> Iterator[list[int]]:
        """The context's token ids in chunks of ``chunk_size`` (the last one may be shorter).

        Only one chunk and one batch of pieces are held at a time, so a 10M-token sample
        streams in constant memory.
        """
        if isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be an int >= 1, got {chunk_size!r}.")
        buffer: list[int] = []
        total = 0
        pieces = self.iter_pieces()
        while True:
            batch = list(itertools.islice(pieces, _BATCH))
            if not batch:
                break
            for ids in token_ids(self._tokenizer, batch):
                buffer.extend(ids)
                total += len(ids)
            while len(buffer) >= chunk_size:
                yield buffer[:chunk_size]
                buffer = buffer[chunk_size:]
        if total != self.num_tokens:
            raise RuntimeError(
                f"The context came out {total} tokens long, planned {self.num_tokens}: the sentence source "
                "gave different sentences on the second read. Pass a source that repeats itself "
                "(a list, or load_books(...) with a fixed seed)."
            )
        if buffer:
            yield buffer

    def input_ids(self) -> list[int]:
        """All token ids of the context (for short samples)."""
        return [i for chunk in self.iter_token_chunks(1 << 16) for i in chunk]

    def to_record(self) -> dict[str, Any]:
        """The lm-evaluation-harness fields ``input``, ``question``, ``target`` and metadata."""
        return {"input": self.text(), "question": self.question, "target": self.target,
                "task": self.task, "length": length_name(self.length), "num_tokens": self.num_tokens}


def build_sample(sample: BabiSample, sentences: SentenceSource | None, tokenizer: Tokenizer,
                 length: str | int, *, seed: int = 0, start: int = 0,
                 on_overflow: str = "warn") -> BabilongSample:
    """Hide the facts of one bAbI question in background text of ``length`` context tokens.

    The context has at most ``length`` tokens and at least 99% of them (unless the source has
    no sentence short enough to fill the last gap). Background sentences are read from
    ``start`` on, in order; when the next one does not fit, later ones that fit are taken.
    The facts go to random gaps drawn with ``seed``.

    Args:
        sample: the bAbI question and its facts.
        sentences: background sentences (see :class:`Sentences`); may be ``None`` for 0k.
        tokenizer: a Hugging Face tokenizer, or any callable taking a list of strings and
            ``add_special_tokens=False`` and returning ``{"input_ids": [[...], ...]}``.
        length: the context length, ``"4k"`` or tokens; ``"0k"``/0 gives the facts only.
        seed: draws the gaps of the facts.
        start: position in ``sentences`` of the first background sentence.
        on_overflow: when the facts alone are longer than ``length``: ``"warn"`` makes a
            facts-only sample (longer than asked, ``overflow=True``) with a warning,
            ``"error"`` raises ``ValueError``.

    Example:
        >>> class Chars:  # one token per character
        ...     def __call__(self, texts, add_special_tokens=False):
        ...         return {"input_ids": [[ord(c) for c in t] for t in texts]}
        >>> fact = BabiSample("qa1", ("Mary went to the office.",), "Where is Mary?", "office", (0,))
        >>> s = build_sample(fact, ["It rained.", "No.", "The sun set."], Chars(), 100, seed=1)
        >>> 99 <= s.num_tokens <= 100, len(s.text()) == s.num_tokens, "Mary went to the office." in s.text()
        (True, True, True)
    """
    target = parse_length(length)
    if on_overflow not in OVERFLOW_POLICIES:
        raise ValueError(f"on_overflow={on_overflow!r} is unknown; use one of {OVERFLOW_POLICIES}.")
    facts = tuple(clean_sentence(f) for f in sample.facts)
    if not facts or not all(facts):
        raise ValueError(f"{sample.task} story {sample.story_id}: a sample needs non-empty facts, got {sample.facts!r}.")
    source = None if sentences is None else Sentences(sentences)
    if target > 0 and source is None:
        raise ValueError(f"length={length!r} needs background text; pass sentences (e.g. load_books()).")
    stream = source.stream(start) if source is not None else iter(())
    return _build(sample, facts, source, stream, start, tokenizer, target, random.Random(seed), on_overflow)


def _build(sample: BabiSample, facts: tuple[str, ...], source: Sentences | None, stream: Iterator[str],
           start: int, tokenizer: Tokenizer, target: int, rng: random.Random, on_overflow: str) -> BabilongSample:
    spaced = [len(ids) for ids in token_ids(tokenizer, [" " + f for f in facts])]
    # the first piece goes without its leading space, which can change its token count
    fact_first = len(token_ids(tokenizer, [facts[0]])[0]) - spaced[0]
    facts_only = sum(spaced) + fact_first
    consumed = 0

    def make(noise: _Noise, gaps: tuple[int, ...], tokens: int, overflow: bool = False) -> BabilongSample:
        return BabilongSample(sample.task, facts, clean_sentence(sample.question), sample.answer, target, tokens, gaps,
                              overflow, start + consumed, noise, tokenizer, source)

    if facts_only > target:
        if target > 0:
            message = (f"{sample.task} story {sample.story_id} question {sample.question_id}: the facts alone take "
                       f"{facts_only} tokens, more than length {target}")
            if on_overflow == "error":
                raise ValueError(message + "; use a longer length, or on_overflow='warn' for a facts-only sample.")
            warnings.warn(message + "; the sample holds the facts only.", stacklevel=3)
        return make(_Noise(start), (0,) * len(facts), facts_only, overflow=target > 0)

    remaining = target - sum(spaced) - max(0, fact_first)
    tolerance = target // 100
    # past one whole cycle of a list nothing new can fit
    max_skips = min(_MAX_SKIPS, source.size) if source is not None and source.size else _MAX_SKIPS
    prefix, extra, kept = 0, [], []
    noise_tokens, noise_first, skips, tail = 0, 0, 0, False
    position = 0
    while remaining > 0 and skips < max_skips and not (tail and skips >= _TAIL_SKIPS and remaining <= tolerance):
        batch = list(itertools.islice(stream, _BATCH))
        if not batch:
            break
        # the stream has moved past the whole batch, used or not
        consumed += len(batch)
        counts = token_ids(tokenizer, [" " + s for s in batch])
        for sentence, ids in zip(batch, counts):
            cost = len(ids)
            if prefix + len(extra) == 0:
                first = len(token_ids(tokenizer, [sentence])[0]) - cost
                # reserve room for whichever of the first fact and first sentence opens the context
                cost += max(0, max(0, first) - max(0, fact_first))
            if cost <= remaining:
                if prefix + len(extra) == 0:
                    noise_first = first
                remaining -= cost
                noise_tokens += len(ids)
                if tail:
                    extra.append(position)
                else:
                    prefix += 1
                if target <= _KEEP_SENTENCES_TOKENS:
                    kept.append(sentence)
                skips = 0
            else:
                tail, skips = True, skips + 1
            position += 1
            if remaining == 0 or skips >= max_skips or (skips >= _TAIL_SKIPS and remaining <= tolerance):
                break
    count = prefix + len(extra)
    gaps = tuple(sorted(rng.randint(0, count) for _ in facts))
    opens_with_fact = count == 0 or gaps[0] == 0
    tokens = sum(spaced) + noise_tokens + (fact_first if opens_with_fact else noise_first)
    noise = _Noise(start, prefix, tuple(extra), noise_tokens,
                   tuple(kept) if target <= _KEEP_SENTENCES_TOKENS else None)
    return make(noise, gaps, tokens)


def _babi_pool(task: str, babi_source: Any, split: str, seed: int, n: int,
               babi_variant: str = "en") -> Iterator[BabiSample]:
    if isinstance(babi_source, str) and babi_source == "builtin":
        # a generous pool: samples whose facts overflow may be skipped
        yield from generate_babi(task, 4 * n + 16, seed)
        return
    if babi_source is None or isinstance(babi_source, (str, os.PathLike)):
        yield from load_babi_task(task, split, root=babi_source, variant=babi_variant)
        return
    for item in babi_source:
        if not isinstance(item, BabiSample):
            raise InputTypeError(f"babi_source holds {type(item).__name__}; pass BabiSample objects, a folder, "
                            "'builtin' or None.")
        if item.task in (None, task):
            yield item


def iter_babilong(task: str | int, length: str | int, n: int, tokenizer: Tokenizer,
                  sentences: SentenceSource | None, seed: int = 0, babi_source: Any = None, *,
                  split: str = "test", on_overflow: str = "warn", babi_variant: str = "en") -> Iterator[BabilongSample]:
    """Lazy version of :func:`make_dataset`: yields :class:`BabilongSample` plans, which stream
    their tokens with ``iter_token_chunks`` (for lengths too long to hold as text).
    ``babi_variant`` picks the bAbI folder's ``en`` (1,000 training questions per task) or
    ``en-10k`` (10,000) files."""
    task = normalize_task(task)
    target = parse_length(length)
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}.")
    policies = OVERFLOW_POLICIES + ("skip",)
    if on_overflow not in policies:
        raise ValueError(f"on_overflow={on_overflow!r} is unknown; use one of {policies}.")
    source = None if sentences is None else Sentences(sentences)
    if target > 0 and source is None:
        raise ValueError(f"length={length!r} needs background text; pass sentences (e.g. load_books()).")
    # each seed starts at its own place in the background text; samples then follow each other
    start = random.Random(f"armt-babilong-start-{seed}").randrange(10_000)
    stream = source.stream(start) if source is not None else iter(())
    made = 0
    for index, babi in enumerate(_babi_pool(task, babi_source, split, seed, n, babi_variant)):
        if made == n:
            return
        facts = tuple(clean_sentence(f) for f in babi.facts)
        rng = random.Random(f"armt-babilong-{seed}-{index}")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sample = _build(babi, facts, source, stream, start, tokenizer, target, rng,
                            "warn" if on_overflow == "skip" else on_overflow)
        start = sample.next_start
        if sample.overflow and on_overflow == "skip":
            continue
        for w in caught:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        made += 1
        yield sample
    if made < n:
        raise ValueError(f"Only {made} {task} samples of length {length_name(target)} could be made, asked "
                         f"n={n}; use a smaller n, a longer length, or a bigger babi_source.")


def make_dataset(task: str | int, length: str | int, n: int, tokenizer: Tokenizer,
                 sentences: SentenceSource | None, seed: int = 0, babi_source: Any = None, *,
                 split: str = "test", on_overflow: str = "warn") -> list[dict[str, Any]]:
    """``n`` BABILong records of one task and length, as dicts ready for JSONL.

    Records have the lm-evaluation-harness fields ``input`` (the context), ``question`` and
    ``target``, and ``task``, ``length`` (the name, e.g. ``"4k"``) and ``num_tokens``. The bAbI
    questions are taken in their file order; consecutive samples use consecutive background
    sentences, starting at a place chosen by ``seed``.

    Args:
        task: ``"qa1"`` .. ``"qa20"``.
        length: ``"0k"`` .. ``"10M"`` or tokens; see :func:`parse_length`.
        n: number of records.
        tokenizer: measures the lengths (see :func:`build_sample`).
        sentences: background sentences (see :class:`Sentences`); ``None`` only for 0k.
        seed: chooses where the background starts and the gaps of the facts.
        babi_source: the bAbI questions: ``None`` (the files under ``$ARMT_BABI_DIR``), a
            folder holding ``en/``, ``"builtin"`` (:func:`armt.data.babi.generate_babi`, qa1-qa5)
            or a sequence of :class:`BabiSample`.
        split: ``"test"`` or ``"train"`` when reading the bAbI files.
        on_overflow: ``"warn"``, ``"error"`` (see :func:`build_sample`) or ``"skip"`` (leave out
            questions whose facts alone are longer than ``length`` and take the next ones).

    Example:
        >>> class Words:  # one token per word
        ...     def __call__(self, texts, add_special_tokens=False):
        ...         return {"input_ids": [[0] * len(t.split()) for t in texts]}
        >>> records = make_dataset("qa1", 60, 2, Words(), ["It is late and the sun is low.", "Rain.", "So it goes."],
        ...                        babi_source="builtin")
        >>> [(r["num_tokens"], r["length"], r["question"][:8]) for r in records]
        [(60, '60', 'Where is'), (60, '60', 'Where is')]
    """
    return [s.to_record() for s in iter_babilong(task, length, n, tokenizer, sentences, seed, babi_source,
                                                 split=split, on_overflow=on_overflow)]
