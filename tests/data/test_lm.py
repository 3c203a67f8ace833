"""Language-modelling windows: exact length, stride, book boundaries, disjoint splits."""

from __future__ import annotations

import pytest
import torch

from armt.data.books import Book, BookSource, builtin_books, load_books
from armt.data.lm import (
    LMWindowDataset,
    LMWindowsConfig,
    lm_windows,
    split_books,
    tokenize_books,
)
from armt.data.tokenizer import train_bpe_tokenizer



def tiny_source() -> BookSource:
    books = [Book("alpha", "Alpha went to the garden. " * 40), Book("beta", "Beta sat by the old mill. " * 30)]
    return BookSource("builtin", "two tiny books", lambda: iter(books), titles=[b.title for b in books])


@pytest.fixture(scope="module")
def tokenizer():
    texts = [b.text for b in builtin_books(num_books=1, chars_per_book=40_000).books()]
    return train_bpe_tokenizer(texts + [b.text for b in tiny_source().books()], vocab_size=400)


def reference_windows(stream: list[int], window: int, step: int) -> list[list[int]]:
    return [stream[s:s + window] for s in range(0, len(stream) - window + 1, step)]


def test_config_is_validated():
    cfg = LMWindowsConfig(segment_size=4, num_segments=3)
    assert (cfg.window, cfg.step) == (12, 12)
    assert LMWindowsConfig(4, 3, stride=5).step == 5
    with pytest.raises(ValueError, match="segment_size must be >= 1"):
        LMWindowsConfig(0, 3)
    with pytest.raises(ValueError, match="stride must be >= 1.*None for non-overlapping"):
        LMWindowsConfig(4, 3, stride=0)
    with pytest.raises(TypeError, match="num_segments must be an int"):
        LMWindowsConfig(4, True)
    with pytest.raises(TypeError, match="cross_books must be True or False"):
        LMWindowsConfig(4, 3, cross_books=1)
    with pytest.raises(ValueError, match="max_tokens_per_book"):
        LMWindowsConfig(4, 3, max_tokens_per_book=0)


@pytest.mark.parametrize("stride", [None, 1, 3, 7, 20])
def test_windows_have_exact_length_and_stride_within_each_book(stride):
    books = [list(range(1000, 1050)), list(range(2000, 2005)), list(range(3000, 3033))]
    cfg = LMWindowsConfig(segment_size=4, num_segments=3, stride=stride)
    got = list(lm_windows([(f"b{i}", ids) for i, ids in enumerate(books)], cfg))
    expected = [w for ids in books for w in reference_windows(ids, 12, cfg.step)]
    assert got == expected
    assert all(len(w) == 12 for w in got)
    # No window mixes two books (each book has its own range of ids).
    assert all(len({t // 1000 for t in w}) == 1 for w in got)


@pytest.mark.parametrize("stride", [None, 2, 5, 13, 30])
@pytest.mark.parametrize("eos", [True, False])
def test_cross_books_reads_one_stream(stride, eos):
    books = [list(range(1000, 1017)), list(range(2000, 2003)), [], list(range(3000, 3040))]
    cfg = LMWindowsConfig(segment_size=5, num_segments=2, stride=stride, cross_books=True,
                          add_eos_between_books=eos)
    stream = books[0]
    for ids in books[1:]:
        stream = stream + ([7] if eos else []) + ids
    assert list(lm_windows(books, cfg, eos_token_id=7)) == reference_windows(stream, 10, cfg.step)


def test_cross_books_needs_eos_id_and_max_tokens_per_book_cuts():
    cfg = LMWindowsConfig(2, 2, cross_books=True)
    with pytest.raises(ValueError, match="eos_token_id is None.*add_eos_between_books=False"):
        list(lm_windows([[1, 2, 3]], cfg))
    cfg = LMWindowsConfig(2, 2, max_tokens_per_book=9)
    assert list(lm_windows([list(range(20))], cfg)) == [[0, 1, 2, 3], [4, 5, 6, 7]]


def test_chunked_tokenization_equals_whole_text(tokenizer):
    text = "".join(b.text for b in tiny_source().books()) + "\n\n  Odd  spacing,\tand tabs.\n"
    whole = tokenizer(text, add_special_tokens=False)["input_ids"]
    for chunk_chars in (7, 50, 1000, 10**6):
        (title, ids), = tokenize_books([Book("t", text)], tokenizer, chunk_chars=chunk_chars)
        assert title == "t" and ids == whole
    (_, ids), = tokenize_books([Book("t", text)], tokenizer, chunk_chars=30, max_tokens_per_book=25)
    assert ids == whole[:25]


def test_chunked_tokenization_on_a_real_book(data_dir, tokenizer):
    GUTENBERG = data_dir / "gutenberg"
    if not (GUTENBERG / "austen-persuasion.txt").exists():
        pytest.skip(f"Gutenberg books not found at {GUTENBERG}")
    text = next(load_books(GUTENBERG / "austen-persuasion.txt").books()).text[:100_000]
    (_, ids), = tokenize_books([Book("p", text)], tokenizer, chunk_chars=4000)
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_dataset_windows_stay_inside_one_book(tokenizer):
    src = tiny_source()
    cfg = LMWindowsConfig(segment_size=8, num_segments=2, stride=5)
    ds = LMWindowDataset.from_books(src, tokenizer, cfg)
    texts = [b.text for b in src.books()]
    streams = [ids for _, ids in tokenize_books(src, tokenizer)]
    assert len(ds) == sum(len(reference_windows(s, 16, 5)) for s in streams) > 0
    assert ds.windows.dtype == torch.long and ds.windows.shape == (len(ds), 16)
    for i in range(len(ds)):
        item = ds[i]
        assert torch.equal(item["input_ids"], item["labels"]) and item["input_ids"].shape == (16,)
        # Every window decodes to a piece of exactly one book.
        assert sum(tokenizer.decode(item["input_ids"]) in t for t in texts) == 1
    item["labels"][0] = -100
    assert ds[len(ds) - 1]["input_ids"][0] != -100
    assert ds.titles == ["alpha", "beta"] and "two tiny books" in ds.description
    assert f"{len(ds)} windows of 16 tokens (stride 5)" in ds.description


def test_dataset_cross_books_uses_tokenizer_eos(tokenizer):
    cfg = LMWindowsConfig(segment_size=8, num_segments=2, cross_books=True)
    ds = LMWindowDataset.from_books(tiny_source(), tokenizer, cfg)
    assert (ds.windows == tokenizer.eos_token_id).sum() == 1


def test_dataset_book_selection(tokenizer):
    src = tiny_source()
    cfg = LMWindowsConfig(segment_size=8, num_segments=2)
    assert LMWindowDataset.from_books(src, tokenizer, cfg, books=["beta"]).titles == ["beta"]
    assert LMWindowDataset.from_books(src, tokenizer, cfg, books=slice(1)).titles == ["alpha"]
    assert LMWindowDataset.from_books(src, tokenizer, cfg, books=slice(-1, None)).titles == ["beta"]
    with pytest.raises(ValueError, match=r"books=\['gamma'\] are not titles of two tiny books"):
        LMWindowDataset.from_books(src, tokenizer, cfg, books=["beta", "gamma"])
    with pytest.raises(TypeError, match="not one string"):
        LMWindowDataset.from_books(src, tokenizer, cfg, books="beta")
    empty = LMWindowDataset.from_books(src, tokenizer, LMWindowsConfig(4096, 4))
    assert len(empty) == 0 and empty.windows.shape == (0, 16384)


def test_split_books_is_disjoint_and_deterministic(data_dir):
    GUTENBERG = data_dir / "gutenberg"
    if not GUTENBERG.exists():
        pytest.skip(f"Gutenberg books not found at {GUTENBERG}")
    src = load_books(GUTENBERG)
    train, held = split_books(src, held_out=2)
    assert held == ["shakespeare-hamlet", "shakespeare-macbeth"]
    assert not set(train) & set(held) and sorted(train + held) == src.titles()
    assert split_books(load_books(GUTENBERG), held_out=2) == (train, held)
    assert len(split_books(src, held_out=0.3)[1]) == 3
    assert split_books(list(reversed(src.titles())), 0.01)[1] == ["shakespeare-macbeth"]
    for bad in (0, 10, 1.5, 0.0):
        with pytest.raises(ValueError, match="held_out="):
            split_books(src, held_out=bad)
    with pytest.raises(TypeError, match="held_out must be"):
        split_books(src, held_out="2")


def test_train_and_eval_datasets_share_no_book(tokenizer):
    src = builtin_books(seed=3, num_books=4, chars_per_book=3000)
    train_titles, eval_titles = split_books(src, held_out=1)
    cfg = LMWindowsConfig(segment_size=32, num_segments=2)
    train = LMWindowDataset.from_books(src, tokenizer, cfg, books=train_titles)
    held = LMWindowDataset.from_books(src, tokenizer, cfg, books=eval_titles)
    assert sorted(train.titles) == train_titles and held.titles == eval_titles
    assert len(train) > 0 and len(held) > 0
    train_rows = {tuple(w.tolist()) for w in train.windows}
    assert not any(tuple(w.tolist()) in train_rows for w in held.windows)
