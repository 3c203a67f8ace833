"""Operations on weights stacked over decoder layers, from which each family writes its
wavefront layer: tensors ``(L', ...)`` with one entry per active layer."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def stack(tensors, transpose: bool = False) -> Tensor:
    """One tensor ``(L, ...)`` of per-layer weights (each transposed with ``transpose``)."""
    # differentiable when built with gradients on (a training forward), a plain copy otherwise
    return torch.stack([t.t() if transpose else t for t in tensors]).contiguous()


def bias(linear: nn.Module, out_features: int, like: Tensor) -> Tensor:
    """A linear layer's bias, or zeros where it has none (so biased and unbiased layers stack)."""
    b = getattr(linear, "bias", None)
    return b if b is not None else like.new_zeros(out_features)


def linear(x: Tensor, weight: Tensor, b: Tensor | None) -> Tensor:
    """``x @ weight + b`` for each active layer: x ``(L', n, in)``, weight ``(L', in, out)``."""
    if b is None:
        return torch.bmm(x, weight)
    return torch.baddbmm(b.unsqueeze(1), x, weight)


def layer_norm(h: Tensor, params: tuple[Tensor, Tensor], sl: slice, eps: float) -> Tensor:
    """LayerNorm of ``h`` ``(L', B, P, D)`` with each active layer's own weight and bias."""
    w, b = params
    return torch.addcmul(b[sl, None, None, :], F.layer_norm(h, h.shape[-1:], eps=eps), w[sl, None, None, :])


def rms_norm(h: Tensor, w: Tensor, sl: slice, eps: float) -> Tensor:
    """RMSNorm of ``h`` ``(L', B, P, D)`` in float32, as Hugging Face's Llama-style layers."""
    x = h.float()
    x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)
    return w[sl, None, None, :] * x.to(h.dtype)


def rope_tables(rotary: nn.Module, x: Tensor) -> tuple[Tensor, Tensor]:
    """``(cos, sin)`` ``(1, 1, P, rotary_dim)`` of the base model's rotary embedding for a
    segment's positions ``0 .. P-1`` (x: ``(..., P, D)``)."""
    P = x.shape[-2]
    cos, sin = rotary(x.reshape(-1, P, x.shape[-1])[:1], torch.arange(P, device=x.device).unsqueeze(0))
    return cos.unsqueeze(1), sin.unsqueeze(1)


def rotate(x: Tensor, rope: tuple[Tensor, Tensor]) -> Tensor:
    """Rotary position embedding of the first ``rotary_dim`` features of ``x`` (all of them
    for Llama, a share for GPT-NeoX), as Hugging Face's ``rotate_half`` convention."""
    cos, sin = rope
    r = cos.shape[-1]
    x_rot = x[..., :r]
    rotated = torch.cat([-x_rot[..., r // 2:], x_rot[..., :r // 2]], dim=-1)
    out = x_rot * cos + rotated * sin
    return out if r == x.shape[-1] else torch.cat([out, x[..., r:]], dim=-1)


def attend(q: Tensor, k: Tensor, v: Tensor, scale: float) -> Tensor:
    """Causal attention over a segment's positions."""
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
