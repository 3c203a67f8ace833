"""The shared next-token loss."""

from __future__ import annotations

import torch

from armt.loss import head_pair_nll, pair_nll, upcast


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


def test_head_pair_nll_equals_pair_nll_of_the_head_with_gradients():
    torch.manual_seed(0)
    head = torch.nn.Linear(8, 11, dtype=torch.float64)
    hidden = torch.randn(2, 5, 8, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(11, (2, 5))
    valid = torch.rand(2, 5) > 0.3
    want = pair_nll(head(hidden), targets, valid)
    gh, gw = torch.autograd.grad(want.sum(), (hidden, head.weight))
    got = head_pair_nll(head, hidden, targets, valid)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    got_h, got_w = torch.autograd.grad(got.sum(), (hidden, head.weight))
    torch.testing.assert_close(got_h, gh, rtol=0, atol=1e-12)
    torch.testing.assert_close(got_w, gw, rtol=0, atol=1e-12)


def test_head_pair_nll_keeps_no_vocabulary_sized_tensor_for_the_backward():
    head = torch.nn.Linear(4, 1000, bias=False)
    hidden = torch.randn(1, 6, 4, requires_grad=True)
    targets = torch.randint(1000, (1, 6))

    def largest_saved(fn):
        sizes = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: sizes.append(t.numel()) or t, lambda t: t):
            fn().sum().backward()
        return max(sizes)

    assert largest_saved(lambda: pair_nll(head(hidden), targets)) >= 6 * 1000
    assert largest_saved(lambda: head_pair_nll(head, hidden, targets)) < 6 * 1000
