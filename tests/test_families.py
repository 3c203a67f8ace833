"""The families registry (armt.families) is the one place that knows model families: every
supported family builds, hooks and reads through it, and no other module names a model type."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch
import transformers

import armt
from armt import families
from armt.targets import find_decoder_layers

SRC = Path(armt.__file__).resolve().parent


def _docstrings(tree: ast.AST) -> set[int]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                found.add(id(first.value))
    return found


def _model_type_strings(path: Path) -> list[str]:
    """String constants of ``path`` (docstrings aside: examples may build a tiny model) that
    equal a model type armt knows."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    skip = _docstrings(tree)
    names = set(families.LAYER_PATHS)
    return [f"{path.relative_to(SRC.parent)}:{node.lineno} {node.value!r}" for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names
            and id(node) not in skip]


def test_model_types_are_named_only_in_the_families_package():
    found = [hit for path in sorted(SRC.rglob("*.py")) if "families" not in path.relative_to(SRC).parts
             for hit in _model_type_strings(path)]
    assert not found, "model types named outside armt/families (put the knowledge there):\n" + "\n".join(found)


def test_the_scan_finds_a_model_type(tmp_path):
    # the check above must be able to fail
    module = tmp_path / "m.py"
    module.write_text('"""Docs may say "llama"."""\nKIND = "llama"\n')
    global SRC
    old, SRC = SRC, tmp_path
    try:
        assert _model_type_strings(module) == ["m.py:2 'llama'".replace("m.py", f"{tmp_path.name}/m.py")]
    finally:
        SRC = old


@pytest.mark.parametrize("model_type", families.SUPPORTED_TYPES)
def test_every_family_builds_and_is_found(model_type):
    family = families.family_of(model_type)
    cfg = families.tiny_config(model_type, layers=2, hidden=32, heads=4, vocab=50)
    assert cfg.model_type == model_type
    assert families.unknown_fields(cfg) == []
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    path, layers = find_decoder_layers(model)
    assert path == family.layers_path
    assert {type(layer).__name__ for layer in layers} <= set(family.layer_classes)
    assert (families.position_table(cfg) is not None) == (family.positions == "learned")


def test_tiny_dropout_reaches_every_dropout_field():
    for model_type in families.SUPPORTED_TYPES:
        cfg = families.tiny_config(model_type, layers=1, hidden=32, dropout=0.25)
        for name in families.family_of(model_type).dropout_fields:
            assert getattr(cfg, name) == 0.25, (model_type, name)


def test_unknown_families_are_refused_with_the_supported_list():
    with pytest.raises(ValueError, match="no tiny config"):
        families.tiny_config("t5")
    assert families.family_of("gptj") is None and families.layers_path("gptj") == "transformer.h"
    with pytest.raises(ValueError, match="is not one of"):
        families.unknown_fields(transformers.GPTJConfig())


def _tiny_llama(wavefront: bool = False, **fields) -> armt.ARMTForCausalLM:
    cfg = families.tiny_config("llama", layers=2, hidden=32, heads=4, vocab=60)
    for name, value in fields.items():
        setattr(cfg, name, value)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(0)
    base = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    return armt.ARMTForCausalLM(base, armt.ARMTConfig(num_mem_tokens=2, d_mem=4, segment_size=8,
                                                      wavefront=wavefront)).eval()


def test_a_switch_no_family_knows_is_refused_not_ignored():
    # as if a transformers release added a field that changes the layer
    message = r"llama layer does not follow qk_layernorm=True \(a setting armt does not know\)"
    with pytest.raises(ValueError, match=message):
        _tiny_llama(wavefront=True, qk_layernorm=True)
    model = _tiny_llama(qk_layernorm=True)
    ids = torch.randint(60, (1, 24))
    with pytest.raises(ValueError, match=message):
        model(ids, wavefront=True)
    with torch.no_grad():  # nobody asked for the wavefront: the segment loop runs
        torch.testing.assert_close(model(ids).logits, model(ids, wavefront=False).logits)


def test_a_switch_at_its_default_and_inert_fields_are_accepted():
    # unknown names at the class default and token ids / private fields change nothing
    model = _tiny_llama(wavefront=True, unk_token_id=5, _model_name_or_path="x")
    assert families.unknown_fields(model.cell.runner.config) == []
    with torch.no_grad():
        ids = torch.randint(60, (1, 24))
        torch.testing.assert_close(model(ids, wavefront=True).logits, model(ids, wavefront=False).logits)
