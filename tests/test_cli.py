"""The armt command line and save/load."""

import pytest
import torch
import transformers
from safetensors import safe_open
from safetensors.torch import load_file

import armt
from armt.cli import main
from armt.saving import WEIGHTS_NAME

from conftest import tiny_armt, tiny_base


def test_demo_runs_and_shows_identity(capsys):
    assert main(["demo", "--tokens", "600", "--segment-size", "128"]) == 0
    out = capsys.readouterr().out
    assert "max |logit diff| = 0.00e+00" in out
    assert "5 segments written" in out


def test_convert_official_end_to_end(tmp_path, reference_dir, capsys):
    base_dir = tmp_path / "base"
    transformers.GPT2Config(n_layer=4, n_embd=128, n_head=4, vocab_size=1000, n_positions=1024).save_pretrained(base_dir)
    out_dir = tmp_path / "converted"
    args = ["convert-official", str(reference_dir / "gpt2_state_dict.safetensors"), str(out_dir),
            "--base", str(base_dir), "--segment-size", "128"]
    assert main(args) == 0
    assert "16 memory tokens, d_mem=32" in capsys.readouterr().out
    model = armt.ARMTForCausalLM.from_pretrained(out_dir).eval()
    io = load_file(reference_dir / "gpt2_io.safetensors")
    with torch.no_grad():
        logits = model(io["input_ids"]).logits
    assert (logits - io["logits"]).abs().max() <= 1e-4
    assert main(args) == 2  # never overwrites without being asked
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_save_pretrained_round_trip_holds_only_armt_weights(tmp_path):
    model = tiny_armt("llama", use_sink=True)
    ids = torch.randint(99, (1, 20))
    model.save_pretrained(tmp_path / "m")
    with safe_open(str(tmp_path / "m" / WEIGHTS_NAME), "pt") as f:
        names = set(f.keys())
    assert "memory_tokens" in names and "sink" in names
    assert not any(n.startswith("base_model.") or n.startswith("model.") for n in names)
    restored = armt.ARMTForCausalLM.from_pretrained(tmp_path / "m", base_model=tiny_base("llama", dtype=torch.float64)).eval()
    with torch.no_grad():
        torch.testing.assert_close(restored(ids).logits, model(ids).logits, rtol=0, atol=0)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        model.save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="saved for a different base model \\(LlamaForCausalLM"):
        armt.ARMTForCausalLM.from_pretrained(tmp_path / "m", base_model=tiny_base("gpt2"))
