"""Tiny random models of every supported family (no downloads) and the reference folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import transformers

import armt

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REFERENCE = Path(os.environ.get("ARMT_REFERENCE_DIR", Path(__file__).resolve().parents[1].parent / "shared" / "reference"))
DATA = REFERENCE.parent / "data"
if not (DATA / "babi" / "en").is_dir():
    # a fresh clone without ../shared: excerpts of the same bAbI files and books, kept in tests/
    DATA = FIXTURES / "data"

FAMILIES = ("gpt2", "gpt_neox", "llama", "qwen2", "mistral")


def tiny_base(family: str, attn: str = "sdpa", dtype=torch.float32, seed: int = 0, vocab: int = 99):
    """A 2-layer, 32-wide random model of ``family``."""
    torch.manual_seed(seed)
    common = dict(vocab_size=vocab, attn_implementation=attn)
    if family == "gpt2":
        cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=512, **common)
    elif family == "gpt_neox":
        cfg = transformers.GPTNeoXConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                         intermediate_size=64, max_position_embeddings=512, **common)
    else:
        cls = {"llama": transformers.LlamaConfig, "qwen2": transformers.Qwen2Config,
               "mistral": transformers.MistralConfig}[family]
        cfg = cls(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=64, max_position_embeddings=512, **common)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    return model.to(dtype).eval()


def tiny_armt(family: str = "gpt2", attn: str = "sdpa", dtype=torch.float64, seed: int = 0,
              live: bool = True, **config):
    """A tiny ARMT model; ``live`` re-draws W_mv so that the memory read is not zero."""
    base = tiny_base(family, attn, dtype, seed)
    options = dict(num_mem_tokens=4, d_mem=8, segment_size=8)
    options.update(config)
    model = armt.ARMTForCausalLM(base, armt.ARMTConfig(**options)).eval()
    if live:
        torch.manual_seed(seed + 1)
        for mem in model.cell.memory_layers:
            torch.nn.init.normal_(mem.W_mv.weight, std=0.2)
    return model


@pytest.fixture
def reference_dir() -> Path:
    """The official code's dumps: ../shared/reference when present, else the small dumps of the
    same official code copied into tests/fixtures/official_small (its README says how they were made)."""
    if (REFERENCE / "README.md").exists():
        return REFERENCE
    return FIXTURES / "official_small"


def official_base_config(reference_dir: Path, kind: str):
    """The base model's config of a reference dump, from its ``*_meta.json``."""
    import json

    values = json.loads((reference_dir / f"{kind}_meta.json").read_text())["base_config"]
    values = {k: v for k, v in values.items() if k not in ("transformers_version", "_name_or_path", "architectures")}
    cfg = transformers.AutoConfig.for_model(values.pop("model_type"), **values)
    cfg._attn_implementation = "sdpa"
    return cfg
