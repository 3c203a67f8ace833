"""GPT-NeoX (Pythia): LayerNorm, fused query/key/value laid out per head, partial rotary, and
the parallel residual ``h + attn(ln_1 h) + mlp(ln_2 h)`` (or the sequential one)."""

from __future__ import annotations

from torch import Tensor, nn

from . import stacked as S
from .family import Family

#: rotary settings, followed through the base model's own rotary embedding (old and new names)
ROPE_FIELDS = frozenset({"rope_parameters", "rope_scaling", "rope_theta", "partial_rotary_factor",
                         "rotary_pct", "rotary_emb_base"})


class StackedGPTNeoX:
    """GPT-NeoX layers with their weights stacked over the layers (the wavefront's layer)."""

    def __init__(self, causal_lm: nn.Module, layers):
        cfg = causal_lm.config
        from transformers.activations import ACT2FN

        self.act = ACT2FN[cfg.hidden_act]
        self.heads = cfg.num_attention_heads
        self.eps = cfg.layer_norm_eps
        self.parallel = cfg.use_parallel_residual
        self.rotary = causal_lm.gpt_neox.rotary_emb
        self.final_norm = causal_lm.gpt_neox.final_layer_norm
        w = layers[0].attention.query_key_value.weight
        D = cfg.hidden_size
        self.ln1 = (S.stack(l.input_layernorm.weight for l in layers), S.stack(l.input_layernorm.bias for l in layers))
        self.ln2 = (S.stack(l.post_attention_layernorm.weight for l in layers),
                    S.stack(l.post_attention_layernorm.bias for l in layers))
        att = [l.attention for l in layers]
        self.qkv = (S.stack((a.query_key_value.weight for a in att), True),
                    S.stack(S.bias(a.query_key_value, 3 * D, w) for a in att))
        self.dense = (S.stack((a.dense.weight for a in att), True), S.stack(S.bias(a.dense, D, w) for a in att))
        mlp = [l.mlp for l in layers]
        self.up = (S.stack((m.dense_h_to_4h.weight for m in mlp), True), S.stack(m.dense_h_to_4h.bias for m in mlp))
        self.down = (S.stack((m.dense_4h_to_h.weight for m in mlp), True), S.stack(m.dense_4h_to_h.bias for m in mlp))
        self._rope = None

    def embed(self, x: Tensor) -> Tensor:
        self._rope = S.rope_tables(self.rotary, x)
        return x

    def __call__(self, h: Tensor, sl: slice) -> Tensor:
        Lp, B, P, D = h.shape
        H = self.heads
        flat = S.layer_norm(h, self.ln1, sl, self.eps).view(Lp, B * P, D)
        qkv = S.linear(flat, self.qkv[0][sl], self.qkv[1][sl]).view(Lp * B, P, H, 3 * (D // H)).transpose(1, 2)
        q, k, v = qkv.chunk(3, dim=-1)
        o = S.attend(S.rotate(q, self._rope), S.rotate(k, self._rope), v, (D // H) ** -0.5)
        attn = S.linear(o.transpose(1, 2).reshape(Lp, B * P, D), self.dense[0][sl], self.dense[1][sl]).view(h.shape)
        base = h if self.parallel else h + attn
        flat = S.layer_norm(base, self.ln2, sl, self.eps).view(Lp, B * P, D)
        mlp = S.linear(self.act(S.linear(flat, self.up[0][sl], self.up[1][sl])), self.down[0][sl], self.down[1][sl])
        return h + attn + mlp.view(h.shape)


def tiny_config(model_type: str, *, layers: int, hidden: int, heads: int, kv_heads: int | None, vocab: int,
                max_positions: int, intermediate: int | None):
    import transformers

    return transformers.GPTNeoXConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                                      intermediate_size=intermediate or 4 * hidden, vocab_size=vocab,
                                      max_position_embeddings=max_positions)


FAMILY = Family(
    name="gpt_neox",
    model_types=("gpt_neox",),
    layers_path="gpt_neox.layers",
    layer_classes=("GPTNeoXLayer",),
    positions="rotary",
    dropout_fields=("attention_dropout", "hidden_dropout"),
    followed_fields=ROPE_FIELDS | {"hidden_act", "hidden_size", "num_attention_heads", "intermediate_size",
                                   "layer_norm_eps", "use_parallel_residual", "attention_bias"},
    stacked=StackedGPTNeoX,
    tiny=tiny_config,
)
