"""The next-token loss every path shares: forward, reading a stream and perplexity per segment
all score (logits at t, token at t + 1) pairs with :func:`pair_nll`, so half-precision logits are
upcast the same way and the pairs a segment counts are the same everywhere."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

IGNORE = -100


def upcast(logits: Tensor) -> Tensor:
    """float16 and bfloat16 logits as float32 (a log-softmax over a large vocabulary in half
    precision loses the small probabilities); other dtypes unchanged."""
    return logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits


def pair_nll(logits: Tensor, targets: Tensor, valid: Tensor | None = None) -> Tensor:
    """Negative log-likelihood of each target under its logits: ``(..., V)`` and ``(...)`` give
    ``(...)``, 0 where ``valid`` is False or the target is ``-100``.

    Example:
        >>> logits = torch.zeros(1, 2, 4)  # uniform over 4 tokens
        >>> pair_nll(logits, torch.tensor([[3, -100]]))
        tensor([[1.3863, 0.0000]])
    """
    if valid is not None:
        targets = torch.where(valid, targets, IGNORE)
    logits = upcast(logits)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE,
                           reduction="none").view(targets.shape)


def head_pair_nll(head: torch.nn.Module, hidden: Tensor, targets: Tensor, valid: Tensor | None = None) -> Tensor:
    """:func:`pair_nll` of ``head(hidden)``, without keeping the ``(..., V)`` logits and their
    log-softmax for the backward pass: the backward recomputes them from ``hidden``.

    A training step over many segments would otherwise hold two vocabulary-sized tensors per
    segment until its backward (at SmolLM2's 49,152 tokens, 100 MB per segment of 256), since
    the memory links every segment's graph to the last. The values and gradients are those of
    ``pair_nll(head(hidden), targets, valid)``; the head's matrix product runs once more.

    Example:
        >>> head = torch.nn.Linear(8, 5, bias=False)
        >>> hidden = torch.randn(1, 3, 8, requires_grad=True)
        >>> targets = torch.tensor([[1, 4, -100]])
        >>> bool(torch.allclose(head_pair_nll(head, hidden, targets), pair_nll(head(hidden), targets)))
        True
    """
    if not torch.is_grad_enabled():
        return pair_nll(head(hidden), targets, valid)
    return checkpoint(lambda h: pair_nll(head(h), targets, valid), hidden, use_reentrant=False)
