"""Small random base models (the configurations of the official reference dumps), for demos,
benchmarks and tests; nothing is downloaded."""

from __future__ import annotations

import torch
from torch import nn

from . import families

TINY_FAMILIES = families.TINY_TYPES


def tiny_base_model(family: str = families.DEFAULT_TINY, *, layers: int = 4, hidden: int = 128, vocab: int = 1000,
                    max_positions: int = 1024, attn: str = "sdpa", seed: int = 0,
                    dropout: float | None = None, heads: int | None = None,
                    intermediate: int | None = None) -> nn.Module:
    """A random GPT-2, Llama or GPT-NeoX causal LM; the defaults are the reference dumps' configs.
    ``dropout`` overrides the family's default dropout (GPT-2: 0.1, Llama and GPT-NeoX: 0);
    ``heads`` (default ``hidden // 32``) and ``intermediate`` (MLP width; GPT-2 and GPT-NeoX
    ``4 * hidden``, Llama ``2 * hidden``) override the defaults. The configs come from
    :func:`armt.families.tiny_config`.

    Example:
        >>> tiny_base_model("llama").config.num_hidden_layers
        4
    """
    import transformers

    if family not in TINY_FAMILIES:
        raise ValueError(f"family={family!r} is not a tiny family; use one of {TINY_FAMILIES}.")
    cfg = families.tiny_config(family, layers=layers, hidden=hidden, heads=heads, vocab=vocab,
                               max_positions=max_positions, intermediate=intermediate, dropout=dropout)
    cfg._attn_implementation = attn
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()
