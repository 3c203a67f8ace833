"""The armt command line and save/load."""

import re

import torch
from safetensors.torch import load_file

import armt
from armt.cli import main


def test_demo_runs_and_shows_identity(capsys):
    assert main(["reading-demo", "--tokens", "600", "--segment-size", "128"]) == 0
    out = capsys.readouterr().out
    assert "max |logit diff| = 0.00e+00" in out
    assert "5 segments written" in out


def test_convert_official_end_to_end(official_base_config, tmp_path, reference_dir, capsys):
    import json


    meta = json.loads((reference_dir / "gpt2_meta.json").read_text())["armt"]
    base_dir = tmp_path / "base"
    official_base_config(reference_dir, "gpt2").save_pretrained(base_dir)
    out_dir = tmp_path / "converted"
    args = ["convert-official", str(reference_dir / "gpt2_state_dict.safetensors"), str(out_dir),
            "--base", str(base_dir), "--segment-size", str(meta["segment_size"])]
    assert main(args) == 0
    assert f"{meta['num_mem_tokens']} memory tokens, d_mem={meta['d_mem']}" in capsys.readouterr().out
    model = armt.ARMTForCausalLM.from_pretrained(out_dir).eval()
    io = load_file(reference_dir / "gpt2_io.safetensors")
    with torch.no_grad():
        logits = model(io["input_ids"]).logits
    assert (logits - io["logits"]).abs().max() <= 1e-4
    assert main(args) == 2  # never overwrites without being asked
    assert "--overwrite" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_read_then_generate_from_the_shell(tiny_base, tmp_path, capsys):
    from armt.data.tokenizer import train_bpe_tokenizer

    text = "".join(f"Mary went to the kitchen {i} times. John took the apple.\n" for i in range(400))
    book = tmp_path / "book.txt"
    book.write_text(text)
    model_dir = tmp_path / "model"
    tok = train_bpe_tokenizer([text], vocab_size=300)
    base = tiny_base("llama", vocab=len(tok))
    model = armt.ARMTForCausalLM(base, armt.ARMTConfig(num_mem_tokens=4, d_mem=8, segment_size=64))
    model.save_pretrained(model_dir, save_base=True)
    tok.save_pretrained(model_dir)
    mem = tmp_path / "mem.safetensors"

    assert main(["read", "--model", str(model_dir), "--input", str(book), "--save-memory", str(mem),
                 "--loss", "--quiet", "--chunk-chars", "1000"]) == 0
    printed = capsys.readouterr().out
    n_tokens = len(tok(text)["input_ids"])
    assert f"read {n_tokens:,} tokens" in printed and "perplexity" in printed
    state = armt.MemoryState.load(mem)
    expected = model.eval()(tok(text, return_tensors="pt")["input_ids"]).memory
    assert state.segments == expected.segments
    torch.testing.assert_close(state.layers[-1].A, expected.layers[-1].A, rtol=1e-5, atol=1e-6)
    # never overwrites a saved state without being asked
    assert main(["read", "--model", str(model_dir), "--input", str(book), "--save-memory", str(mem),
                 "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    # along the diagonals: the same memory
    wave = tmp_path / "wave.safetensors"
    assert main(["read", "--model", str(model_dir), "--input", str(book), "--save-memory", str(wave),
                 "--quiet", "--chunk-chars", "1000", "--wavefront"]) == 0
    capsys.readouterr()
    wave_state = armt.MemoryState.load(wave)
    assert wave_state.segments == state.segments
    torch.testing.assert_close(wave_state.layers[-1].z, state.layers[-1].z, rtol=1e-5, atol=1e-6)

    assert main(["generate", "--model", str(model_dir), "--memory", str(mem), "--prompt", "Where is Mary?",
                 "--max-new-tokens", "8"]) == 0
    answer = capsys.readouterr().out
    prompt = tok("Where is Mary?", return_tensors="pt")["input_ids"]
    ids = model.generate(prompt, memory=state, max_new_tokens=8, do_sample=False,
                         eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    assert answer.rstrip("\n") == tok.decode(ids[0, prompt.shape[1]:], skip_special_tokens=True)


def test_demo_trains_evaluates_and_refuses_to_overwrite(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--steps", "60", "--out", str(out), "--threads", "1"]) == 0
    text = capsys.readouterr().out
    assert "step 50 (N=1): loss" in text  # progress while it trains
    # a fresh wrapper is the base model (up to float rounding: the segment runs with its memory tokens)
    diff = re.search(r"max \|logit diff\| = ([0-9.e+-]+)", text)
    assert diff is not None and float(diff.group(1)) < 1e-5
    assert "| pairs N | ARMT | ARMT, memory wiped |" in text and "| 32 |" in text
    assert "segments back)" in text  # written-out queries with the model's answers
    assert {p.name for p in out.iterdir()} == {"demo.json", "demo.md", "demo.png"}
    assert main(["demo", "--steps", "60", "--out", str(out)]) == 2
    assert "overwrite" in capsys.readouterr().err


def test_the_demo_budgets_steps_so_a_seed_gives_the_same_numbers():
    import torch

    from armt.evaluation.capacity import run_demo

    def once():
        torch.set_num_threads(1)  # the thread count changes float sums, so it is part of "the same run"
        res = run_demo(steps=30, curriculum=(1, 2), eval_pairs=(1, 2), eval_samples=16, log=lambda s: None)
        return res["models"]["armt"]["exact_match"], res["models"]["armt"]["memory_wiped"]

    assert once() == once()
