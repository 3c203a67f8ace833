"""Adapters (peft) around a base model: the one place that knows how to see through them."""

from __future__ import annotations

from torch import nn


def unwrap_adapters(model: nn.Module) -> nn.Module:
    """The model that actually runs: for a peft ``PeftModel`` the wrapped transformers model.

    peft injects its adapters into the wrapped model's modules in place, so calling that model
    keeps them active while exposing the plain Hugging Face signature (``logits_to_keep``,
    ``base_model`` without the head).

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> base = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=8, n_head=2, vocab_size=11))
        >>> unwrap_adapters(base) is base, has_adapters(base)
        (True, False)
    """
    get = getattr(model, "get_base_model", None)
    if callable(get) and type(model).__module__.split(".")[0] == "peft":
        return get()
    return model


def has_adapters(model: nn.Module) -> bool:
    """True when ``model`` is a peft wrapper (its adapters live in the model it wraps)."""
    return unwrap_adapters(model) is not model
