"""The sliding window (``ARMTConfig(sliding_window=True)``): every segment also attends to the
keys and values of the previous segment's real tokens, which cross segments, detached, in the
:class:`~armt.state.MemoryState`.

One segment as the base model sees it; the window comes from a pre-filled Hugging Face cache,
the rest is the segment's input (``o`` = 1 with the sink, else 0)::

    keys       [ window: W tokens | sink? | T tokens      | M memory tokens ]
    positions    o .. o+W-1         0       o+W .. o+W+T-1  o+W+T .. o+W+T+M-1

Positions never grow with the stream. The window was computed in the previous segment at
positions ``o+W'..`` (``W'`` its own window); for RoPE models its keys are re-rotated to
``o..o+W-1`` when they are stored, so the distance between a token and a window token is the
true one. GPT-2's learned positions are added to the input, so its window keeps the positions
it was computed at.

Who sees whom (:func:`window_mask`): token ``i`` sees the sink, the window tokens at most
``segment_size`` tokens back (window entry ``j`` when ``W - j + i <= segment_size``, i.e.
``j >= i`` for a full window) and the segment's tokens ``<= i``; memory tokens see the sink, the
whole window, the whole segment and the memory tokens before them; the sink sees only itself.
Padding is never seen (a padded token sees itself, so no row is empty).

Example:
    >>> import torch
    >>> m = window_mask(torch.ones(1, 3, dtype=torch.bool), torch.ones(1, 3, dtype=torch.bool),
    ...                 sink=False, num_mem_tokens=1, segment_size=3)
    >>> m[0, 0].int()  # rows: tokens 0-2, memory token; columns: window 0-2, tokens 0-2, memory
    tensor([[1, 1, 1, 1, 0, 0, 0],
            [0, 1, 1, 1, 1, 0, 0],
            [0, 0, 1, 1, 1, 1, 0],
            [1, 1, 1, 1, 1, 1, 1]], dtype=torch.int32)
"""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

from . import families
from .state import LayerMemory, MemoryState

ATTENTION_IMPLEMENTATIONS = ("sdpa", "eager")

_WINDOW, _SINK, _TOKEN, _MEMORY = 0, 1, 2, 3


def rotary_module(runner: nn.Module) -> nn.Module | None:
    """The base model's rotary embedding if the window supports it (``None`` for learned
    positions); raises for families or attention implementations the window does not support."""
    config = getattr(runner, "config", None)
    family = families.family_of(config)
    attn = getattr(config, "_attn_implementation", None)
    if family is None:
        raise ValueError(
            f"sliding_window=True does not support model_type={getattr(config, 'model_type', None)!r}: the window "
            f"must know how the family encodes positions. Supported: {families.SUPPORTED_TYPES}; "
            "use sliding_window=False for other models."
        )
    if attn not in ATTENTION_IMPLEMENTATIONS:
        raise ValueError(
            f"sliding_window=True needs an explicit attention mask, which attn_implementation={attn!r} "
            f"does not take; load the base model with attn_implementation in {ATTENTION_IMPLEMENTATIONS}."
        )
    if family.positions == "learned":
        return None
    backbone = getattr(runner, "base_model", runner)
    rotary = getattr(backbone, "rotary_emb", None)
    if rotary is None or not hasattr(rotary, "inv_freq"):
        raise ValueError(
            f"{type(runner).__name__} has no rotary embedding at {type(backbone).__name__}.rotary_emb; "
            "the sliding window cannot place its keys. Use sliding_window=False."
        )
    return rotary


def check_positions(runner: nn.Module, needed: int, segment_size: int) -> None:
    """Refuse a layout that would run past a learned position table (GPT-2's ``n_positions``);
    RoPE has no table, so nothing is checked there."""
    config = runner.config
    limit = families.position_table(config)
    if limit is not None and needed > limit:
        spare = needed - 2 * segment_size
        raise ValueError(
            f"sliding_window=True places tokens at positions up to {needed - 1} (sink + window + segment + "
            f"memory tokens), but {type(runner).__name__} has n_positions={limit}; use segment_size <= "
            f"{(limit - spare) // 2}."
        )


def cache_argument(module: nn.Module) -> str:
    """The name under which ``module.forward`` takes its key/value cache (transformers 5.2x
    renamed ``past_key_values`` to ``cache``)."""
    return "cache" if "cache" in inspect.signature(module.forward).parameters else "past_key_values"


def window_mask(
    window_valid: Tensor,
    token_valid: Tensor,
    *,
    sink: bool,
    num_mem_tokens: int,
    segment_size: int,
    query_tokens: range | None = None,
    query_sink: bool | None = None,
    query_memory: bool = True,
) -> Tensor:
    """Which keys each query of a segment sees, ``(B, 1, queries, keys)`` bool.

    Args:
        window_valid: ``(B, W)`` real (True) or padding window entries.
        token_valid: ``(B, T)`` real or padding tokens of the segment (all T are keys).
        sink: whether the keys hold the sink (between the window and the tokens).
        num_mem_tokens: memory tokens after the tokens (keys, and queries with ``query_memory``).
        segment_size: the window reaches this many tokens back.
        query_tokens: which tokens are queries (default all); decoding asks for the last ones.
        query_sink: whether the sink is a query (default: ``sink`` and the first token is one).
        query_memory: whether the memory tokens are queries.
    """
    B, W = window_valid.shape
    T = token_valid.shape[1]
    device = token_valid.device
    o = int(sink)
    M = num_mem_tokens
    query_tokens = range(T) if query_tokens is None else query_tokens
    if query_sink is None:
        query_sink = sink and (len(query_tokens) == 0 or query_tokens.start == 0)

    def layout(counts):
        kinds = torch.cat([torch.full((n,), k, dtype=torch.long, device=device) for k, n, _ in counts])
        index = torch.cat([torch.as_tensor(idx, dtype=torch.long, device=device) for _, n, idx in counts])
        return kinds, index

    k_kind, k_idx = layout([(_WINDOW, W, range(W)), (_SINK, o, range(o)), (_TOKEN, T, range(T)),
                            (_MEMORY, M, range(M))])
    q_kind, q_idx = layout([(_SINK, int(query_sink), range(int(query_sink))),
                            (_TOKEN, len(query_tokens), query_tokens),
                            (_MEMORY, M if query_memory else 0, range(M if query_memory else 0))])
    qk, kk = q_kind[:, None], k_kind[None, :]
    qi, ki = q_idx[:, None], k_idx[None, :]
    token_q, memory_q = qk == _TOKEN, qk == _MEMORY
    sees = (
        (kk == _SINK)
        | (token_q & (kk == _WINDOW) & (W - ki + qi <= segment_size))
        | (token_q & (kk == _TOKEN) & (ki <= qi))
        | (memory_q & (kk != _MEMORY))
        | (memory_q & (kk == _MEMORY) & (ki <= qi))
    )
    sees = sees & ~((qk == _SINK) & (kk != _SINK))
    key_valid = torch.cat([window_valid.bool(), torch.ones(B, o, dtype=torch.bool, device=device),
                           token_valid.bool(), torch.ones(B, M, dtype=torch.bool, device=device)], dim=1)
    itself = (qk == kk) & (qi == ki)
    return ((sees[None] & key_valid[:, None, :]) | itself[None]).unsqueeze(1)  # (B, 1, Q, K)


def model_mask(mask: Tensor, runner: nn.Module, dtype: torch.dtype) -> Tensor:
    """The boolean mask as the base model's attention takes it: as is for sdpa, additive
    (0 or the dtype's minimum) for eager, which adds the mask to the scores."""
    if runner.config._attn_implementation == "sdpa":
        return mask
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)


def _rotate_half(x: Tensor) -> Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def move_keys(keys: Tensor, rotary: nn.Module | None, start: int, new_start: int) -> Tensor:
    """Keys ``(B, H, L, d)`` rotated by the model at positions ``start..`` re-rotated to
    ``new_start..`` (unchanged without RoPE).

    The model's own ``cos``/``sin`` undo and redo the rotation, so the result equals the
    model's keys at the new positions to rounding, although its angles are float32.
    """
    if rotary is None or start == new_start or keys.shape[2] == 0:
        return keys
    L = keys.shape[2]
    work = keys.float() if keys.dtype in (torch.float16, torch.bfloat16) else keys
    positions = torch.arange(L, device=keys.device).unsqueeze(0)
    cos0, sin0 = (t.to(work.dtype).unsqueeze(1) for t in rotary(work, positions + start))  # (1, 1, L, rot)
    cos1, sin1 = (t.to(work.dtype).unsqueeze(1) for t in rotary(work, positions + new_start))
    rot = cos0.shape[-1]
    k, rest = work[..., :rot], work[..., rot:]
    # k = c * x + s * rotate_half(x) inverts exactly as x = (c * k - s * rotate_half(k)) / (c^2 + s^2)
    plain = (k * cos0 - _rotate_half(k) * sin0) / (cos0 * cos0 + sin0 * sin0)
    moved = plain * cos1 + _rotate_half(plain) * sin1
    return torch.cat([moved, rest], dim=-1).to(keys.dtype)


def prefilled_cache(memory: MemoryState | None):
    """A Hugging Face ``DynamicCache`` holding the window's keys and values (empty without one)."""
    from transformers import DynamicCache

    if memory is None or memory.window_mask is None:
        return DynamicCache()
    return DynamicCache([(m.window_keys, m.window_values) for m in memory.layers])


def new_window(cache, layers: tuple[LayerMemory, ...], start: int, token_valid: Tensor,
               rotary: nn.Module | None, position: int, new_position: int
               ) -> tuple[tuple[LayerMemory, ...], Tensor]:
    """The next segment's window: the keys and values of the segment's tokens, found at cache
    entries ``start..start+T-1`` and computed at positions ``position..``, detached and moved to
    ``new_position..``; returns the freshly written ``layers`` with it, and its mask."""
    T = token_valid.shape[1]
    out = []
    for i, m in enumerate(layers):
        entry = cache.layers[i]
        keys = entry.keys[:, :, start:start + T].detach()
        values = entry.values[:, :, start:start + T].detach()
        out.append(LayerMemory(m.A, m.z, move_keys(keys, rotary, position, new_position), values))
    return tuple(out), token_valid.bool()
