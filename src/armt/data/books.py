"""Where long text comes from: a folder of .txt books, a Hugging Face dataset, or built-in prose.

Every source is a :class:`BookSource`: a re-iterable, lazy stream of :class:`Book` values with a
``description`` that says which source was used, so that logs and result tables can name it.
Sentence splitting is rule-based (no downloads) because BABILong hides facts between sentences
of background text and must run offline.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

from ..checks import InputTypeError

PathLike = Union[str, "os.PathLike[str]"]

KINDS = ("folder", "hf", "builtin")

# Fields that commonly hold a book's title in Hugging Face datasets (pg19 uses short_book_title).
_TITLE_FIELDS = ("short_book_title", "title", "book_title", "name", "id")


@dataclass(frozen=True)
class Book:
    """One book: a title (unique within a folder source) and its full text."""

    title: str
    text: str


class BookSource:
    """A re-iterable, deterministic stream of books with a human-readable description.

    Build one with :func:`load_books` rather than directly.

    Args:
        kind: ``"folder"`` (local .txt files), ``"hf"`` (a Hugging Face dataset, streamed)
            or ``"builtin"`` (generated prose).
        description: which source this is, for logs, e.g. ``"local folder /x (10 .txt files)"``.
        factory: called afresh by every :meth:`books` call; returns an iterator of books.
        titles: the titles in order when they are known without reading the books.

    Example:
        >>> src = load_books("builtin", seed=3)
        >>> src.kind
        'builtin'
        >>> next(src.books()).title == next(src.books()).title
        True
    """

    def __init__(self, kind: str, description: str, factory: Callable[[], Iterator[Book]],
                 titles: Sequence[str] | None = None) -> None:
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r} is unknown; use one of {KINDS}.")
        self.kind = kind
        self.description = description
        self._factory = factory
        self._titles = list(titles) if titles is not None else None

    def books(self) -> Iterator[Book]:
        """Iterate over the books in a fixed order; each call starts again from the first."""
        return iter(self._factory())

    def titles(self) -> list[str]:
        """Titles of all books in order (reads every book for a streamed dataset)."""
        if self._titles is None:
            self._titles = [book.title for book in self.books()]
        return list(self._titles)

    def sentences(self) -> Iterator[str]:
        """Every sentence of every book in order (lazy, no cycling)."""
        for book in self.books():
            yield from iter_sentences(book.text)

    def __repr__(self) -> str:
        return f"BookSource({self.description})"


def load_books(source: PathLike | None = None, *, split: str = "train", text_field: str = "text",
               seed: int = 0, data_files: str | Sequence[str] | None = None,
               dataset_kwargs: Mapping[str, Any] | None = None) -> BookSource:
    """Open a source of books: built-in prose, a folder of .txt files, one .txt file or a dataset.

    Args:
        source: ``None`` or ``"builtin"`` for generated prose (no data needed); an existing
            directory (every ``*.txt`` in it, sorted by name); an existing ``.txt`` file (one
            book); anything else is a Hugging Face dataset name, e.g. ``"pg19"``, streamed. A
            missing path that is clearly a path (see :func:`looks_like_path`) is an error
            rather than a Hub lookup.
        split: dataset split, for a Hugging Face dataset only.
        text_field: the dataset column holding the book text.
        seed: seed of the built-in generator.
        data_files: passed to ``datasets.load_dataset``, e.g. ``load_books("text",
            data_files="books/*.txt", dataset_kwargs={"sample_by": "document"})``.
        dataset_kwargs: further keyword arguments for ``datasets.load_dataset``.

    Gutenberg license headers and footers are removed from local files
    (:func:`strip_gutenberg_boilerplate`); dataset texts are used as they are.

    Example:
        >>> load_books(None, seed=1).description
        'built-in generated text (no books given; seed 1, 20 books of ~200,000 characters)'
    """
    if source is None or (isinstance(source, str) and source == "builtin"):
        return builtin_books(seed=seed)
    if not isinstance(source, (str, os.PathLike)):
        raise InputTypeError(f"source must be a path, a dataset name or None, got {type(source).__name__} ({source!r}).")
    text = os.fspath(source)
    path = Path(text).expanduser()
    if path.is_dir():
        return _folder_source(path)
    if path.is_file():
        return _file_source(path)
    if isinstance(source, os.PathLike) or looks_like_path(text) or text.endswith(".txt"):
        raise FileNotFoundError(
            f"source={text!r} looks like a path but does not exist; pass an existing folder of .txt "
            "files, one .txt file, a Hugging Face dataset name, or None for built-in text."
        )
    return _hf_source(text, split=split, text_field=text_field, data_files=data_files,
                      dataset_kwargs=dataset_kwargs)


def looks_like_path(text: str) -> bool:
    """Whether ``text`` is meant as a local path rather than a Hub name such as ``"org/name"``.

    Absolute paths, paths starting with ``.`` or ``~``, and paths with more than one separator
    count; a single ``/`` is left to the Hub, where ``owner/name`` is the usual form.

    Example:
        >>> [looks_like_path(t) for t in ("pg19", "deepmind/pg19", "./books", "/data/books", "a/b/c")]
        [False, False, True, True, True]
    """
    separators = {os.sep, "/"} | ({os.altsep} if os.altsep else set())
    return (os.path.isabs(text) or text.startswith((".", "~"))
            or sum(text.count(sep) for sep in separators) > 1)


def read_text_file(path: PathLike) -> str:
    """Read a text file as UTF-8, falling back to Latin-1 (old Gutenberg files are ISO-8859-1)."""
    raw = Path(path).read_bytes()
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")
    # \x1a is the DOS end-of-file mark some early etexts end with.
    return text.replace("\r\n", "\n").replace("\r", "\n").replace("\x1a", "")


def _folder_source(folder: Path) -> BookSource:
    files = sorted(p for p in folder.iterdir() if p.suffix == ".txt" and p.is_file())
    if not files:
        raise FileNotFoundError(
            f"source={str(folder)!r} is a folder without .txt files; put one book per .txt file "
            "there, or pass None for built-in text."
        )

    def factory() -> Iterator[Book]:
        for p in files:
            yield Book(p.stem, strip_gutenberg_boilerplate(read_text_file(p)))

    return BookSource("folder", f"local folder {folder} ({len(files)} .txt files)", factory,
                      titles=[p.stem for p in files])


def _file_source(file: Path) -> BookSource:
    def factory() -> Iterator[Book]:
        yield Book(file.stem, strip_gutenberg_boilerplate(read_text_file(file)))

    return BookSource("folder", f"local file {file} (1 book)", factory, titles=[file.stem])


def _hf_source(name: str, *, split: str, text_field: str, data_files, dataset_kwargs) -> BookSource:
    kwargs = dict(dataset_kwargs or {})
    if data_files is not None:
        kwargs["data_files"] = data_files
    try:
        import datasets

        dataset = datasets.load_dataset(name, split=split, streaming=True, **kwargs)
    except Exception as err:
        reason = " ".join(str(err).split())
        raise ValueError(
            f"source={name!r} is neither a local folder or .txt file nor a loadable Hugging Face "
            f"dataset (split={split!r}): {type(err).__name__}: {reason}. Offline, pass a folder of .txt "
            "files (one book per file), or None for built-in text."
        ) from err
    features = getattr(dataset, "features", None)
    if features is not None and text_field not in features:
        raise ValueError(
            f"text_field={text_field!r} is not a column of dataset {name!r}; its columns are "
            f"{sorted(features)}. Pass text_field= with the column that holds the book text."
        )

    def factory() -> Iterator[Book]:
        for index, row in enumerate(dataset):
            if text_field not in row:
                raise ValueError(
                    f"text_field={text_field!r} is not a column of dataset {name!r}; its columns "
                    f"are {sorted(row)}. Pass text_field= with the column that holds the book text."
                )
            title = next((str(row[f]) for f in _TITLE_FIELDS if row.get(f) not in (None, "")),
                         f"{name}[{index}]")
            yield Book(title, row[text_field])

    files = f", data_files {data_files}" if data_files is not None else ""
    return BookSource("hf", f"Hugging Face dataset {name} (split {split}{files})", factory)


# ---------------------------------------------------------------- Gutenberg boilerplate

_HEADER_END = re.compile(
    r"^[ \t]*(\*{3}[ \t]*START OF (THE|THIS) PROJECT GUTENBERG.*"
    r"|\*END\*?[ \t]*THE SMALL PRINT.*)$",
    re.IGNORECASE | re.MULTILINE,
)
_FOOTER_START = re.compile(
    r"^[ \t]*(\*{3}[ \t]*END OF (THE|THIS) PROJECT GUTENBERG"
    r"|End of (the |this )?Project Gutenberg"
    r"|\**[ \t]*START\**[ \t]*THE SMALL PRINT"
    r"|\*END\*?[ \t]*THE SMALL PRINT)",
    re.IGNORECASE | re.MULTILINE,
)
# Short credit/notice paragraphs that old files keep just after the license header.
_NOTICE = re.compile(r"project gutenberg|\be-?text|\be-?book|produced by|prepared by|transcribed by",
                     re.IGNORECASE)


def strip_gutenberg_boilerplate(text: str) -> str:
    """Keep the book between Project Gutenberg's license header and footer.

    Understands the current ``*** START OF THE PROJECT GUTENBERG EBOOK ... ***`` /
    ``*** END OF ...`` markers and the older ``*END*THE SMALL PRINT! ...`` header with an
    ``End of the Project Gutenberg Etext of ...`` footer. Where a marker is found, short notice
    paragraphs right after the header (release notes, "Produced by ...") are dropped too.
    Text without any marker is returned unchanged.

    Args:
        text: the whole file.

    Example:
        >>> raw = "Header\\n*** START OF THE PROJECT GUTENBERG EBOOK X ***\\nBody.\\n*** END OF THE PROJECT GUTENBERG EBOOK X ***\\nLicense"
        >>> strip_gutenberg_boilerplate(raw)
        'Body.'
        >>> strip_gutenberg_boilerplate("No markers here.")
        'No markers here.'
    """
    half = len(text) // 2
    # A small-print block also closes some files, so a header counts only in the first half.
    headers = [m for m in _HEADER_END.finditer(text) if m.start() < half]
    start = headers[-1].end() if headers else 0
    footer = _FOOTER_START.search(text, start if headers else half)
    end = footer.start() if footer is not None else len(text)
    if not headers and footer is None:
        return text
    body = text[start:end]
    paragraphs = re.split(r"\n[ \t]*\n", body.strip("\n"))
    kept = [p for i, p in enumerate(paragraphs)
            if not (i < 8 and p.strip() and p.count("\n") < 3 and _NOTICE.search(p))]
    return "\n\n".join(kept).strip()


# ---------------------------------------------------------------- sentences

# Words that end with a period without ending the sentence (compared lower-case, no period).
ABBREVIATIONS = frozenset((
    "mr", "mrs", "ms", "messrs", "mme", "mlle", "dr", "st", "sr", "jr", "prof", "rev", "hon",
    "gen", "col", "capt", "lt", "sgt", "maj", "cmdr", "adm", "gov", "pres", "esq",
    "mt", "ft", "ave", "blvd", "rd", "vs", "viz", "cf", "ibid", "al", "approx", "dept", "univ",
    "vol", "ch", "chap", "sec", "fig", "pp", "jan", "feb", "apr", "aug",
    "sept", "sep", "oct", "nov", "dec", "e.g", "i.e", "a.m", "p.m",
))
# A boundary candidate: terminal punctuation, optional closing quotes/brackets, then whitespace.
_BOUNDARY = re.compile(r"[.!?]+[\"'\u201d\u2019)\]]*(?=\s)")
_PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")


def iter_sentences(text: str) -> Iterator[str]:
    """Split ``text`` into sentences lazily; see :func:`split_sentences`."""
    pos = 0
    for brk in _PARAGRAPH.finditer(text):
        yield from _paragraph_sentences(text[pos:brk.start()])
        pos = brk.end()
    yield from _paragraph_sentences(text[pos:])


def split_sentences(text: str) -> list[str]:
    """Split ``text`` into sentences with rules only (no models, no downloads).

    Sentences end at ``.``, ``!`` or ``?`` (with any closing quotes or brackets) followed by
    space, unless the next word starts lower-case or with punctuation (``"Stop!" he said``,
    ``. . .``), or the period closes a known abbreviation (``Mr.``, ``Dr.``, ``St.``) or an
    initial (``G. K.``). A blank line always ends a sentence. Whitespace inside a sentence is
    collapsed to single spaces and empty pieces are dropped, so joining the result with ``" "``
    gives ``" ".join(text.split())``.

    Args:
        text: any amount of text, hard-wrapped lines allowed.

    Example:
        >>> split_sentences('Mr. Knightley came in. "Is it so?" said she.\\n\\nCHAPTER II\\n\\nIt rained!')
        ['Mr. Knightley came in.', '"Is it so?" said she.', 'CHAPTER II', 'It rained!']
    """
    return list(iter_sentences(text))


def _paragraph_sentences(paragraph: str) -> Iterator[str]:
    flat = " ".join(paragraph.split())
    start = 0
    for m in _BOUNDARY.finditer(flat):
        after = flat[m.end() + 1:m.end() + 2]
        if not after or after.islower() or after in ".,;:-)]":
            continue
        if m.group().startswith(".") and "." == m.group().rstrip("\"'\u201d\u2019)]"):
            word = flat[start:m.start()].rsplit(" ", 1)[-1].lstrip("\"'(\u201c\u2018[")
            if _is_abbreviation(word, after):
                continue
        sentence = flat[start:m.end()].strip()
        if sentence:
            yield sentence
        start = m.end() + 1
    rest = flat[start:].strip()
    if rest:
        yield rest


def _is_abbreviation(word: str, after: str) -> bool:
    lower = word.lower()
    if lower in ABBREVIATIONS:
        return True
    if lower == "no" and after.isdigit():
        return True
    # An initial such as "G." in "G. K. Chesterton"; "I." is usually the pronoun ending a sentence.
    if len(word) == 1 and word.isupper() and word != "I":
        return True
    # Dotted forms such as "U.S." or "e.g".
    return len(word) > 1 and "." in word and all(len(part) <= 2 for part in word.split("."))


# ---------------------------------------------------------------- built-in prose

_NAMES = ("Anna", "Thomas", "Mary", "Edward", "Clara", "Henry", "Lucy", "Walter", "Ellen",
          "Robert", "Martha", "George", "Agnes", "Arthur", "Helen", "Samuel", "Julia", "Oliver")
_TITLED = ("Mr. Hale", "Mrs. Grey", "Dr. Moore", "Miss Lane", "Captain Ward", "Lady Ashby",
           "Mr. Fenwick", "Mrs. Dalton")
_PLACES = ("the garden", "the old mill", "the village", "the library", "the harbour", "the hill",
           "the church", "the kitchen", "the orchard", "the bridge", "the station", "the forest",
           "the market", "the parlour", "the shore", "the inn")
_THINGS = ("a letter", "the lamp", "a small box", "the key", "an umbrella", "the map",
           "a basket of apples", "the old clock", "a blue ribbon", "the newspaper", "a candle",
           "the violin", "a silver coin", "the portrait", "a wooden chair", "the telescope")
_VERBS_PAST = ("walked to", "hurried to", "returned to", "looked across", "waited near",
               "wandered through", "ran towards", "sat down in", "came back from", "stood by")
_VERBS_OBJ = ("found", "carried", "lost", "mended", "opened", "moved", "admired", "noticed",
              "dropped", "bought", "examined", "polished")
_ADJS = ("quiet", "cold", "bright", "grey", "pleasant", "strange", "narrow", "windy", "warm",
         "silent", "crowded", "distant", "gloomy", "cheerful")
_TIMES = ("In the morning", "That evening", "After dinner", "Before noon", "On Sunday",
          "Later that week", "At dawn", "Some hours afterwards", "By the next day")
_FEELINGS = ("glad", "uneasy", "tired", "surprised", "curious", "hopeful", "sorry", "amused")
_SAYINGS = ("It will rain before night", "I never expected to see you here",
            "We must leave early tomorrow", "Nobody told me about the letter",
            "The road is longer than it looks", "You are late again", "What a fine day it is",
            "Have you seen my brother", "Where did you put the key", "I shall not forget this")


def _sentence(rng: random.Random) -> str:
    person = rng.choice(_NAMES + _TITLED)
    other = rng.choice(_NAMES + _TITLED)
    template = rng.randrange(8)
    if template == 0:
        return f"{person} {rng.choice(_VERBS_PAST)} {rng.choice(_PLACES)}."
    if template == 1:
        return f"{rng.choice(_TIMES)}, {person} {rng.choice(_VERBS_OBJ)} {rng.choice(_THINGS)} in {rng.choice(_PLACES)}."
    if template == 2:
        place = rng.choice(_PLACES)
        first, second = rng.sample(_ADJS, 2)
        return f"{place[0].upper()}{place[1:]} was {first} and {second}."
    if template == 3:
        saying = rng.choice(_SAYINGS)
        end = "?" if saying.startswith(("Have", "Where")) else rng.choice(",!")
        return f'"{saying}{end}" said {other}.'
    if template == 4:
        return f"{person} was {rng.choice(_FEELINGS)}, for {other} had {rng.choice(_VERBS_OBJ)} {rng.choice(_THINGS)}."
    if template == 5:
        return (f"Although the weather was {rng.choice(_ADJS)}, {person} and {other} "
                f"{rng.choice(_VERBS_PAST)} {rng.choice(_PLACES)} together.")
    if template == 6:
        return f"{person} asked whether {other} had {rng.choice(_VERBS_OBJ)} {rng.choice(_THINGS)}."
    return f"Nobody in {rng.choice(_PLACES)} knew why {person} looked so {rng.choice(_FEELINGS)}."


def _builtin_title(seed: int, index: int) -> str:
    rng = random.Random(f"armt-builtin-title-{seed}-{index}")
    return f"builtin-{seed}-{index:03d} The {rng.choice(_ADJS).title()} {rng.choice(_PLACES)[4:].title()}"


def generate_book(seed: int, index: int, num_chars: int = 200_000) -> Book:
    """One deterministic generated book of about ``num_chars`` characters.

    Args:
        seed: generator seed; the same ``(seed, index)`` always gives the same book.
        index: which book of the seed.
        num_chars: length to reach; the last paragraph is finished, so the text is a bit longer.

    Example:
        >>> generate_book(0, 0, 300) == generate_book(0, 0, 300)
        True
    """
    rng = random.Random(f"armt-builtin-{seed}-{index}")
    title = _builtin_title(seed, index)
    parts: list[str] = []
    size = 0
    chapter = 0
    while size < num_chars:
        if not parts or rng.random() < 0.03:
            chapter += 1
            parts.append(f"CHAPTER {chapter}")
        paragraph = " ".join(_sentence(rng) for _ in range(rng.randint(2, 7)))
        parts.append(paragraph)
        size += len(paragraph) + 2
    return Book(title, "\n\n".join(parts))


def builtin_books(seed: int = 0, num_books: int = 20, chars_per_book: int = 200_000) -> BookSource:
    """Generated English-like prose so that everything runs with no data at all.

    Books are generated on demand (nothing is kept in memory) and depend only on ``seed``.

    Args:
        seed: different seeds give different books.
        num_books: how many books :meth:`BookSource.books` yields.
        chars_per_book: about how many characters each book has.

    Example:
        >>> src = builtin_books(seed=0, num_books=2, chars_per_book=500)
        >>> len(list(src.books()))
        2
    """
    for name, value in (("seed", seed), ("num_books", num_books), ("chars_per_book", chars_per_book)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputTypeError(f"{name} must be an int, got {type(value).__name__} ({value!r}).")
    if num_books < 1 or chars_per_book < 1:
        raise ValueError(f"num_books={num_books} and chars_per_book={chars_per_book} must both be >= 1.")

    def factory() -> Iterator[Book]:
        for index in range(num_books):
            yield generate_book(seed, index, chars_per_book)

    description = (f"built-in generated text (no books given; seed {seed}, {num_books} books of "
                   f"~{chars_per_book:,} characters)")
    return BookSource("builtin", description, factory,
                      titles=[_builtin_title(seed, i) for i in range(num_books)])
