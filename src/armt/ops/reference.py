"""Loop-based reference of the associative memory: slow, plain, obviously right.

Equations (per layer, per head; ``phi`` is DPFP then L2 normalisation):

- read at every position t:   ``out_t = (q_t A) / (q_t . z + eps)``
- write from memory tokens j: ``v_old_j = (k_j A) / (k_j . z + eps)`` (0 for an empty memory),
  ``gamma_j = clip(1 - (k_j . z + eps) / |k_j|^2, 0, 1)`` detached (1 for an empty memory or
  without correction), ``A += sum_j beta_j k_j^T (v_j - v_old_j)``, ``z += sum_j gamma_j k_j``.

Every ``v_old_j`` and ``gamma_j`` uses the memory as it was before the write: the memory
tokens of one segment are written together, not one after another.

Opt-in (``ARMTConfig(write_gate="hard")``): ``beta = clip(x / 4 + 1/2, 0, 1)`` instead of
``sigmoid(x)``, so a write can be exactly off, and ``z += sum_j gamma_j beta_j k_j`` (``beta_j``
averaged over the value dimensions with gating): a token written with ``beta = 0`` changes neither
``A`` nor ``z``.
"""

from __future__ import annotations

import torch
from torch import Tensor

EPS = 1e-5


def dpfp(x: Tensor, nu: int) -> Tensor:
    """DPFP feature map followed by L2 normalisation: ``(..., d) -> (..., 2 * nu * d)``."""
    u = torch.cat([x.clamp(min=0), (-x).clamp(min=0)], dim=-1)
    n = u.shape[-1]
    feats = []
    for j in range(1, nu + 1):
        for i in range(n):
            # roll(u, j)[i] == u[i - j]
            feats.append(u[..., i] * u[..., (i - j) % n])
    f = torch.stack(feats, dim=-1)
    return f / f.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def read(q: Tensor, A: Tensor, z: Tensor | None) -> Tensor:
    """Read the memory at every query.

    Args:
        q: ``(B, H, T, d_key)`` query features (already through :func:`dpfp`).
        A: ``(B, H, d_key, d_value)``.
        z: ``(B, H, d_key)`` or ``None`` (no normaliser).

    Returns:
        ``(B, H, T, d_value)``.
    """
    B, H, T, _ = q.shape
    rows = []
    for b in range(B):
        heads = []
        for h in range(H):
            outs = []
            for t in range(T):
                num = (q[b, h, t, :, None] * A[b, h]).sum(0)
                if z is not None:
                    num = num / ((q[b, h, t] * z[b, h]).sum() + EPS)
                outs.append(num)
            heads.append(torch.stack(outs))
        rows.append(torch.stack(heads))
    return torch.stack(rows)


def gate(x: Tensor, kind: str) -> Tensor:
    """Write strength from the ``W_mb`` projection: ``sigmoid`` (official) or ``hard``."""
    if kind == "sigmoid":
        return 1 / (1 + torch.exp(-x))
    return torch.clamp(x / 4 + 0.5, 0, 1)


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
        z_by_beta: scale the ``z`` update by the write strength too (``write_gate="hard"``).

    Returns:
        ``(A, z)`` after the write; ``z`` is ``None`` when ``use_denom`` is False.
    """
    B, H, M, dk = k.shape
    dv = v.shape[-1]
    new_A, new_z = [], []
    for b in range(B):
        heads_A, heads_z = [], []
        for h in range(H):
            if memory is None:
                A_old = torch.zeros(dk, dv, dtype=v.dtype, device=v.device)
                z_old = torch.zeros(dk, dtype=v.dtype, device=v.device)
            else:
                A_old = memory[0][b, h]
                z_old = memory[1][b, h] if use_denom else None
            A_new = A_old
            z_new = z_old
            for j in range(M):
                kj = k[b, h, j]
                if memory is None:
                    v_old = torch.zeros(dv, dtype=v.dtype, device=v.device)
                    gamma = 1.0
                else:
                    v_old = (kj[:, None] * A_old).sum(0)
                    gamma = 1.0
                    if use_denom:
                        denom = (kj * z_old).sum() + EPS
                        v_old = v_old / denom
                        if correction:
                            gamma = (1 - denom / (kj * kj).sum()).clamp(0, 1).detach()
                A_new = A_new + kj[:, None] * (beta[b, h, j] * (v[b, h, j] - v_old))[None, :]
                if use_denom:
                    strength = beta[b, h, j].mean() if z_by_beta else 1.0
                    z_new = z_new + gamma * strength * kj
            heads_A.append(A_new)
            heads_z.append(z_new)
        new_A.append(torch.stack(heads_A))
        if use_denom:
            new_z.append(torch.stack(heads_z))
    return torch.stack(new_A), (torch.stack(new_z) if use_denom else None)
