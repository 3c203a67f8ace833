"""Loading, training, saving and reloading tokenizers, all offline."""

from __future__ import annotations

import pytest
import transformers

from armt.data.books import builtin_books, load_books
from armt.data.tokenizer import (
    EOS_TOKEN,
    PAD_TOKEN,
    get_tokenizer,
    load_tokenizer,
    train_bpe_tokenizer,
)


SAMPLES = [
    "Emma Woodhouse, handsome, clever, and rich.",
    "  Leading spaces,\ttabs\nand new lines\n\n",
    "Unicode: naïve café, Ærøskøbing — “quoted” 東京 😀",
    "To be, or not to be, that is the Question: ",
    "",
]


@pytest.fixture(scope="module")
def corpus(data_dir) -> list[str]:
    GUTENBERG = data_dir / "gutenberg"
    emma = GUTENBERG / "austen-emma.txt"
    if not emma.exists():
        pytest.skip(f"Gutenberg books not found at {GUTENBERG}")
    return [next(load_books(emma).books()).text[:300_000]]


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return train_bpe_tokenizer(corpus, vocab_size=512)


def test_trained_tokenizer_round_trips_any_text(tokenizer):
    assert len(tokenizer) == 512
    assert tokenizer.eos_token == tokenizer.bos_token == tokenizer.unk_token == EOS_TOKEN
    assert tokenizer.pad_token == PAD_TOKEN and tokenizer.pad_token_id != tokenizer.eos_token_id
    for text in SAMPLES:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
        assert tokenizer.eos_token_id not in ids  # no special tokens added while encoding
    # Merges learnt from the text make common words short.
    assert len(tokenizer.encode(" the")) == 1


def test_save_and_reload_give_identical_ids(tokenizer, corpus, tmp_path):
    tokenizer.save_pretrained(tmp_path / "tok")
    again = transformers.AutoTokenizer.from_pretrained(tmp_path / "tok")
    loaded = load_tokenizer(tmp_path / "tok")
    text = corpus[0][:20_000] + SAMPLES[2]
    ids = tokenizer.encode(text)
    assert again.encode(text) == loaded.encode(text) == ids
    assert again.decode(ids) == text
    assert (again.eos_token, again.pad_token, len(again)) == (EOS_TOKEN, PAD_TOKEN, 512)


def test_train_with_save_dir_writes_a_loadable_tokenizer(tmp_path):
    texts = [book.text for book in builtin_books(num_books=2, chars_per_book=20_000).books()]
    tok = train_bpe_tokenizer(texts, vocab_size=400, save_dir=tmp_path / "new")
    assert (tmp_path / "new" / "tokenizer.json").exists()
    assert load_tokenizer(tmp_path / "new").encode(texts[0][:500]) == tok.encode(texts[0][:500])


def test_vocab_size_and_texts_are_validated():
    with pytest.raises(ValueError, match=r"vocab_size=100 is too small.*vocab_size >= 258"):
        train_bpe_tokenizer(["abc"], vocab_size=100)
    with pytest.raises(TypeError, match="vocab_size must be an int"):
        train_bpe_tokenizer(["abc"], vocab_size=512.0)
    with pytest.raises(TypeError, match="not one string"):
        train_bpe_tokenizer("abc", vocab_size=300)
    with pytest.raises(ValueError, match="min_frequency"):
        train_bpe_tokenizer(["abc"], vocab_size=300, min_frequency=0)


def test_load_missing_tokenizer_suggests_training(tmp_path):
    with pytest.raises(OSError, match="does not exist.*train_bpe_tokenizer"):
        load_tokenizer(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(OSError, match="Could not load tokenizer.*train_bpe_tokenizer"):
        load_tokenizer(tmp_path / "empty")


def test_get_tokenizer_trains_loads_and_falls_back(tmp_path):
    src = builtin_books(num_books=2, chars_per_book=30_000)
    tok, how = get_tokenizer(None, src, vocab_size=400, save_dir=tmp_path / "bpe", max_train_chars=20_000)
    assert how == (f"trained byte-level BPE, vocab 400, on {src.description}, first ~20,000 characters, "
                   f"saved to {tmp_path / 'bpe'}")
    again, how = get_tokenizer(tmp_path / "bpe")
    assert how == f"loaded {tmp_path / 'bpe'}" and again.encode("Mr. Hale") == tok.encode("Mr. Hale")
    _, how = get_tokenizer(tmp_path / "absent", ["some words here. " * 40], vocab_size=300)
    assert how.startswith(f"could not load {str(tmp_path / 'absent')!r}, so trained byte-level BPE")
    assert "on given texts, not saved" in how
    with pytest.raises(OSError):
        get_tokenizer(tmp_path / "absent")
    with pytest.raises(ValueError, match="needs train_texts"):
        get_tokenizer(None)
