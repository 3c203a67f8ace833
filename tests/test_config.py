import pytest

from armt import ARMTConfig


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(segment_size=0), ValueError, "segment_size must be >= 1"),
    (dict(segment_size=-3), ValueError, "segment_size"),
    (dict(num_mem_tokens=0), ValueError, "num_mem_tokens must be >= 1"),
    (dict(d_mem=30, n_heads=4), ValueError, "d_mem=30 is not divisible by n_heads=4"),
    (dict(segment_alignment="middle"), ValueError, "segment_alignment='middle' is unknown"),
    (dict(bptt_segments=0), ValueError, "bptt_segments"),
    (dict(segment_size=2.5), TypeError, "segment_size must be an int"),
    (dict(use_sink="yes"), TypeError, "use_sink must be True or False"),
    (dict(sliding_window=1), TypeError, "sliding_window must be True or False"),
    (dict(layers_path=""), ValueError, "layers_path"),
])
def test_invalid_config_is_refused(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        ARMTConfig(**kwargs)


def test_round_trip_and_unknown_keys():
    cfg = ARMTConfig(num_mem_tokens=8, d_mem=32, n_heads=2, gating=True)
    assert ARMTConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.d_key == 192
    with pytest.raises(ValueError, match="Unknown ARMTConfig keys \\['mem_size'\\]"):
        ARMTConfig.from_dict({"mem_size": 3})


def test_width_not_divisible_by_heads_is_refused(tiny_base):

    import armt

    with pytest.raises(ValueError, match="n_heads=3 does not divide the model width 32"):
        armt.ARMTForCausalLM(tiny_base("gpt2"), ARMTConfig(d_mem=6, n_heads=3))


def test_the_config_is_a_frozen_value():
    import dataclasses

    from armt import ARMTForCausalLM
    from armt.tiny import tiny_base_model

    cfg = ARMTConfig(num_mem_tokens=2, d_mem=4, segment_size=8)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.segment_size = 4
    model = ARMTForCausalLM(tiny_base_model("gpt2"), cfg)
    model.gradient_checkpointing_enable()
    assert model.is_gradient_checkpointing and not cfg.gradient_checkpointing  # a model flag
    model.gradient_checkpointing_disable()
    assert not model.is_gradient_checkpointing


def test_parse_option_reads_json_values_and_refuses_unknown_fields():
    from armt.config import parse_option

    assert parse_option("use_sink=true") == ("use_sink", True)
    assert parse_option("memory_dtype=float32") == ("memory_dtype", "float32")
    with pytest.raises(ValueError, match="ARMTConfig field"):
        parse_option("d_memory=32")
    with pytest.raises(ValueError, match="NAME=VALUE"):
        parse_option("write_gate")
