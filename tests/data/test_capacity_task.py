"""The ARMT paper's capacity task: layout, distinct keys, the rewrite rule, determinism."""

from __future__ import annotations

import pytest
import torch

from armt.data.capacity import CapacityConfig, CapacityDataset, capacity_batch


def _pairs(ids, cfg):
    seg = ids[: cfg.num_pairs * cfg.segment_size].view(cfg.num_pairs, cfg.segment_size)
    return seg[:, : cfg.key_len], seg[:, cfg.key_len], seg[:, cfg.key_len + 1:]


@pytest.mark.parametrize("n", [1, 5, 64])
def test_remember_layout_distinct_keys_and_the_answer(n):
    cfg = CapacityConfig(num_pairs=n)
    batch = capacity_batch(cfg, 16, torch.Generator().manual_seed(n))
    assert batch["input_ids"].shape == (16, (n + 1) * 4)
    for ids, labels in zip(batch["input_ids"], batch["labels"]):
        keys, sep, values = _pairs(ids, cfg)
        assert (sep == cfg.colon).all() and ids[-2] == cfg.ask
        assert len({tuple(k.tolist()) for k in keys}) == n  # distinct keys
        assert ids.max() < cfg.vocab_size and ids[: n * 4].lt(cfg.num_symbols).logical_or(
            ids[: n * 4].eq(cfg.colon)).all()
        query = ids[-4:-2]
        where = [i for i, k in enumerate(keys) if torch.equal(k, query)]
        assert len(where) == 1 and ids[-1] == values[where[0], 0]
        assert (labels != -100).sum() == 1 and labels[-1] == ids[-1]


def test_rewrite_has_repeated_keys_and_the_latest_value_is_the_answer():
    cfg = CapacityConfig(num_pairs=16, variant="rewrite")
    batch = capacity_batch(cfg, 64, torch.Generator().manual_seed(0))
    repeats = 0
    for ids in batch["input_ids"]:
        keys, _, values = _pairs(ids, cfg)
        repeats += len({tuple(k.tolist()) for k in keys}) < 16
        where = [i for i, k in enumerate(keys) if torch.equal(k, ids[-4:-2])]
        assert where and ids[-1] == values[max(where), 0]
    assert repeats == 64


def test_dataset_is_deterministic_and_seeded():
    a = CapacityDataset(CapacityConfig(num_pairs=3, num_samples=300, seed=1))
    b = CapacityDataset(CapacityConfig(num_pairs=3, num_samples=300, seed=1))
    c = CapacityDataset(CapacityConfig(num_pairs=3, num_samples=300, seed=2))
    assert torch.equal(a[299]["input_ids"], b[299]["input_ids"])
    assert torch.equal(a.batch()["input_ids"][7], a[7]["input_ids"])
    assert not torch.equal(a.batch()["input_ids"], c.batch()["input_ids"])


def test_bad_configs_name_the_field():
    with pytest.raises(ValueError, match="variant"):
        CapacityConfig(num_pairs=2, variant="forget")
    with pytest.raises(ValueError, match="distinct keys"):
        CapacityConfig(num_pairs=300)
    with pytest.raises(ValueError, match="num_pairs"):
        CapacityConfig(num_pairs=0)
