"""Vectorised associative memory: the same maths as :mod:`armt.ops.reference`, as a few
batched matmuls per segment and layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

EPS = 1e-5


def dpfp(x: Tensor, nu: int) -> Tensor:
    """DPFP feature map followed by L2 normalisation: ``(..., d) -> (..., 2 * nu * d)``."""
    u = torch.cat([x, -x], dim=-1).relu()  # (..., n), n = 2d
    n = u.shape[-1]
    # roll(u, j) = [u[n-j:], u[:n-j]]; the nu rolls side by side come from one copy of slices
    rolled = torch.cat([piece for j in range(1, nu + 1) for piece in (u[..., n - j:], u[..., :n - j])], dim=-1)
    f = (u.unsqueeze(-2) * rolled.unflatten(-1, (nu, n))).flatten(-2)  # (..., nu * n)
    return F.normalize(f, p=2.0, dim=-1)


def _bmm(x: Tensor, y: Tensor) -> Tensor:
    """``x @ y`` over matching leading dims as one 3-D ``bmm``: on CPU several times faster than
    the 4-D ``matmul`` (forward and backward) for the small per-item matrices of a segment."""
    lead = x.shape[:-2]
    return torch.bmm(x.reshape(-1, *x.shape[-2:]), y.reshape(-1, *y.shape[-2:])).view(*lead, x.shape[-2], y.shape[-1])


def _norm(x: Tensor, z: Tensor) -> Tensor:
    """``x . z`` for every row of ``x`` ``(..., T, d)`` against ``z`` ``(..., d)``: ``(..., T, 1)``.
    Elementwise, so ``A`` is never copied to append ``z`` as a column."""
    return (x * z.unsqueeze(-2)).sum(dim=-1, keepdim=True)


def read(q: Tensor, A: Tensor, z: Tensor | None) -> Tensor:
    """Read the memory at every query: ``(q A) / (q . z + eps)``.

    Args:
        q: ``(B, H, T, d_key)`` query features (already through :func:`dpfp`).
        A: ``(B, H, d_key, d_value)``.
        z: ``(B, H, d_key)`` or ``None`` (no normaliser).

    Returns:
        ``(B, H, T, d_value)``.
    """
    if z is None:
        return _bmm(q, A)
    return _bmm(q, A) / (_norm(q, z) + EPS)


def gate(x: Tensor, kind: str) -> Tensor:
    """Write strength from the ``W_mb`` projection: ``sigmoid`` (official) or ``hard``
    (``clip(x / 4 + 1/2, 0, 1)``: the sigmoid's slope at 0, and exactly 0 or 1 beyond +-2)."""
    if kind == "sigmoid":
        return torch.sigmoid(x)
    return (x * 0.25 + 0.5).clamp(0, 1)


def write(
    k: Tensor,
    v: Tensor,
    beta: Tensor,
    memory: tuple[Tensor, Tensor | None] | None,
    *,
    use_denom: bool,
    correction: bool,
    z_by_beta: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Write the memory tokens of one segment with the delta rule.

    Args:
        k: ``(B, H, M, d_key)`` key features (already through :func:`dpfp`).
        v: ``(B, H, M, d_value)`` values.
        beta: ``(B, H, M, 1)`` write strength per head, or ``(B, H, M, d_value)`` with gating.
        memory: ``(A, z)`` before the write, or ``None`` for the empty memory.
        use_denom: keep and use the normaliser ``z``.
        correction: scale the ``z`` update by the detached ``gamma``.
        z_by_beta: scale the ``z`` update by the write strength too (``write_gate="hard"``;
            with gating, by its mean over the value dimensions).

    Returns:
        ``(A, z)`` after the write; ``z`` is ``None`` when ``use_denom`` is False.
    """
    kt = k.transpose(-1, -2).contiguous()  # (B, H, d_key, M)
    # what each token adds to z: k, or beta k, so that a token written with beta = 0 changes nothing
    kz = k * beta.mean(dim=-1, keepdim=True) if z_by_beta else k
    if memory is None:
        A = _bmm(kt, beta * v)
        z = kz.sum(dim=-2) if use_denom else None
        return A, z
    A_old, z_old = memory
    if use_denom:
        denom = _norm(k, z_old) + EPS  # (B, H, M, 1)
        v_old = _bmm(k, A_old) / denom
        if correction:
            gamma = (1 - denom / (k * k).sum(dim=-1, keepdim=True)).clamp(0, 1).detach()
            z = z_old + (gamma * kz).sum(dim=-2)
        else:
            z = z_old + kz.sum(dim=-2)
    else:
        v_old = _bmm(k, A_old)
        z = None
    # one fused pass over A (add and product together): A is the largest tensor of a segment
    dv = beta * (v - v_old)
    A = torch.baddbmm(A_old.reshape(-1, *A_old.shape[-2:]), kt.reshape(-1, *kt.shape[-2:]),
                      dv.reshape(-1, *dv.shape[-2:])).view(A_old.shape)
    return A, z
