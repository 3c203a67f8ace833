"""Book sources, Gutenberg boilerplate and sentence splitting."""

from __future__ import annotations

import itertools
import os
import time

import pytest

from armt.data.books import (
    Book,
    builtin_books,
    load_books,
    split_sentences,
    strip_gutenberg_boilerplate,
)



@pytest.fixture
def gutenberg(data_dir):
    GUTENBERG = data_dir / "gutenberg"
    if not (GUTENBERG / "austen-emma.txt").exists():
        pytest.skip(f"Gutenberg books not found at {GUTENBERG} (set ARMT_REFERENCE_DIR next to data/)")
    return GUTENBERG


def test_folder_loads_every_book_sorted_and_reiterable(gutenberg):
    src = load_books(gutenberg)
    assert src.kind == "folder"
    assert str(gutenberg) in src.description and "10 .txt files" in src.description
    titles = [book.title for book in src.books()]
    assert len(titles) == 10 and titles == sorted(titles) == src.titles()
    assert titles[0] == "austen-emma"
    assert [book.title for book in src.books()] == titles


def test_single_file_is_one_book(gutenberg):
    src = load_books(gutenberg / "blake-poems.txt")
    (book,) = list(src.books())
    assert book.title == "blake-poems" and "blake-poems.txt" in src.description


def test_gutenberg_license_is_stripped(gutenberg):
    books = {book.title: book.text for book in load_books(gutenberg).books()}
    emma = books["austen-emma"]
    assert emma.startswith("VOLUME I") and emma.endswith("FINIS")
    for edge in (emma[:3000], emma[-3000:]):
        assert "Project Gutenberg" not in edge and "etext" not in edge.lower()
    assert books["chesterton-ball"].startswith("THE BALL AND THE CROSS")
    assert books["chesterton-ball"].endswith("pattern of a cross.")
    assert books["austen-persuasion"].startswith("Persuasion by Jane Austen (1818)")
    for title, text in books.items():
        assert "SMALL PRINT" not in text.upper(), title
        assert "END OF THE PROJECT GUTENBERG" not in text.upper(), title
        assert "\x1a" not in text, title


def test_strip_markers_both_styles_and_unmarked_text():
    modern = ("The Project Gutenberg EBook of X\nlicense words\n\n*** START OF THE PROJECT GUTENBERG EBOOK X ***"
              "\n\nProduced by Someone\n\nChapter 1\n\nIt began.\n\nEnd of Project Gutenberg's X\n"
              "*** END OF THE PROJECT GUTENBERG EBOOK X ***\nmore license")
    assert strip_gutenberg_boilerplate(modern) == "Chapter 1\n\nIt began."
    body = "CHAPTER I\n\n" + "A long story goes here. " * 50
    old = ("******The Project Gutenberg Etext of Y******\nlegal words\n"
           "*END*THE SMALL PRINT! FOR PUBLIC DOMAIN ETEXTS*Ver.04.29.93*END*\n\n\n" + body
           + "\n\nEnd of The Project Gutenberg Etext of Y\n")
    assert strip_gutenberg_boilerplate(old) == body.strip()
    plain = "No markers.\n\nJust text about a project.\n"
    assert strip_gutenberg_boilerplate(plain) == plain


def test_missing_path_and_empty_folder_are_clear_errors(tmp_path):
    for bad in ("./no/such/folder", str(tmp_path / "missing"), tmp_path / "missing.txt", "~/nope.txt"):
        with pytest.raises(FileNotFoundError, match="source=.*does not exist"):
            load_books(bad)
    with pytest.raises(FileNotFoundError, match="without .txt files"):
        load_books(tmp_path)
    with pytest.raises(TypeError, match="source must be"):
        load_books(3)


def test_builtin_is_deterministic_per_seed():
    a = builtin_books(seed=0, num_books=3, chars_per_book=5000)
    again = builtin_books(seed=0, num_books=3, chars_per_book=5000)
    other = builtin_books(seed=1, num_books=3, chars_per_book=5000)
    assert a.kind == "builtin" and "built-in" in a.description and "seed 0" in a.description
    books = list(a.books())
    assert books == list(a.books()) == list(again.books())
    assert len(books) == 3 and all(5000 <= len(b.text) < 7000 for b in books)
    assert len({b.text for b in books}) == 3
    assert [b.text for b in books] != [b.text for b in other.books()]
    assert a.titles() == [b.title for b in books]
    # A longer book of the same seed continues the shorter one.
    assert next(load_books("builtin", seed=0).books()).text.startswith(books[0].text)
    assert load_books(None).kind == "builtin" and len(load_books(None).titles()) == 20


def test_builtin_default_is_large_and_lazy():
    src = load_books(None, seed=7)
    start = time.perf_counter()
    first = next(src.books())
    assert len(first.text) >= 200_000
    assert time.perf_counter() - start < 2.0
    assert next(load_books(None, seed=7).books()) == first


@pytest.mark.parametrize("text, expected", [
    ("Mr. Woodhouse came. Mrs. Weston and Dr. Perry stayed at St. Mary's.",
     ["Mr. Woodhouse came.", "Mrs. Weston and Dr. Perry stayed at St. Mary's."]),
    ("G. K. Chesterton wrote it. I saw it. So did I.", ["G. K. Chesterton wrote it.", "I saw it.", "So did I."]),
    ('"Where are you going?" said he. "Home!" She left.',
     ['"Where are you going?" said he.', '"Home!"', "She left."]),
    ("He came (at last.) Then he sat.", ["He came (at last.)", "Then he sat."]),
    ("A line\nwrapped   here.\n\n\nNew paragraph without stop\n\nLast one?", [
        "A line wrapped here.", "New paragraph without stop", "Last one?"]),
    ("Wait. . . and see. It cost 1.5 pounds, e.g. Number No. 5 is next.",
     ["Wait. . . and see.", "It cost 1.5 pounds, e.g. Number No. 5 is next."]),
    ("", []),
    ("  \n\n \n", []),
])
def test_split_sentences_cases(text, expected):
    assert split_sentences(text) == expected


def test_split_sentences_preserves_content(gutenberg):
    emma = next(load_books(gutenberg).books()).text
    sentences = split_sentences(emma[:200_000])
    assert len(sentences) > 1000
    assert all(s and s == s.strip() and "\n" not in s and "  " not in s for s in sentences)
    assert " ".join(sentences) == " ".join(emma[:200_000].split())
    assert "Emma Woodhouse, handsome, clever, and rich, with a comfortable home and happy disposition, " \
           "seemed to unite some of the best blessings of existence; and had lived nearly twenty-one " \
           "years in the world with very little to distress or vex her." in sentences


def test_source_sentences_run_across_books_in_order():
    src = builtin_books(seed=2, num_books=2, chars_per_book=800)
    books = list(src.books())
    per_book = [split_sentences(b.text) for b in books]
    assert list(src.sentences()) == per_book[0] + per_book[1]
    assert list(itertools.islice(src.sentences(), 3)) == per_book[0][:3]


def test_unknown_dataset_fails_fast_offline(monkeypatch):
    import datasets
    import huggingface_hub.constants

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True, raising=False)
    start = time.perf_counter()
    for name in ("no-such-dataset-armt-xyz", "armt-owner/no-such-dataset"):
        with pytest.raises(ValueError, match="neither a local folder.*Offline, pass a folder of .txt files"):
            load_books(name, split="test")
    assert time.perf_counter() - start < 30


def test_local_text_dataset_goes_through_datasets(gutenberg, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    pattern = os.fspath(gutenberg / "blake-*.txt")
    src = load_books("text", data_files=pattern, dataset_kwargs={"sample_by": "document"})
    assert src.kind == "hf" and "Hugging Face dataset text (split train" in src.description
    books = list(src.books())
    assert [b.title for b in books] == ["text[0]", "text[1]"]
    assert {len(b.text) for b in books} == {48898, 41944}
    assert [b.title for b in src.books()] == ["text[0]", "text[1]"]
    assert src.titles() == ["text[0]", "text[1]"]
    with pytest.raises(ValueError, match="text_field='body'"):
        load_books("text", data_files=pattern, text_field="body",
                   dataset_kwargs={"sample_by": "document"}).titles()


def test_book_is_frozen():
    book = Book("t", "x")
    with pytest.raises(AttributeError):
        book.text = "y"
