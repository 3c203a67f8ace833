"""The wavefront re-implements each family's decoder layer from its weights; these tests hold it
to Hugging Face's own layers (the sequential loop runs them) on random configs covering every
switch that changes a layer's maths, so that a transformers upgrade that changes a layer fails
here, naming the family and the switch. Switches the wavefront cannot follow must be refused."""

from __future__ import annotations

import pytest
import torch
import transformers

import armt

V = 99
# family -> (config class, base fields)
FAMILIES = {
    "gpt2": (transformers.GPT2Config, dict(n_layer=3, n_embd=32, n_head=4, vocab_size=V, n_positions=512,
                                           resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=V - 1,
                                           eos_token_id=V - 1)),
    "gpt_neox": (transformers.GPTNeoXConfig, dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                                                   intermediate_size=48, vocab_size=V, max_position_embeddings=512,
                                                   hidden_dropout=0.0, attention_dropout=0.0, bos_token_id=V - 1,
                                                   eos_token_id=V - 1)),
    "llama": (transformers.LlamaConfig, dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                                             num_key_value_heads=2, intermediate_size=48, vocab_size=V,
                                             max_position_embeddings=512)),
    "mistral": (transformers.MistralConfig, dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                                                 num_key_value_heads=2, intermediate_size=48, vocab_size=V,
                                                 max_position_embeddings=512)),
    "qwen2": (transformers.Qwen2Config, dict(num_hidden_layers=3, hidden_size=32, num_attention_heads=4,
                                             num_key_value_heads=2, intermediate_size=48, vocab_size=V,
                                             max_position_embeddings=512)),
}
ROPE = dict(rope_theta=10000.0)
# (family, switch name, config fields)
SWITCHES = [
    ("gpt2", "defaults", {}),
    ("gpt2", "scale_attn_weights off", {"scale_attn_weights": False}),
    ("gpt2", "relu", {"activation_function": "relu"}),
    ("gpt2", "layer_norm_epsilon", {"layer_norm_epsilon": 1e-2}),
    ("gpt2", "n_inner", {"n_inner": 40}),
    ("gpt_neox", "defaults", {}),
    ("gpt_neox", "sequential residual", {"use_parallel_residual": False}),
    ("gpt_neox", "partial rotary", {"rope_parameters": {"rope_type": "default", **ROPE, "partial_rotary_factor": 0.5}}),
    ("gpt_neox", "linear rope scaling, quarter rotary",
     {"rope_parameters": {"rope_type": "linear", "factor": 2.0, **ROPE, "partial_rotary_factor": 0.25}}),
    ("gpt_neox", "no attention bias", {"attention_bias": False}),
    ("gpt_neox", "relu", {"hidden_act": "relu"}),
    ("gpt_neox", "layer_norm_eps", {"layer_norm_eps": 1e-2}),
    ("llama", "defaults", {}),
    ("llama", "attention bias", {"attention_bias": True}),
    ("llama", "mlp bias", {"mlp_bias": True}),
    ("llama", "multi-head (no GQA)", {"num_key_value_heads": 4}),
    ("llama", "multi-query", {"num_key_value_heads": 1}),
    ("llama", "head_dim != hidden / heads", {"head_dim": 16}),
    ("llama", "linear rope scaling", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, **ROPE}}),
    # dynamic scaling changes the angles only past max_position_embeddings: a segment runs 10 positions
    ("llama", "dynamic rope scaling", {"rope_parameters": {"rope_type": "dynamic", "factor": 2.0, **ROPE},
                                       "max_position_embeddings": 6}),
    ("llama", "llama3 rope scaling", {"rope_parameters": {"rope_type": "llama3", "factor": 8.0, "rope_theta": 5e5,
                                                          "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                                          "original_max_position_embeddings": 64}}),
    ("llama", "yarn rope scaling", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, **ROPE,
                                                        "original_max_position_embeddings": 64}}),
    ("llama", "rms_norm_eps", {"rms_norm_eps": 1e-2}),
    ("llama", "gelu", {"hidden_act": "gelu"}),
    ("mistral", "defaults", {}),
    ("mistral", "window wider than a segment", {"sliding_window": 64}),
    ("qwen2", "defaults", {}),
    ("qwen2", "window wider than a segment", {"use_sliding_window": True, "sliding_window": 64, "max_window_layers": 1}),
]


def _model(family: str, fields: dict) -> armt.ARMTForCausalLM:
    config_class, base_fields = FAMILIES[family]
    cfg = config_class(**base_fields)
    for key, value in fields.items():
        setattr(cfg, key, value)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_config(cfg).to(torch.float64).eval()
    with torch.no_grad():  # norms and biases away from 1 and 0, so that each one counts
        for param in base.parameters():
            if param.dim() == 1:
                param.add_(torch.randn_like(param) * 0.3)
    model = armt.ARMTForCausalLM(base, armt.ARMTConfig(num_mem_tokens=2, d_mem=4, segment_size=8)).to(torch.float64)
    torch.manual_seed(1)
    for mem in model.cell.memory_layers:  # a live read (W_mv starts at zero)
        mem.W_mv.reset_parameters()
    return model.eval()


# switches that are accepted but do not change a segment's maths (the others must, or the test
# would compare nothing new)
NO_EFFECT = {"defaults", "window wider than a segment"}


@pytest.mark.parametrize("family, switch, fields", SWITCHES, ids=[f"{f}: {s}" for f, s, _ in SWITCHES])
def test_wavefront_layer_equals_the_hugging_face_layer(family, switch, fields):
    model = _model(family, fields)
    ids = torch.randint(V, (2, 43), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        loop = model(ids, labels=ids, wavefront=False)
        wave = model(ids, labels=ids, wavefront=True)
        if switch not in NO_EFFECT:
            plain = _model(family, {})(ids, wavefront=False).logits
            assert (loop.logits - plain).abs().max() > 1e-6, f"{family}: {switch} does not reach Hugging Face's layer"
    gap = (wave.logits - loop.logits).abs().max().item()
    assert gap < 1e-9, f"{family} with {switch}: the wavefront's logits drift from Hugging Face's layers by {gap:.2e}"
    for a, b in zip(loop.memory.layers, wave.memory.layers):
        torch.testing.assert_close(b.A, a.A, rtol=1e-9, atol=1e-12, msg=f"{family} with {switch}: memory drifts")
    # and the gradients of a training pass
    grads = []
    for wavefront in (False, True):
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids, wavefront=wavefront).loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-7, atol=1e-10,
                                   msg=f"{family} with {switch}: gradient of {name} drifts")


@pytest.mark.parametrize("family, fields", [("mistral", {"sliding_window": 6}),
                                            ("qwen2", {"use_sliding_window": True, "sliding_window": 6,
                                                       "max_window_layers": 1})])
def test_a_window_narrower_than_a_segment_is_refused(family, fields):
    model = _model(family, fields)
    with pytest.raises(ValueError, match="sliding window"):
        model(torch.randint(V, (1, 24)), wavefront=True)


def test_gpt2_switches_the_wavefront_does_not_follow_are_refused():
    for switch in ("scale_attn_by_inverse_layer_idx", "reorder_and_upcast_attn"):
        model = _model("gpt2", {switch: True})
        with pytest.raises(ValueError, match=switch):
            model(torch.randint(V, (1, 24)), wavefront=True)
