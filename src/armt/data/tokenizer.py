"""Tokenizers: load a pretrained one, or train a small byte-level BPE when offline.

Byte-level BPE can encode any string, so a tokenizer trained on a few books still round-trips
text it has never seen; that is what lets experiments run with no Hub access at all.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from armt.data.books import BookSource, iter_sentences, looks_like_path

from ..checks import InputTypeError

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<|pad|>"
SPECIAL_TOKENS = (EOS_TOKEN, PAD_TOKEN)
BYTE_ALPHABET = 256


def load_tokenizer(name_or_path: str | os.PathLike[str]) -> Any:
    """Load a pretrained tokenizer with ``transformers.AutoTokenizer``.

    Args:
        name_or_path: a Hub name such as ``"gpt2"`` (needs the network or a local cache) or a
            folder written by ``save_pretrained``.

    Raises:
        OSError: when it cannot be found; the message suggests :func:`train_bpe_tokenizer`.

    Example:
        >>> tok = train_bpe_tokenizer(["a b c. " * 50], vocab_size=300, min_frequency=1)
        >>> import tempfile
        >>> with tempfile.TemporaryDirectory() as d:
        ...     _ = tok.save_pretrained(d)
        ...     load_tokenizer(d).encode("a b") == tok.encode("a b")
        True
    """
    import transformers

    text = os.fspath(name_or_path)
    is_path = isinstance(name_or_path, os.PathLike) or looks_like_path(text) or Path(text).exists()
    if is_path and not Path(text).expanduser().exists():
        raise OSError(
            f"name_or_path={text!r} looks like a path but does not exist; pass a folder written by "
            "save_pretrained, a Hub name, or train one with armt.data.tokenizer.train_bpe_tokenizer."
        )
    try:
        return transformers.AutoTokenizer.from_pretrained(str(Path(text).expanduser()) if is_path else text)
    except Exception as err:
        reason = " ".join(str(err).split())
        raise OSError(
            f"Could not load tokenizer name_or_path={text!r} ({type(err).__name__}: {reason}). Offline or "
            "without a cached copy, train one instead with armt.data.tokenizer.train_bpe_tokenizer "
            "(or get_tokenizer(None, train_texts=...))."
        ) from err


def train_bpe_tokenizer(texts: Iterable[str], vocab_size: int = 4096,
                        save_dir: str | os.PathLike[str] | None = None, *, min_frequency: int = 2) -> Any:
    """Train a GPT-2-style byte-level BPE tokenizer on ``texts``.

    The result is a ``transformers.PreTrainedTokenizerFast`` whose ``decode(encode(x)) == x``
    for any string ``x``. ``<|endoftext|>`` is its bos, eos and unk token and ``<|pad|>`` its
    pad token; no special tokens are added when encoding.

    Args:
        texts: training text, any number of strings of any length.
        vocab_size: size of the vocabulary, including the 256 byte tokens and the 2 special ones.
        save_dir: when given, the tokenizer is saved there with ``save_pretrained`` so that
            ``AutoTokenizer.from_pretrained(save_dir)`` loads it again.
        min_frequency: pairs seen fewer times than this are not merged.

    Example:
        >>> tok = train_bpe_tokenizer(["the cat sat on the mat. " * 20], vocab_size=300)
        >>> tok.decode(tok.encode("The dog sat.  Ünïcode!"))
        'The dog sat.  Ünïcode!'
        >>> tok.eos_token, tok.pad_token
        ('<|endoftext|>', '<|pad|>')
    """
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    minimum = BYTE_ALPHABET + len(SPECIAL_TOKENS)
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise InputTypeError(f"vocab_size must be an int, got {type(vocab_size).__name__} ({vocab_size!r}).")
    if vocab_size < minimum:
        raise ValueError(
            f"vocab_size={vocab_size} is too small; byte-level BPE needs {BYTE_ALPHABET} byte tokens "
            f"plus {len(SPECIAL_TOKENS)} special tokens, so use vocab_size >= {minimum} (e.g. 4096)."
        )
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 1:
        raise ValueError(f"min_frequency must be an int >= 1, got {min_frequency!r}.")
    if isinstance(texts, str):
        raise InputTypeError("texts must be an iterable of strings, not one string; wrap it in a list.")

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    # trim_offsets=False keeps character offsets covering the leading space of each token.
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=list(SPECIAL_TOKENS),
        # Every byte stays in the vocabulary even if the training text never uses it.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_nonempty(texts), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=EOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        # The default clean-up would turn " ." into "." and break the round trip.
        clean_up_tokenization_spaces=False,
    )
    if save_dir is not None:
        Path(save_dir).mkdir(parents=True, exist_ok=True)
        tokenizer.save_pretrained(os.fspath(save_dir))
    return tokenizer


def _nonempty(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        if not isinstance(text, str):
            raise InputTypeError(f"texts must hold strings, got {type(text).__name__} ({text!r:.60}).")
        if text:
            yield text


def _book_texts(source: BookSource, max_chars: int | None, truncated: list[bool]) -> Iterator[str]:
    # One string per sentence keeps each training item small however long the book is.
    used = 0
    for book in source.books():
        for sentence in iter_sentences(book.text):
            if max_chars is not None and used >= max_chars:
                truncated.append(True)
                return
            used += len(sentence) + 1
            yield sentence + " "


def get_tokenizer(name_or_path: str | os.PathLike[str] | None,
                  train_texts: BookSource | Iterable[str] | None = None, vocab_size: int = 4096,
                  save_dir: str | os.PathLike[str] | None = None, *, min_frequency: int = 2,
                  max_train_chars: int | None = 5_000_000) -> tuple[Any, str]:
    """Load ``name_or_path``, or train a byte-level BPE tokenizer when it is ``None`` or unloadable.

    Args:
        name_or_path: a pretrained tokenizer to load; ``None`` trains one.
        train_texts: a :class:`~armt.data.books.BookSource` (its sentences are used and its
            description is reported) or any iterable of strings; needed to train.
        vocab_size: vocabulary of a trained tokenizer.
        save_dir: where a trained tokenizer is saved (``None``: not saved).
        min_frequency: see :func:`train_bpe_tokenizer`.
        max_train_chars: train on at most about this many characters of a ``BookSource``
            (``None``: all of it); keeps training to seconds on large sources.

    Returns:
        ``(tokenizer, description)``, where the description says what was used, e.g.
        ``"loaded gpt2"`` or ``"trained byte-level BPE, vocab 4096, on local folder ..."``.

    Example:
        >>> from armt.data.books import builtin_books
        >>> tok, how = get_tokenizer(None, builtin_books(num_books=1, chars_per_book=20_000), vocab_size=400)
        >>> how
        'trained byte-level BPE, vocab 400, on built-in generated text (no books given; seed 0, 1 books of ~20,000 characters), not saved'
    """
    failure = ""
    if name_or_path is not None:
        try:
            return load_tokenizer(name_or_path), f"loaded {os.fspath(name_or_path)}"
        except OSError:
            if train_texts is None:
                raise
            failure = f"could not load {os.fspath(name_or_path)!r}, so "
    if train_texts is None:
        raise ValueError(
            "get_tokenizer needs train_texts (a BookSource or strings) when name_or_path is None; "
            "pass e.g. train_texts=armt.data.books.load_books(None)."
        )
    truncated: list[bool] = []
    if isinstance(train_texts, BookSource):
        texts: Iterable[str] = _book_texts(train_texts, max_train_chars, truncated)
        origin = train_texts.description
    else:
        texts, origin = train_texts, "given texts"
    tokenizer = train_bpe_tokenizer(texts, vocab_size, save_dir, min_frequency=min_frequency)
    if truncated:
        origin += f", first ~{max_train_chars:,} characters"
    # A small corpus can run out of pairs to merge before reaching vocab_size.
    vocab = f"vocab {len(tokenizer)}" + ("" if len(tokenizer) == vocab_size else f" (asked {vocab_size})")
    where = f"saved to {os.fspath(save_dir)}" if save_dir is not None else "not saved"
    return tokenizer, f"{failure}trained byte-level BPE, {vocab}, on {origin}, {where}"
