"""Associative retrieval: key-value pairs spread over many segments, then one key is asked
for and the model must answer its value. A built-in toy task needing no tokenizer or files,
for tests, demos and checking that memory carries information across segments."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset

PAD, ASK, EOS = 0, 1, 2  # token ids reserved by the task; keys and values use the rest


@dataclass
class RetrievalConfig:
    """Shape of the associative-retrieval samples.

    Args:
        vocab_size: the model's vocabulary; ids 0-2 are reserved (filler, question mark,
            end of answer), keys and values are drawn from ``3 .. vocab_size - 1``.
        segment_size: real tokens per segment of the model.
        num_segments: each sample is exactly ``num_segments * segment_size`` tokens long.
        key_len, value_len: tokens per key and per value.
        num_pairs: key-value pairs per sample (``None``: as many as fit); the rest is filler,
            and the pairs are spread over the whole sample.
        num_samples: length of the dataset.
        seed: samples depend only on ``(seed, index)``.

    Example:
        >>> ds = RetrievalDataset(RetrievalConfig(vocab_size=64, segment_size=16, num_segments=3))
        >>> item = ds[0]
        >>> item["input_ids"].shape, int(item["answer_start"]), int((item["labels"] != -100).sum())
        (torch.Size([48]), 46, 2)
    """

    vocab_size: int
    segment_size: int
    num_segments: int = 2
    key_len: int = 2
    value_len: int = 1
    num_pairs: int | None = None
    num_samples: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("vocab_size", "segment_size", "num_segments", "key_len", "value_len", "num_samples"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}.")
        if self.vocab_size < 3 + 2:
            raise ValueError(f"vocab_size={self.vocab_size} leaves no room for keys and values (ids 0-2 are reserved).")
        pair = self.key_len + self.value_len
        if self.num_pairs is not None and (isinstance(self.num_pairs, bool) or not isinstance(self.num_pairs, int)
                                           or self.num_pairs < 1):
            raise ValueError(f"num_pairs must be a positive int or None, got {self.num_pairs!r}.")
        if self.length < 1 + self.key_len + self.value_len + 1 + pair * (self.num_pairs or 1):
            raise ValueError(
                f"num_segments * segment_size = {self.length} tokens cannot hold one key-value pair and "
                f"the question ({2 * pair + 2} tokens); use longer segments or more of them."
            )

    @property
    def length(self) -> int:
        return self.segment_size * self.num_segments


class RetrievalDataset(Dataset):
    """``k1 v1 .. k2 v2 .. [ASK q][v_q][EOS]`` samples (pairs among filler); the loss is on ``v_q`` and
    ``EOS`` only. Keys are distinct within a sample; the asked key is uniform over the pairs,
    so its value is usually several segments back. Items hold ``input_ids``, ``labels`` and
    ``answer_start`` (where the answer begins, for exact-match generation)."""

    def __init__(self, config: RetrievalConfig):
        self.config = config

    def __len__(self) -> int:
        return self.config.num_samples

    def __getitem__(self, index: int) -> dict:
        c = self.config
        if not 0 <= index < len(self):
            raise IndexError(index)
        digest = hashlib.sha256(f"{c.seed}:{c.num_segments}:{index}".encode()).digest()
        gen = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
        pair = c.key_len + c.value_len
        tail = 1 + c.key_len + c.value_len + 1  # ASK key value EOS
        n_pairs = (c.length - tail) // pair
        if c.num_pairs is not None:
            n_pairs = min(n_pairs, c.num_pairs)
        filler = c.length - tail - n_pairs * pair
        span = c.vocab_size - 3
        keys = torch.randint(span, (n_pairs * 4, c.key_len), generator=gen) + 3
        keys = torch.unique(keys, dim=0)  # distinct keys (sorted: re-shuffle below)
        keys = keys[torch.randperm(len(keys), generator=gen)][:n_pairs]
        if len(keys) < n_pairs:
            raise ValueError(
                f"vocab_size={c.vocab_size} with key_len={c.key_len} cannot give {n_pairs} distinct keys; "
                "use a larger vocabulary or longer keys."
            )
        values = torch.randint(span, (n_pairs, c.value_len), generator=gen) + 3
        asked = int(torch.randint(n_pairs, (1,), generator=gen))
        # pairs at random places among the filler, in order, so they land in any segment
        slots = torch.full((filler + n_pairs,), -1)
        where = torch.randperm(filler + n_pairs, generator=gen)[:n_pairs].sort().values
        slots[where] = torch.arange(n_pairs)
        pieces = [torch.tensor([PAD]) if j < 0 else torch.cat([keys[j], values[j]]) for j in slots.tolist()]
        ids = torch.cat(pieces + [torch.tensor([ASK]), keys[asked], values[asked], torch.tensor([EOS])])
        labels = torch.full_like(ids, -100)
        start = c.length - c.value_len - 1
        labels[start:] = ids[start:]
        return {"input_ids": ids, "labels": labels, "answer_start": torch.tensor(start)}
