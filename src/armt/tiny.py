"""Small random base models (the configurations of the official reference dumps), for demos,
benchmarks and tests; nothing is downloaded."""

from __future__ import annotations

import torch
from torch import nn

TINY_FAMILIES = ("gpt2", "llama", "gpt_neox")


def tiny_base_model(family: str = "gpt2", *, layers: int = 4, hidden: int = 128, vocab: int = 1000,
                    max_positions: int = 1024, attn: str = "sdpa", seed: int = 0,
                    dropout: float | None = None, heads: int | None = None,
                    intermediate: int | None = None) -> nn.Module:
    """A random GPT-2, Llama or GPT-NeoX causal LM; the defaults are the reference dumps' configs.
    ``dropout`` overrides the family's default dropout (GPT-2: 0.1, Llama and GPT-NeoX: 0);
    ``heads`` (default ``hidden // 32``) and ``intermediate`` (MLP width; GPT-2 and GPT-NeoX
    ``4 * hidden``, Llama ``2 * hidden``) override the defaults.

    Example:
        >>> tiny_base_model("llama").config.num_hidden_layers
        4
    """
    import transformers

    heads = heads or max(1, hidden // 32)
    if family == "gpt2":
        cfg = transformers.GPT2Config(n_layer=layers, n_embd=hidden, n_head=heads, n_inner=intermediate,
                                      vocab_size=vocab, n_positions=max_positions,
                                      bos_token_id=vocab - 1, eos_token_id=vocab - 1)
    elif family == "llama":
        cfg = transformers.LlamaConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                                       num_key_value_heads=max(1, heads // 2),
                                       intermediate_size=intermediate or 2 * hidden,
                                       vocab_size=vocab, max_position_embeddings=max_positions)
    elif family == "gpt_neox":
        cfg = transformers.GPTNeoXConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                                         intermediate_size=intermediate or 4 * hidden, vocab_size=vocab,
                                         max_position_embeddings=max_positions, bos_token_id=vocab - 1,
                                         eos_token_id=vocab - 1)
    else:
        raise ValueError(f"family={family!r} is not a tiny family; use one of {TINY_FAMILIES}.")
    if dropout is not None:
        names = {"gpt2": ("resid_pdrop", "embd_pdrop", "attn_pdrop"), "llama": ("attention_dropout",),
                 "gpt_neox": ("attention_dropout", "hidden_dropout")}[family]
        for name in names:
            setattr(cfg, name, dropout)
    cfg._attn_implementation = attn
    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()
