"""The needle task: layout, where the facts are, distractors without ':', the rewrite rule, text mapping."""

from __future__ import annotations

import pytest
import torch

from armt.data.needle import NeedleConfig, TextStream, fixed_needle_batch, needle_batch, text_symbols


def _segments(ids, cfg):
    return ids[:-cfg.segment_size].view(cfg.num_segments, cfg.segment_size)


@pytest.mark.parametrize("distractors", ["symbols", "text"])
@pytest.mark.parametrize("variant", ["remember", "rewrite"])
def test_layout_facts_where_recorded_and_the_answer(distractors, variant, data_dir):
    cfg = NeedleConfig(num_facts=4, num_segments=12, distractors=distractors, variant=variant)
    text = TextStream(data_dir / "gutenberg", max_chars=200_000) if distractors == "text" else None
    batch = needle_batch(cfg, 32, torch.Generator().manual_seed(1), text)
    assert batch["input_ids"].shape == (32, 13 * 4)
    for ids, labels, where, asked in zip(batch["input_ids"], batch["labels"], batch["fact_segments"], batch["asked"]):
        segs = _segments(ids, cfg)
        is_fact = segs[:, cfg.key_len] == cfg.colon
        assert is_fact.nonzero().flatten().tolist() == where.tolist()  # facts exactly there, in order
        assert not (segs[~is_fact] >= cfg.num_symbols).any()  # distractors: symbols only, no ':' or '?'
        facts = segs[where]
        keys = [tuple(k.tolist()) for k in facts[:, :cfg.key_len]]
        query = tuple(ids[-4:-2].tolist())
        assert ids[-2] == cfg.ask
        latest = max(i for i, k in enumerate(keys) if k == query)
        assert latest == asked and ids[-1] == facts[latest, -1]
        if variant == "remember":
            assert len(set(keys)) == 4
        assert (labels != -100).sum() == 1 and labels[-1] == ids[-1]


def test_rewrite_reassigns_keys():
    cfg = NeedleConfig(num_facts=4, num_segments=8, variant="rewrite")
    batch = needle_batch(cfg, 64, torch.Generator().manual_seed(0))
    keys = batch["input_ids"][:, :-4].view(64, 8, 4)
    repeated = 0
    for row, where in zip(keys, batch["fact_segments"]):
        repeated += len({tuple(k[:2].tolist()) for k in row[where]}) < 4
    assert repeated == 64  # a pool of 2 keys for 4 facts


def test_text_distractors_are_the_books_in_order(data_dir):
    text = TextStream(data_dir / "gutenberg", max_chars=100_000)
    cfg = NeedleConfig(num_facts=1, num_segments=6, distractors="text")
    batch = needle_batch(cfg, 4, torch.Generator().manual_seed(2), text)
    for ids, where in zip(batch["input_ids"], batch["fact_segments"]):
        segs = _segments(ids, cfg)
        noise = torch.cat([s for i, s in enumerate(segs) if i != where[0]]).numpy()
        # one contiguous run of the mapped text
        hits = [i for i in range(len(text.symbols) - len(noise)) if (text.symbols[i:i + len(noise)] == noise).all()]
        assert hits


def test_text_symbols_map_letters_by_frequency_and_fold_the_rest():
    assert text_symbols("The tea.", 16).tolist() == [2, 8, 1, 0, 2, 1, 3, 0]
    assert text_symbols("a -- b\n\nc", 16).tolist() == text_symbols("a b c", 16).tolist()
    assert text_symbols("\u00e9t\u00e9", 16).tolist() == [0, 2, 0]  # non-ASCII letters are not letters here
    assert text_symbols("zzz", 4).max() < 4


def test_builtin_text_needs_no_data():
    stream = TextStream("builtin", max_chars=10_000)
    assert len(stream.symbols) == 10_000 and "built-in" in stream.description


def test_fixed_samples_depend_on_the_seed_and_shape_only():
    cfg = NeedleConfig(num_facts=2, num_segments=9)
    a, b, c = fixed_needle_batch(cfg, 5, 3), fixed_needle_batch(cfg, 5, 3), fixed_needle_batch(cfg, 5, 4)
    assert torch.equal(a["input_ids"], b["input_ids"]) and not torch.equal(a["input_ids"], c["input_ids"])


@pytest.mark.parametrize("kwargs,match", [
    (dict(num_facts=5, num_segments=4), "num_segments >= num_facts"),
    (dict(num_facts=0), "num_facts must be >= 1"),
    (dict(distractors="noise"), "distractors='noise' is unknown"),
    (dict(variant="overwrite"), "variant='overwrite' is unknown"),
])
def test_bad_configs_are_refused_with_the_fix(kwargs, match):
    with pytest.raises(ValueError, match=match):
        NeedleConfig(**kwargs)


def test_text_distractors_need_a_stream():
    with pytest.raises(ValueError, match="needs text=TextStream"):
        needle_batch(NeedleConfig(distractors="text"), 2)
    with pytest.raises(ValueError, match="num_symbols=8"):
        needle_batch(NeedleConfig(num_symbols=8, distractors="text"), 2, text=TextStream("builtin", max_chars=1000))
