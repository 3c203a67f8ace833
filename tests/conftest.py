"""Fixtures of the test suite: tiny random models of every supported family (no downloads), the
data folder, the official code's dumps. Tests take them as arguments (``tiny_armt``,
``tiny_base``, ``official_base_config``, ``data_dir``, ``reference_dir``); a test marked
``@pytest.mark.all_families`` with a ``family`` argument runs once per supported family."""

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

FAMILIES = armt.families.SUPPORTED_TYPES


def _tiny_base(family: str, attn: str = "sdpa", dtype=torch.float32, seed: int = 0, vocab: int = 99):
    """A 2-layer, 32-wide random model of ``family``."""
    heads, intermediate = {"gpt2": (2, None), "gpt_neox": (2, 64)}.get(family, (4, 64))
    cfg = armt.families.tiny_config(family, layers=2, hidden=32, heads=heads, kv_heads=2, vocab=vocab,
                                    max_positions=512, intermediate=intermediate, end_token=False)
    cfg._attn_implementation = attn
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(cfg)
    return model.to(dtype).eval()


def _tiny_armt(family: str = "gpt2", attn: str = "sdpa", dtype=torch.float64, seed: int = 0,
               live: bool = True, **config):
    """A tiny ARMT model; ``live`` re-draws W_mv so that the memory read is not zero."""
    base = _tiny_base(family, attn, dtype, seed)
    options = dict(num_mem_tokens=4, d_mem=8, segment_size=8)
    options.update(config)
    model = armt.ARMTForCausalLM(base, armt.ARMTConfig(**options)).eval()
    if live:
        torch.manual_seed(seed + 1)
        for mem in model.cell.memory_layers:
            torch.nn.init.normal_(mem.W_mv.weight, std=0.2)
    return model


@pytest.fixture
def one_thread():
    """Run the test on one thread: two threads on a shared 2-core machine are many times slower
    than one for tiny models. Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def reference_dir() -> Path:
    """The official code's dumps: ../shared/reference when present, else the small dumps of the
    same official code copied into tests/fixtures/official_small (its README says how they were made)."""
    if (REFERENCE / "README.md").exists():
        return REFERENCE
    return FIXTURES / "official_small"


def _official_base_config(reference_dir: Path, kind: str):
    """The base model's config of a reference dump, from its ``*_meta.json``."""
    import json

    values = json.loads((reference_dir / f"{kind}_meta.json").read_text())["base_config"]
    values = {k: v for k, v in values.items() if k not in ("transformers_version", "_name_or_path", "architectures")}
    cfg = transformers.AutoConfig.for_model(values.pop("model_type"), **values)
    cfg._attn_implementation = "sdpa"
    return cfg


@pytest.fixture(scope="session")
def tiny_base():
    """``tiny_base(family, attn="sdpa", dtype=float32, seed=0, vocab=99)``: a 2-layer, 32-wide
    random model of ``family``."""
    return _tiny_base


@pytest.fixture(scope="session")
def tiny_armt():
    """``tiny_armt(family="gpt2", attn="sdpa", dtype=float64, seed=0, live=True, **config)``: a
    tiny ARMT model; ``live`` re-draws W_mv so that the memory read is not zero."""
    return _tiny_armt


@pytest.fixture(scope="session")
def official_base_config():
    """``official_base_config(reference_dir, kind)``: the base config of a reference dump."""
    return _official_base_config


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The data folder: ../shared/data when present, else the excerpts in tests/fixtures/data."""
    return DATA


def pytest_configure(config):
    config.addinivalue_line("markers", "all_families: run once for every supported model family "
                                       "(the test takes a `family` argument)")


def pytest_generate_tests(metafunc):
    if metafunc.definition.get_closest_marker("all_families") is not None:
        metafunc.parametrize("family", FAMILIES)
