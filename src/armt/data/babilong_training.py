"""BABILong samples as training data: ``[bos][noisy facts][question][answer][eos]`` filling
``num_segments`` segments, loss on the answer and EOS only (the official ARMT recipe), with
``answer_start`` for exact-match evaluation by generation."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from .babilong import BabilongPrompt, iter_babilong
from .babilong_prompt import check_question_segment

# room left in the last segment for the question, the answer and EOS
QUERY_BUDGET = 48


class BabilongTrainingSet(Dataset):
    """``n`` samples per task of exactly ``num_segments * segment_size`` tokens or fewer
    (context + question + answer), built once and kept as token ids.

    Args:
        tokenizer: Hugging Face tokenizer of the model.
        tasks: e.g. ``["qa1", "qa2"]``; samples are interleaved task by task.
        n: samples per task.
        num_segments, segment_size: the length the samples fill.
        sentences: background sentences (a :class:`~armt.data.books.BookSource`, a list).
        babi_source: a bAbI folder, ``"builtin"`` or samples (see
            :func:`armt.data.babilong.iter_babilong`).
        split: bAbI split to draw questions from (``"train"`` for training).
        seed: background placement seed.
        prompt: the template shared with evaluation.
        question_segment: ``shared`` fills the last segment with the end of the context, the
            question and the answer (the official recipe); ``alone`` gives the context exactly
            ``num_segments - 1`` segments and puts the question and answer in the last one by
            themselves, as ``armt babilong eval`` lays out a sample of that length (``0.5k`` with
            segments of 256: two segments of context, then the question). Only the memory can
            then carry the facts to the question.
        babi_variant: ``"en"`` or ``"en-10k"`` (10,000 training questions per task instead of
            1,000) when ``babi_source`` is a bAbI folder.
    """

    def __init__(self, tokenizer, tasks: Sequence[str], n: int, num_segments: int, segment_size: int,
                 sentences: Any, babi_source: Any, *, split: str = "train", seed: int = 0,
                 prompt: BabilongPrompt | None = None, question_segment: str = "shared",
                 babi_variant: str = "en"):
        prompt = prompt or BabilongPrompt()
        check_question_segment(question_segment)
        prefix = len(prompt.head_ids(tokenizer))
        if question_segment == "alone":  # the context of an evaluation length, the question after it
            context = (num_segments - 1) * segment_size
            total = prefix + context + segment_size
        else:
            total = num_segments * segment_size
            context = max(0, total - QUERY_BUDGET - prefix)
        self.items: list[dict] = []
        per_task = []
        for task in tasks:
            samples = []
            for sample in iter_babilong(task, context, n, tokenizer, sentences, seed, babi_source,
                                        split=split, on_overflow="skip", babi_variant=babi_variant):
                ids, start = prompt.example_ids(tokenizer, sample.input_ids(), sample.question, sample.target)
                if len(ids) > total:  # an unusually long question: drop context from the front
                    cut = len(ids) - total
                    ids, start = ids[:prefix] + ids[prefix + cut:], start - cut
                ids = torch.tensor(ids)
                labels = torch.full_like(ids, -100)
                labels[start:] = ids[start:]
                samples.append({"input_ids": ids, "labels": labels, "answer_start": torch.tensor(start),
                                "task": task})
            per_task.append(samples)
        for group in zip(*per_task):
            self.items.extend(group)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict:
        return self.items[index]
