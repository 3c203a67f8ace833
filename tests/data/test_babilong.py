"""BABILong samples: exact lengths for several tokenizers, determinism, fact order, streaming."""

from __future__ import annotations

import itertools
import re
import warnings

import pytest
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from armt.data.babi import BabiSample, generate_babi, load_babi_task
from armt.data.babilong import (
    BABILONG_LENGTHS,
    Sentences,
    build_sample,
    iter_babilong,
    length_name,
    make_dataset,
    parse_length,
    parse_lengths,
    read_jsonl,
    write_jsonl,
)



def split(text: str) -> list[str]:
    return [s for s in (" ".join(p.split()) for p in re.split(r"(?<=[.!?])\s+", text)) if s]


@pytest.fixture(scope="module")
def sentences(data_dir) -> list[str]:
    BOOK = data_dir / "gutenberg" / "austen-emma.txt"
    if not BOOK.exists():
        pytest.skip(f"Gutenberg text not found at {BOOK}")
    text = BOOK.read_text(encoding="utf-8", errors="replace")
    return split(text[20_000:420_000])


def byte_bpe(texts):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=800, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok)


def words(texts):
    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(texts, trainers.WordLevelTrainer(vocab_size=3000, special_tokens=["[UNK]"],
                                                             show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def chars(texts):
    vocab = {"[UNK]": 0}
    for c in sorted(set("".join(texts))):
        vocab.setdefault(c, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


@pytest.fixture(scope="module")
def tokenizers(sentences):
    texts = sentences[:3000] + [f for s in generate_babi("qa2", 50) for f in s.facts]
    return {"byte_bpe": byte_bpe(texts), "words": words(texts), "chars": chars(texts)}


@pytest.fixture(scope="module")
def qa2(data_dir) -> list[BabiSample]:
    if (data_dir / "babi" / "en").is_dir():
        return load_babi_task("qa2", "test", root=data_dir / "babi")[:40]
    return generate_babi("qa2", 40)


def count(tokenizer, text: str) -> int:
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fact_pieces(sample) -> list[str]:
    facts = set(sample.facts)
    return [p.strip() for p in sample.iter_pieces() if p.strip() in facts]


def test_length_names():
    assert [parse_length(x) for x in ("0k", "1k", "16k", "128K", "1M", "10M", "4096", "0.5k")] == [
        0, 1024, 16384, 131072, 1048576, 10485760, 4096, 512]
    assert parse_lengths("0k,1k, 4k") == [0, 1024, 4096]
    tokens = parse_lengths(BABILONG_LENGTHS)
    assert tokens == sorted(tokens) and [length_name(t) for t in tokens] == list(BABILONG_LENGTHS)
    assert [length_name(n) for n in (0, 1024, 65536, 1048576, 1500)] == ["0k", "1k", "64k", "1M", "1500"]
    assert [length_name(n) for n in (256, 512, 768, 1280, 100)] == ["0.25k", "0.5k", "0.75k", "1.25k", "100"]
    assert [parse_length(length_name(n)) for n in (256, 768, 1280)] == [256, 768, 1280]
    for bad in ("4 kb", "-1k", "k", ""):
        with pytest.raises(ValueError, match="length"):
            parse_length(bad)
    with pytest.raises(ValueError, match="whole number"):
        parse_length("0.0001k")


@pytest.mark.parametrize("name", ["byte_bpe", "words", "chars"])
@pytest.mark.parametrize("length", ["1k", "4k", "16k"])
def test_length_within_one_percent_never_over(tokenizers, sentences, qa2, name, length):
    tok, target = tokenizers[name], parse_length(length)
    for i, babi in enumerate(qa2[:: 8]):
        s = build_sample(babi, sentences, tok, length, seed=i, start=100 * i)
        ids = s.input_ids()
        assert len(ids) == s.num_tokens
        assert 0.99 * target <= s.num_tokens <= target, (name, length, s.num_tokens)
        # these tokenizers split at spaces first, so the joined text has the same tokens
        assert tok(s.text(), add_special_tokens=False)["input_ids"] == ids
        assert fact_pieces(s) == list(babi.facts)


def test_facts_in_order_once_each_question_apart(tokenizers, sentences):
    # a story with a repeated fact: both copies must appear, in order
    babi = BabiSample("qa1", ("John went to the hallway.", "Mary moved to the office.", "John went to the hallway.",
                              "Sandra journeyed to the garden."), "Where is John?", "hallway", (2,))
    for seed in range(5):
        s = build_sample(babi, sentences, tokenizers["byte_bpe"], "2k", seed=seed)
        assert fact_pieces(s) == list(babi.facts)
        assert list(s.fact_gaps) == sorted(s.fact_gaps)
        assert "Where is John?" not in s.text() and s.question == "Where is John?"
        record = s.to_record()
        assert list(record)[:3] == ["input", "question", "target"]
        assert record["target"] == "hallway" and record["length"] == "2k"


def test_deterministic_for_a_seed_different_across_seeds(tokenizers, sentences, qa2):
    tok = tokenizers["words"]
    a = build_sample(qa2[3], sentences, tok, "4k", seed=11).text()
    assert a == build_sample(qa2[3], sentences, tok, "4k", seed=11).text()
    assert a != build_sample(qa2[3], sentences, tok, "4k", seed=12).text()
    ds = make_dataset("qa2", "1k", 3, tok, sentences, seed=4, babi_source=qa2)
    assert ds == make_dataset("qa2", "1k", 3, tok, sentences, seed=4, babi_source=qa2)
    other = make_dataset("qa2", "1k", 3, tok, sentences, seed=5, babi_source=qa2)
    assert [r["input"] for r in ds] != [r["input"] for r in other]
    assert [r["question"] for r in ds] == [r["question"] for r in other]


def test_zero_k_is_facts_only(tokenizers, qa2):
    tok = tokenizers["byte_bpe"]
    s = build_sample(qa2[5], None, tok, "0k")
    assert s.text() == " ".join(qa2[5].facts)
    assert s.num_tokens == count(tok, s.text()) == len(s.input_ids())
    assert not s.overflow


def test_facts_longer_than_length(tokenizers):
    tok = tokenizers["words"]
    babi = BabiSample("qa1", tuple(f"Mary went to the office number {i}." for i in range(200)), "Where is Mary?",
                      "office", (199,))
    with pytest.warns(UserWarning, match="facts alone take"):
        s = build_sample(babi, ["Filler sentence."], tok, "1k")
    assert s.overflow and s.text() == " ".join(babi.facts) and s.num_tokens > 1024
    with pytest.raises(ValueError, match="on_overflow='warn'"):
        build_sample(babi, ["Filler sentence."], tok, "1k", on_overflow="error")
    short = BabiSample("qa1", ("Mary went home.",), "Where is Mary?", "home", (0,))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        records = make_dataset("qa1", "1k", 1, tok, ["Filler sentence."], babi_source=[babi, short],
                               on_overflow="skip")
    assert [r["question"] for r in records] == ["Where is Mary?"] and "home" in records[0]["input"]
    with pytest.raises(ValueError, match="Only 0"):
        make_dataset("qa1", "1k", 1, tok, ["Filler sentence."], babi_source=[babi], on_overflow="skip")


def test_small_source_cycles_and_bad_sources(tokenizers):
    tok = tokenizers["chars"]
    babi = BabiSample("qa1", ("Mary went to the office.",), "Where is Mary?", "office", (0,))
    s = build_sample(babi, ["It rained all day.", "No.", "The sun set over the hill."], tok, "4k")
    assert 0.99 * 4096 <= s.num_tokens <= 4096 and s.text().count("It rained all day.") > 50
    with pytest.raises(TypeError, match="one-shot iterator"):
        build_sample(babi, iter(["A."]), tok, "1k")
    with pytest.raises(TypeError, match="one string"):
        build_sample(babi, "A long text.", tok, "1k")
    with pytest.raises(ValueError, match="empty"):
        Sentences(["", "  "])
    with pytest.raises(ValueError, match="no sentences"):
        build_sample(babi, lambda: iter([]), tok, "1k")
    with pytest.raises(ValueError, match="needs background text"):
        build_sample(babi, None, tok, "1k")


def test_stream_equals_materialised(tokenizers, sentences, qa2):
    tok = tokenizers["byte_bpe"]
    s = build_sample(qa2[7], sentences, tok, "4k", seed=2)
    chunks = list(s.iter_token_chunks(1000))
    assert [len(c) for c in chunks[:-1]] == [1000] * (len(chunks) - 1) and 0 < len(chunks[-1]) <= 1000
    assert [i for c in chunks for i in c] == s.input_ids() == tok(s.text(), add_special_tokens=False)["input_ids"]


def test_long_sample_streams_lazily(tokenizers, sentences, qa2):
    tok = tokenizers["chars"]
    reads = []

    def source():
        # counts how far each read of the source gets
        reads.append(0)
        for sentence in sentences:
            reads[-1] += 1
            yield sentence

    s = build_sample(qa2[0], source, tok, "256k", seed=0)
    assert 0.99 * 262144 <= s.num_tokens <= 262144
    chunks = s.iter_token_chunks(4096)
    first = next(chunks)
    # the second read has only just begun: the sample is written while it is read
    assert len(first) == 4096 and reads[-1] < 2000
    total = len(first) + sum(len(c) for c in chunks)
    assert total == s.num_tokens  # its speed: benchmarks/babilong_samples.py


def test_source_that_changes_between_reads_is_caught(tokenizers, sentences, qa2):
    calls = itertools.count()

    def shifting():
        return iter(sentences[next(calls) * 7:])

    s = build_sample(qa2[0], shifting, tokenizers["chars"], "256k")
    with pytest.raises(RuntimeError, match="different sentences"):
        for _ in s.iter_token_chunks(65536):
            pass


def test_make_dataset_fields_and_jsonl(tokenizers, sentences, tmp_path):
    tok = tokenizers["words"]
    records = make_dataset("qa1", "1k", 4, tok, sentences, seed=0, babi_source="builtin")
    assert len(records) == 4
    for r in records:
        assert set(r) == {"input", "question", "target", "task", "length", "num_tokens"}
        assert (r["task"], r["length"]) == ("qa1", "1k") and 1014 <= r["num_tokens"] <= 1024
        assert r["question"] not in r["input"]
    # consecutive samples read consecutive background sentences
    assert records[0]["input"] != records[1]["input"]
    path = write_jsonl(records, tmp_path / "out" / "qa1_1k.jsonl")
    assert read_jsonl(path) == records
    with pytest.raises(FileExistsError, match="overwrite=True"):
        write_jsonl(records, path)
    write_jsonl(records[:1], path, overwrite=True)
    assert len(read_jsonl(path)) == 1


def test_make_dataset_from_bAbI_folder_and_books(data_dir, tokenizers):
    if not (data_dir / "babi" / "en").is_dir():
        pytest.skip(f"bAbI files not found at {data_dir / 'babi'}")
    books = pytest.importorskip("armt.data.books")
    source = books.load_books(data_dir / "gutenberg")
    records = make_dataset("qa1", "1k", 2, tokenizers["byte_bpe"], source, seed=1, babi_source=data_dir / "babi")
    assert [r["target"] for r in records] == ["hallway", "bathroom"]
    assert all(1014 <= r["num_tokens"] <= 1024 for r in records)
    facts = load_babi_task("qa1", root=data_dir / "babi")[1].facts
    assert all(f in records[1]["input"] for f in facts)


def test_iter_babilong_is_lazy(tokenizers, sentences):
    samples = iter_babilong("qa1", "64k", 2, tokenizers["chars"], sentences, babi_source="builtin")
    first = next(samples)
    assert first.num_tokens <= 65536 and first.next_start > 0
    second = next(samples)
    assert second._noise.start == first.next_start


class OpeningCostsMore:
    """One token per word, plus three for a text without a leading space (the first piece)."""

    def __call__(self, texts, add_special_tokens=False):
        return {"input_ids": [[1] * (len(t.split()) + (0 if t.startswith(" ") else 3)) for t in texts]}


@pytest.mark.parametrize("seed", range(6))
def test_opening_piece_counted_exactly(sentences, seed):
    # whether a fact or a sentence opens the context, its unspaced cost must still fit
    babi = BabiSample("qa1", ("Mary went to the office.", "John moved to the garden."), "Where is Mary?",
                      "office", (0,))
    for length in (300, 1024):
        s = build_sample(babi, sentences[seed * 50:seed * 50 + 40], OpeningCostsMore(), length, seed=seed)
        assert 0.99 * length <= s.num_tokens <= length
        assert len(s.input_ids()) == s.num_tokens


def test_rereads_far_into_a_source_skip_whole_cycles(sentences):
    reads = []

    def source():
        for sentence in sentences[:200]:
            reads.append(sentence)
            yield sentence

    plain, counted = Sentences(sentences[:200]), Sentences(source)
    # a first stream that goes past the end teaches the source its length
    assert list(itertools.islice(counted.stream(0), 250)) == list(itertools.islice(plain.stream(0), 250))
    reads.clear()
    far = list(itertools.islice(counted.stream(1_000_000), 10))
    assert far == list(itertools.islice(plain.stream(1_000_000), 10))
    # without the period a re-read walked a million sentences to get there
    assert len(reads) <= 210
