"""Llama-style layers (Llama, Mistral, Qwen2): RMSNorm, rotary attention with grouped
key/value heads, gated MLP."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import stacked as S
from .family import Family
from .gpt_neox import ROPE_FIELDS


class StackedLlama:
    """Llama-style layers with their weights stacked over the layers (the wavefront's layer)."""

    def __init__(self, causal_lm: nn.Module, layers):
        cfg = causal_lm.config
        from transformers.activations import ACT2FN

        self.act = ACT2FN[cfg.hidden_act]
        self.heads = cfg.num_attention_heads
        self.kv_heads = getattr(cfg, "num_key_value_heads", None) or self.heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.eps = cfg.rms_norm_eps
        self.window = getattr(cfg, "sliding_window", None) if getattr(cfg, "use_sliding_window", True) else None
        self.rotary = causal_lm.model.rotary_emb
        self.final_norm = causal_lm.model.norm
        attn = [l.self_attn for l in layers]
        mlp = [l.mlp for l in layers]
        w = attn[0].q_proj.weight
        self.ln1 = S.stack(l.input_layernorm.weight for l in layers)
        self.ln2 = S.stack(l.post_attention_layernorm.weight for l in layers)
        # q, k, v read the same input: one product; so do the MLP's gate and up
        self.qkv = (S.stack((torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]) for a in attn), True),
                    S.stack(torch.cat([S.bias(a.q_proj, a.q_proj.out_features, w),
                                       S.bias(a.k_proj, a.k_proj.out_features, w),
                                       S.bias(a.v_proj, a.v_proj.out_features, w)]) for a in attn))
        self.o = (S.stack((a.o_proj.weight for a in attn), True),
                  S.stack(S.bias(a.o_proj, a.o_proj.out_features, w) for a in attn))
        I = mlp[0].gate_proj.out_features
        self.gate_up = (S.stack((torch.cat([m.gate_proj.weight, m.up_proj.weight]) for m in mlp), True),
                        S.stack(torch.cat([S.bias(m.gate_proj, I, w), S.bias(m.up_proj, I, w)]) for m in mlp))
        self.down = (S.stack((m.down_proj.weight for m in mlp), True),
                     S.stack(S.bias(m.down_proj, cfg.hidden_size, w) for m in mlp))
        self._rope = None

    def embed(self, x: Tensor) -> Tensor:
        P = x.shape[-2]
        if self.window is not None and P > self.window:
            raise ValueError(f"a segment of {P} positions is longer than the base model's own sliding window "
                             f"({self.window}); read with wavefront=False.")
        self._rope = S.rope_tables(self.rotary, x)
        return x

    def __call__(self, h: Tensor, sl: slice) -> Tensor:
        Lp, B, P, D = h.shape
        Hq, Hk, hd = self.heads, self.kv_heads, self.head_dim
        flat = S.rms_norm(h, self.ln1, sl, self.eps).view(Lp, B * P, D)
        qkv = S.linear(flat, self.qkv[0][sl], self.qkv[1][sl]).view(Lp * B, P, Hq + 2 * Hk, hd).transpose(1, 2)
        q, k, v = qkv.split([Hq, Hk, Hk], dim=1)
        q, k = S.rotate(q, self._rope), S.rotate(k, self._rope)
        if Hk != Hq:
            k, v = k.repeat_interleave(Hq // Hk, dim=1), v.repeat_interleave(Hq // Hk, dim=1)
        o = S.attend(q, k, v, hd ** -0.5).transpose(1, 2).reshape(Lp, B * P, Hq * hd)
        h = h + S.linear(o, self.o[0][sl], self.o[1][sl]).view(h.shape)
        flat = S.rms_norm(h, self.ln2, sl, self.eps).view(Lp, B * P, D)
        gate, up = S.linear(flat, self.gate_up[0][sl], self.gate_up[1][sl]).chunk(2, dim=-1)
        return h + S.linear(self.act(gate) * up, self.down[0][sl], self.down[1][sl]).view(h.shape)


def tiny_config(model_type: str, *, layers: int, hidden: int, heads: int, kv_heads: int | None, vocab: int,
                max_positions: int, intermediate: int | None):
    import transformers

    config_class = transformers.AutoConfig.for_model(model_type).__class__
    return config_class(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                        num_key_value_heads=kv_heads or max(1, heads // 2), intermediate_size=intermediate or 2 * hidden,
                        vocab_size=vocab, max_position_embeddings=max_positions)


FAMILY = Family(
    name="llama",
    model_types=("llama", "mistral", "qwen2"),
    layers_path="model.layers",
    layer_classes=("LlamaDecoderLayer", "MistralDecoderLayer", "Qwen2DecoderLayer"),
    positions="rotary",
    dropout_fields=("attention_dropout",),
    followed_fields=ROPE_FIELDS | {"hidden_act", "hidden_size", "num_attention_heads", "num_key_value_heads",
                                   "head_dim", "intermediate_size", "rms_norm_eps", "attention_bias", "mlp_bias",
                                   # the same maths, split into slices for tensor-parallel pretraining
                                   "pretraining_tp",
                                   # a window wider than a segment changes nothing; a narrower one is refused
                                   "sliding_window", "use_sliding_window", "max_window_layers", "layer_types"},
    stacked=StackedLlama,
    tiny=tiny_config,
)
