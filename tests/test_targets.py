import pytest
from torch import nn

import armt
from armt.targets import find_decoder_layers

EXPECTED = {"gpt2": "transformer.h", "gpt_neox": "gpt_neox.layers", "llama": "model.layers",
            "qwen2": "model.layers", "mistral": "model.layers"}


@pytest.mark.all_families
def test_known_families_are_detected(tiny_base, family):
    path, layers = find_decoder_layers(tiny_base(family))
    assert path == EXPECTED[family] and len(layers) == 2


def test_explicit_path_and_clear_errors(tiny_base):
    base = tiny_base("llama")
    assert find_decoder_layers(base, "model.layers")[0] == "model.layers"
    with pytest.raises(ValueError, match="layers_path='model.blocks' does not exist on LlamaForCausalLM.*model.layers"):
        find_decoder_layers(base, "model.blocks")
    with pytest.raises(ValueError, match="not a non-empty nn.ModuleList"):
        find_decoder_layers(base, "model.norm")
    with pytest.raises(ValueError, match="layers_path='model.blocks'"):
        armt.ARMTForCausalLM(base, armt.ARMTConfig(layers_path="model.blocks"))


def test_unknown_model_is_found_by_search_or_named_in_the_error(tiny_base):
    class Wrapped(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.config = inner.config

    assert find_decoder_layers(Wrapped(tiny_base("gpt2")))[0] == "inner.transformer.h"

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.ModuleList([nn.Linear(2, 2)] * 3)
            self.b = nn.ModuleList([nn.Linear(2, 2)] * 3)

    with pytest.raises(ValueError, match="Cannot find the decoder layers of Odd.*layers_path"):
        find_decoder_layers(Odd())
