"""Everything armt knows about model families, in one place: where the decoder layers are, how
positions are encoded, the wavefront's stacked layer, which config fields it follows, and the tiny
configs of tests and demos. No module outside this package names a model type.

Fully supported (memory, sliding window, wavefront): GPT-2, GPT-NeoX, Llama, Mistral, Qwen2.
Other decoder families run the memory through :data:`LAYER_PATHS` (or ``ARMTConfig.layers_path``)
and the segment loop.

Example:
    >>> from armt import families
    >>> families.family_of("qwen2").name, families.layers_path("gptj")
    ('llama', 'transformer.h')
    >>> families.tiny_config("gpt2", layers=2, hidden=32).n_layer
    2
"""

from __future__ import annotations

import functools

from .family import SHARED_INERT_FIELDS, Family
from . import gpt2, gpt_neox, llama

FAMILIES: tuple[Family, ...] = (gpt2.FAMILY, gpt_neox.FAMILY, llama.FAMILY)
_BY_TYPE = {t: f for f in FAMILIES for t in f.model_types}

#: the model types with full support, and those of the tiny models (tests, demos, benchmarks)
SUPPORTED_TYPES: tuple[str, ...] = tuple(_BY_TYPE)
TINY_TYPES: tuple[str, ...] = ("gpt2", "llama", "gpt_neox")
#: the tiny family of demos and of a run config that names none; the capacity benchmark's
DEFAULT_TINY = "gpt2"
CAPACITY_TINY = "gpt_neox"

#: model type -> dotted path of the decoder layers in the ``*ForCausalLM`` class, for the
#: families above and for others whose layers the memory can hook (segment loop only)
LAYER_PATHS: dict[str, str] = {
    **{t: f.layers_path for f in FAMILIES for t in f.model_types},
    "gptj": "transformer.h",
    "gpt_bigcode": "transformer.h",
    "bloom": "transformer.h",
    "falcon": "transformer.h",
    "opt": "model.decoder.layers",
    "qwen3": "model.layers",
    "mixtral": "model.layers",
    "gemma": "model.layers",
    "gemma2": "model.layers",
    "phi": "model.layers",
    "phi3": "model.layers",
    "olmo": "model.layers",
    "smollm3": "model.layers",
}


def _model_type(config_or_type) -> str | None:
    if config_or_type is None or isinstance(config_or_type, str):
        return config_or_type
    return getattr(config_or_type, "model_type", None)


def family_of(config_or_type) -> Family | None:
    """The fully supported :class:`Family` of a config (or model type string), ``None`` if none."""
    return _BY_TYPE.get(_model_type(config_or_type))


def layers_path(config_or_type) -> str | None:
    """Where the family keeps its decoder layers, ``None`` when armt does not know it."""
    return LAYER_PATHS.get(_model_type(config_or_type))


def position_table(config) -> int | None:
    """Size of a learned absolute position table (GPT-2's ``n_positions``); ``None`` for rotary
    families and unknown ones."""
    family = family_of(config)
    if family is None or family.positions != "learned":
        return None
    return getattr(config, "n_positions", None)


@functools.lru_cache(maxsize=None)
def _defaults(config_class) -> dict:
    # built once per class: the wavefront asks on every call that requests it
    return config_class().to_dict()


def unknown_fields(config) -> list[str]:
    """Config fields set away from their default that the family's stacked layer neither
    follows nor knows to be harmless, and the refused ones, each with the reason: what the
    wavefront must refuse rather than ignore (a transformers release may add a switch that
    changes a layer). Raises for a config of no supported family."""
    family = family_of(config)
    if family is None:
        raise ValueError(f"model_type={_model_type(config)!r} is not one of {SUPPORTED_TYPES}")
    defaults = _defaults(type(config))
    missing = object()
    known = family.followed_fields | set(family.dropout_fields) | SHARED_INERT_FIELDS
    found = []
    for name, value in config.to_dict().items():
        if name.startswith("_") or name.endswith("_token_id") or value == defaults.get(name, missing):
            continue
        if name in family.refused_fields:
            found.append(f"{name}={value!r} ({family.refused_fields[name]})")
        elif name not in known:
            found.append(f"{name}={value!r} (a setting armt does not know)")
    return found


def tiny_config(model_type: str = DEFAULT_TINY, *, layers: int = 4, hidden: int = 128, heads: int | None = None,
                kv_heads: int | None = None, vocab: int = 1000, max_positions: int = 1024,
                intermediate: int | None = None, dropout: float | None = None, end_token: bool = True):
    """A small random-init config of a supported family (no download).

    ``heads`` defaults to ``hidden // 32``; ``kv_heads`` (Llama-style) to half the heads;
    ``intermediate`` to the family's usual MLP width; ``dropout`` overrides every dropout
    probability of the family; ``end_token`` makes the last vocabulary entry BOS and EOS.
    """
    family = family_of(model_type)
    if family is None:
        raise ValueError(f"family={model_type!r} has no tiny config; use one of {SUPPORTED_TYPES}.")
    cfg = family.tiny(model_type, layers=layers, hidden=hidden, heads=heads or max(1, hidden // 32),
                      kv_heads=kv_heads, vocab=vocab, max_positions=max_positions, intermediate=intermediate)
    if end_token:
        cfg.bos_token_id = cfg.eos_token_id = vocab - 1
    if dropout is not None:
        for name in family.dropout_fields:
            setattr(cfg, name, dropout)
    return cfg


__all__ = ["Family", "FAMILIES", "SUPPORTED_TYPES", "TINY_TYPES", "DEFAULT_TINY", "CAPACITY_TINY", "LAYER_PATHS",
           "family_of", "layers_path", "position_table", "unknown_fields", "tiny_config"]
