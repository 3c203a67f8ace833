"""The shared next-token loss."""

from __future__ import annotations

import torch

from armt.loss import pair_nll, upcast


def test_pair_nll_is_minus_the_log_probability_of_each_target():
    logits = torch.randn(2, 5, 7, dtype=torch.float64)
    targets = torch.randint(7, (2, 5))
    want = -logits.log_softmax(-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(pair_nll(logits, targets), want)
    valid = torch.rand(2, 5) > 0.5
    torch.testing.assert_close(pair_nll(logits, targets, valid), torch.where(valid, want, 0.0))
    torch.testing.assert_close(pair_nll(logits, targets.masked_fill(~valid, -100)), torch.where(valid, want, 0.0))
    # one position: (B, V) and (B,)
    torch.testing.assert_close(pair_nll(logits[:, 0], targets[:, 0]), want[:, 0])


def test_half_precision_logits_are_scored_in_float32():
    logits = torch.randn(3, 4, 50).to(torch.bfloat16)
    targets = torch.randint(50, (3, 4))
    out = pair_nll(logits, targets)
    assert out.dtype == torch.float32 and upcast(logits).dtype == torch.float32
    torch.testing.assert_close(out, pair_nll(logits.float(), targets))
    assert upcast(torch.zeros(1, dtype=torch.float64)).dtype == torch.float64
