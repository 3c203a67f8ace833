"""Training samples for BABILong: where the question sits relative to the segments."""

from __future__ import annotations

import pytest

from armt.data.babilong_sources import open_sources
from armt.data.babilong_training import BabilongTrainingSet
from armt.data.tokenizer import train_bpe_tokenizer


@pytest.fixture(scope="module")
def tokenizer_and_sources():
    sources = open_sources("builtin", "builtin", seed=0, split="train")
    text = " ".join(s for _, s in zip(range(3000), sources.background.sentences()))
    return train_bpe_tokenizer([text, "Mary went to the kitchen. Where is Mary? Answer: kitchen"], vocab_size=400), sources


@pytest.mark.parametrize("num_segments", [2, 3])
def test_question_alone_puts_the_question_after_whole_segments_of_context(tokenizer_and_sources, num_segments):
    tokenizer, sources = tokenizer_and_sources
    S = 128
    alone = BabilongTrainingSet(tokenizer, ["qa1"], 6, num_segments, S, sources.background, sources.babi,
                                split="train", question_segment="alone")
    shared = BabilongTrainingSet(tokenizer, ["qa1"], 6, num_segments, S, sources.background, sources.babi,
                                 split="train")
    for item in alone:
        # the context fills num_segments - 1 segments (within 1%); the last holds the question and
        # answer (and at most a few tokens of context)
        assert item["answer_start"] >= (num_segments - 1) * S
        assert len(item["input_ids"]) - (num_segments - 1) * S <= 40
    for item in shared:
        # the official layout: the whole sample fills num_segments segments, context included in the last
        assert len(item["input_ids"]) <= num_segments * S
        assert len(item["input_ids"]) - (num_segments - 1) * S > 40
    with pytest.raises(ValueError, match="question_segment"):
        BabilongTrainingSet(tokenizer, ["qa1"], 1, 2, S, sources.background, sources.babi, question_segment="x")


def test_babi_variant_en_10k_gives_more_training_questions(tokenizer_and_sources):
    from pathlib import Path

    from armt.data.babi import load_babi_task

    tokenizer, _ = tokenizer_and_sources
    # the fixture's en/ qa1 training file is cut to 80 questions, its en-10k/ one holds all 10,000;
    # a segment of 40 tokens leaves no room for background (facts only), which keeps this fast
    folder = Path(__file__).resolve().parents[1] / "fixtures" / "data" / "babi"
    few = len(load_babi_task("qa1", "train", root=folder))
    assert few < 100 and len(load_babi_task("qa1", "train", root=folder, variant="en-10k")) == 10_000
    many = BabilongTrainingSet(tokenizer, ["qa1"], few + 1, 1, 40, None, folder, split="train", babi_variant="en-10k")
    assert len(many) == few + 1
    with pytest.raises(ValueError, match=f"Only {few} qa1 samples"):
        BabilongTrainingSet(tokenizer, ["qa1"], few + 1, 1, 40, None, folder, split="train")


def test_babi_variant_option_is_checked():
    from armt.training.config import RunConfig
    from armt.training.run import babilong_factory

    def make(options):
        cfg = RunConfig.from_dict({"model": {"tiny": {"family": "gpt2"}}, "data": {"kind": "babilong", "options": options},
                                   "curriculum": [{"num_segments": 1, "max_steps": 1}],
                                   "training": {"output_dir": "unused"}})
        return babilong_factory(cfg, tokenizer=object())

    with pytest.raises(ValueError, match="babi_variant='en-20k' is unknown"):
        make({"babi_variant": "en-20k"})
    with pytest.raises(ValueError, match="needs data.options.babi to be a bAbI folder"):
        make({"babi": "builtin", "babi_variant": "en-10k"})
