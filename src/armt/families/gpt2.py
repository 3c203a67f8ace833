"""GPT-2: learned positions, pre-LayerNorm blocks ``h + attn(ln_1 h)``, ``h + mlp(ln_2 h)``,
Conv1D weights stored as ``(in, out)``."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import stacked as S
from .family import Family


class StackedGPT2:
    """GPT-2 blocks with their weights stacked over the layers (the wavefront's layer)."""

    def __init__(self, causal_lm: nn.Module, layers):
        cfg = causal_lm.config
        from transformers.activations import ACT2FN

        self.act = ACT2FN[cfg.activation_function]
        if cfg.activation_function in ("gelu_new", "gelu_pytorch_tanh"):
            # the same tanh approximation as one fused kernel instead of seven elementwise passes
            self.act = lambda x: F.gelu(x, approximate="tanh")
        self.heads = cfg.n_head
        self.eps = cfg.layer_norm_epsilon
        D = cfg.n_embd
        self.scale = (D // self.heads) ** -0.5 if cfg.scale_attn_weights else 1.0
        self.wpe = causal_lm.transformer.wpe
        self.final_norm = causal_lm.transformer.ln_f
        self.ln1 = (S.stack(l.ln_1.weight for l in layers), S.stack(l.ln_1.bias for l in layers))
        self.ln2 = (S.stack(l.ln_2.weight for l in layers), S.stack(l.ln_2.bias for l in layers))
        # Conv1D keeps its weight as (in, out): already the layout of x @ W
        self.qkv = (S.stack(l.attn.c_attn.weight for l in layers), S.stack(l.attn.c_attn.bias for l in layers))
        self.proj = (S.stack(l.attn.c_proj.weight for l in layers), S.stack(l.attn.c_proj.bias for l in layers))
        self.fc = (S.stack(l.mlp.c_fc.weight for l in layers), S.stack(l.mlp.c_fc.bias for l in layers))
        self.fc_out = (S.stack(l.mlp.c_proj.weight for l in layers), S.stack(l.mlp.c_proj.bias for l in layers))

    def embed(self, x: Tensor) -> Tensor:
        """Model-level input of the first layer: the token (and memory) embeddings plus positions."""
        P = x.shape[-2]
        return x + self.wpe(torch.arange(P, device=x.device))

    def __call__(self, h: Tensor, sl: slice) -> Tensor:
        Lp, B, P, D = h.shape
        H = self.heads
        flat = S.layer_norm(h, self.ln1, sl, self.eps).view(Lp, B * P, D)
        qkv = S.linear(flat, self.qkv[0][sl], self.qkv[1][sl]).view(Lp * B, P, 3, H, D // H)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (L'B, H, P, D/H)
        o = S.attend(q, k, v, self.scale).transpose(1, 2).reshape(Lp, B * P, D)
        h = h + S.linear(o, self.proj[0][sl], self.proj[1][sl]).view(h.shape)
        flat = S.layer_norm(h, self.ln2, sl, self.eps).view(Lp, B * P, D)
        m = self.act(S.linear(flat, self.fc[0][sl], self.fc[1][sl]))
        return h + S.linear(m, self.fc_out[0][sl], self.fc_out[1][sl]).view(h.shape)


def tiny_config(model_type: str, *, layers: int, hidden: int, heads: int, kv_heads: int | None, vocab: int,
                max_positions: int, intermediate: int | None):
    import transformers

    return transformers.GPT2Config(n_layer=layers, n_embd=hidden, n_head=heads, n_inner=intermediate,
                                   vocab_size=vocab, n_positions=max_positions)


FAMILY = Family(
    name="gpt2",
    model_types=("gpt2",),
    layers_path="transformer.h",
    layer_classes=("GPT2Block",),
    positions="learned",
    dropout_fields=("resid_pdrop", "embd_pdrop", "attn_pdrop"),
    followed_fields=frozenset({"activation_function", "n_embd", "n_head", "n_inner", "n_layer", "n_positions",
                               "n_ctx", "layer_norm_epsilon", "scale_attn_weights", "summary_activation",
                               "summary_first_dropout", "summary_proj_to_labels", "summary_type", "summary_use_proj"}),
    refused_fields={
        "scale_attn_by_inverse_layer_idx": "the wavefront does not scale attention by the layer index",
        "reorder_and_upcast_attn": "the wavefront does not reorder and upcast the attention product",
    },
    stacked=StackedGPT2,
    tiny=tiny_config,
)
