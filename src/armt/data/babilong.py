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
import json
import os
import random
import re
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from armt.data.babi import BabiSample, generate_babi, load_babi_task, normalize_task

KIB = 1024
MIB = 1024 * 1024
BABILONG_LENGTHS = ("0k", "1k", "2k", "4k", "8k", "16k", "32k", "64k", "128k", "256k", "512k", "1M", "10M")
OVERFLOW_POLICIES = ("warn", "error")
# samples up to this many context tokens keep their background sentences after planning,
# so text() does not stream the source twice; longer ones re-read it on demand
_KEEP_SENTENCES_TOKENS = 1 << 17
_BATCH = 128
_TAIL_SKIPS = 64
_MAX_SKIPS = 4096

Tokenizer = Callable[..., Any]
# what Sentences accepts: a list of sentences, a BookSource, or a function returning an iterator
SentenceSource = Any


def parse_length(spec: str | int) -> int:
    """Tokens of a BABILong length name: ``k`` is 1024 tokens and ``M`` is 1024 * 1024.

    ``"0k"`` is 0, which means "facts only" (no background text). Plain numbers are tokens.

    Example:
        >>> parse_length("16k"), parse_length("1M"), parse_length("0k"), parse_length(4096)
        (16384, 1048576, 0, 4096)
    """
    if isinstance(spec, bool):
        raise TypeError(f"length must be a name like '4k' or a token count, got {spec!r}.")
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
    """The short name of a length: 16384 -> ``"16k"``, 1048576 -> ``"1M"``, 1000 -> ``"1000"``.

    Example:
        >>> length_name(0), length_name(16384), length_name(10 * 1024 * 1024), length_name("4096")
        ('0k', '16k', '10M', '4k')
    """
    tokens = parse_length(tokens)
    if tokens and tokens % MIB == 0:
        return f"{tokens // MIB}M"
    if tokens % KIB == 0:
        return f"{tokens // KIB}k"
    return str(tokens)


def _clean(text: str) -> str:
    # one space between words, so that pieces joined by one space tokenize as the pieces do
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
            raise TypeError("The sentence source is one string; pass a list of sentences "
                            "(armt.data.books.split_sentences(text)) or load_books(...).")
        if isinstance(source, (list, tuple)):
            self._items = [s for s in (_clean(x) for x in source) if s]
            if not self._items:
                raise ValueError("The sentence source is empty; pass at least one non-empty sentence.")
            self._open = lambda: self._items or ()
        elif callable(getattr(source, "sentences", None)):
            self._open = source.sentences
        elif callable(source):
            self._open = source
        elif isinstance(source, Iterator):
            raise TypeError(
                "The sentence source is a one-shot iterator; pass a list, a BookSource "
                "(armt.data.books.load_books) or a function returning a fresh iterator."
            )
        elif isinstance(source, Iterable):
            self._open = lambda: source
        else:
            raise TypeError(f"Cannot read sentences from {type(source).__name__}; pass a list of sentences "
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
                text = _clean(raw)
                if text:
                    count += 1
                    yield text
            if not count:
                raise ValueError("The sentence source gave no sentences; pass a non-empty source.")
            self._period = count


def _token_ids(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    return [list(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


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
            for ids in _token_ids(self._tokenizer, batch):
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
    facts = tuple(_clean(f) for f in sample.facts)
    if not facts or not all(facts):
        raise ValueError(f"{sample.task} story {sample.story_id}: a sample needs non-empty facts, got {sample.facts!r}.")
    source = None if sentences is None else Sentences(sentences)
    if target > 0 and source is None:
        raise ValueError(f"length={length!r} needs background text; pass sentences (e.g. load_books()).")
    stream = source.stream(start) if source is not None else iter(())
    return _build(sample, facts, source, stream, start, tokenizer, target, random.Random(seed), on_overflow)


def _build(sample: BabiSample, facts: tuple[str, ...], source: Sentences | None, stream: Iterator[str],
           start: int, tokenizer: Tokenizer, target: int, rng: random.Random, on_overflow: str) -> BabilongSample:
    spaced = [len(ids) for ids in _token_ids(tokenizer, [" " + f for f in facts])]
    # the first piece goes without its leading space, which can change its token count
    fact_first = len(_token_ids(tokenizer, [facts[0]])[0]) - spaced[0]
    facts_only = sum(spaced) + fact_first
    consumed = 0

    def make(noise: _Noise, gaps: tuple[int, ...], tokens: int, overflow: bool = False) -> BabilongSample:
        return BabilongSample(sample.task, facts, _clean(sample.question), sample.answer, target, tokens, gaps,
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
        counts = _token_ids(tokenizer, [" " + s for s in batch])
        for sentence, ids in zip(batch, counts):
            cost = len(ids)
            if prefix + len(extra) == 0:
                first = len(_token_ids(tokenizer, [sentence])[0]) - cost
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


def _babi_pool(task: str, babi_source: Any, split: str, seed: int, n: int) -> Iterator[BabiSample]:
    if isinstance(babi_source, str) and babi_source == "builtin":
        # a generous pool: samples whose facts overflow may be skipped
        yield from generate_babi(task, 4 * n + 16, seed)
        return
    if babi_source is None or isinstance(babi_source, (str, os.PathLike)):
        yield from load_babi_task(task, split, root=babi_source)
        return
    for item in babi_source:
        if not isinstance(item, BabiSample):
            raise TypeError(f"babi_source holds {type(item).__name__}; pass BabiSample objects, a folder, "
                            "'builtin' or None.")
        if item.task in (None, task):
            yield item


def iter_babilong(task: str | int, length: str | int, n: int, tokenizer: Tokenizer,
                  sentences: SentenceSource | None, seed: int = 0, babi_source: Any = None, *,
                  split: str = "test", on_overflow: str = "warn") -> Iterator[BabilongSample]:
    """Lazy version of :func:`make_dataset`: yields :class:`BabilongSample` plans, which stream
    their tokens with ``iter_token_chunks`` (for lengths too long to hold as text)."""
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
    for index, babi in enumerate(_babi_pool(task, babi_source, split, seed, n)):
        if made == n:
            return
        facts = tuple(_clean(f) for f in babi.facts)
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


@dataclass(frozen=True)
class BabilongPrompt:
    """How a BABILong sample becomes tokens, in evaluation and in training alike.

    Training sequences are ``[bos][context][query][answer]``; evaluation generates after
    ``[bos][context][query]``. The context ids are the sample's own, the query is
    ``question_prefix + question + answer_prefix``, the answer ``target_prefix + target`` and
    EOS, each tokenized on its own: ``...<context>\\nWhere is Mary?\\nAnswer: kitchen<eos>``.

    Args:
        question_prefix: text between the context and the question.
        answer_prefix: text after the question, where generation starts: plain text that any
            tokenizer encodes and a pretrained model reads as a cue. The official ARMT recipe
            puts the first token of ``"GEN"`` there (``answer_prefix="GEN", target_prefix=""``).
        target_prefix: text before the target (a space: ``"Answer: kitchen"`` as in prose).
        add_bos: start with the BOS token; ``None`` does as the tokenizer does with
            ``add_special_tokens=True`` (Llama adds it, GPT-2 does not).
        add_eos: end training sequences with EOS, so the model learns to stop.

    Example:
        >>> class Chars:  # one token per character, BOS 1 never added
        ...     bos_token_id, eos_token_id = 1, 2
        ...     def __call__(self, texts, add_special_tokens=False):
        ...         return {"input_ids": [[ord(c) for c in t] for t in texts]}
        >>> prompt = BabilongPrompt()
        >>> prompt.query_text("Where is Mary?")
        '\\nWhere is Mary?\\nAnswer:'
        >>> ids, start = prompt.example_ids(Chars(), [ord(c) for c in "Mary went home."], "Where is Mary?", "home")
        >>> "".join(map(chr, ids[start:-1])), ids[-1]
        (' home', 2)
        >>> prompt.cut_answer(" home\\nWhere is John?")
        'home'
    """

    question_prefix: str = "\n"
    answer_prefix: str = "\nAnswer:"
    target_prefix: str = " "
    add_bos: bool | None = None
    add_eos: bool = True

    def __post_init__(self) -> None:
        for name in ("question_prefix", "answer_prefix", "target_prefix"):
            if not isinstance(getattr(self, name), str):
                raise TypeError(f"{name} must be a string, got {getattr(self, name)!r}; use '' for none.")
        if self.add_bos not in (None, True, False) or self.add_eos not in (True, False):
            raise TypeError(f"add_bos must be None, True or False and add_eos True or False, "
                            f"got add_bos={self.add_bos!r}, add_eos={self.add_eos!r}.")

    def query_text(self, question: str) -> str:
        """The text that follows the context: the question between its prefixes."""
        return f"{self.question_prefix}{_clean(question)}{self.answer_prefix}"

    def prefix_ids(self, tokenizer: Tokenizer) -> list[int]:
        """``[bos]`` or ``[]``: what comes before the context (see ``add_bos``)."""
        bos = getattr(tokenizer, "bos_token_id", None)
        if self.add_bos is False or (bos is None and self.add_bos is None):
            return []
        if bos is None:
            raise ValueError("add_bos=True but the tokenizer has no BOS token; use add_bos=None or False.")
        if self.add_bos is None:
            plain = tokenizer(["x"], add_special_tokens=False)["input_ids"][0]
            special = tokenizer(["x"], add_special_tokens=True)["input_ids"][0]
            return [bos] if special[:1] == [bos] and plain[:1] != [bos] else []
        return [bos]

    def query_ids(self, tokenizer: Tokenizer, question: str) -> list[int]:
        """Token ids of :meth:`query_text`; generation starts after them."""
        return _token_ids(tokenizer, [self.query_text(question)])[0]

    def answer_ids(self, tokenizer: Tokenizer, target: str) -> list[int]:
        """Token ids of the answer in a training sequence (EOS last with ``add_eos``)."""
        ids = _token_ids(tokenizer, [f"{self.target_prefix}{target.strip()}"])[0]
        eos = getattr(tokenizer, "eos_token_id", None)
        if self.add_eos and eos is None:
            raise ValueError("add_eos=True but the tokenizer has no EOS token; set one or use add_eos=False.")
        return ids + [eos] if self.add_eos else ids

    def example_ids(self, tokenizer: Tokenizer, context_ids: Sequence[int], question: str,
                    target: str) -> tuple[list[int], int]:
        """A whole training sequence and the position of its first answer token (the loss
        goes on the answer: ``labels_mask[start - 1:-1]`` in the official convention)."""
        head = self.prefix_ids(tokenizer) + list(context_ids) + self.query_ids(tokenizer, question)
        return head + self.answer_ids(tokenizer, target), len(head)

    @staticmethod
    def cut_answer(text: str) -> str:
        """The generated answer up to its first line break (leading blanks dropped)."""
        return text.lstrip().split("\n", 1)[0].strip()


def write_jsonl(records: Iterable[dict[str, Any]], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write one JSON object per line; refuses to replace an existing file unless ``overwrite``.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "qa1_0k.jsonl"
        >>> write_jsonl([{"input": "a", "question": "b", "target": "c"}], out).read_text()
        '{"input": "a", "question": "b", "target": "c"}\\n'
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite on the command line) to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSONL file written by :func:`write_jsonl`."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
