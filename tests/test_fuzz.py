"""Seeded fuzzing of the public API's inputs and of the command line: every case either
fails with a one-line message that names the argument at fault, or gives what a reference
path gives (each row of a padded batch equals the row alone; the memory a forward pass leaves
equals the memory of reading the same tokens in chunks).

A few dozen cases run in the suite; for a longer run (a benchmark of robustness):

    ARMT_FUZZ_CASES=2000 python -m pytest -q tests/test_fuzz.py
"""

from __future__ import annotations

import os
import random

import torch

from armt import ARMTConfig, ARMTForCausalLM

CASES = int(os.environ.get("ARMT_FUZZ_CASES", "30"))
VOCAB = 61
# a message must name one of these (the argument, or the config field, at fault)
NAMES = ("input_ids", "attention_mask", "labels", "segment_size", "num_mem_tokens", "d_mem", "n_heads",
         "input is empty", "padded batch", "last_segment_loss_only", "memory")


def _draw_config(rng: random.Random) -> dict:
    config = dict(num_mem_tokens=rng.choice([0, 1, 2, 3]), d_mem=rng.choice([4, 8]),
                  segment_size=rng.choice([0, -2, 1, 3, 5, 8]),
                  segment_alignment=rng.choice(["left", "left", "right"]),
                  memory=rng.choice(["associative", "associative", "tokens"]))
    if rng.random() < 0.2:
        config["n_heads"] = rng.choice([1, 2, 3])
    if rng.random() < 0.2:
        config["last_segment_loss_only"] = True
    return config


def _draw_inputs(rng: random.Random, gen: torch.Generator) -> dict:
    B, L = rng.choice([0, 1, 2, 3]), rng.choice([0, 1, 4, 7, 13, 20])
    ids = torch.randint(VOCAB, (B, L), generator=gen)
    kind = rng.random()
    if kind < 0.08:
        ids = ids + VOCAB  # out of range
    elif kind < 0.12:
        ids = ids.float()
    elif kind < 0.15:
        ids = ids.bool()
    elif kind < 0.2:
        ids = ids.to(torch.int32)
    inputs = {"input_ids": ids}
    mask_kind = rng.choice(["none", "none", "left", "right", "shape", "values"])
    if mask_kind in ("left", "right") and B and L:
        lengths = torch.randint(1, L + 1, (B,), generator=gen)
        pos = torch.arange(L).unsqueeze(0)
        mask = pos >= (L - lengths).unsqueeze(1) if mask_kind == "left" else pos < lengths.unsqueeze(1)
        inputs["attention_mask"] = mask.long()
    elif mask_kind == "shape":
        inputs["attention_mask"] = torch.ones(B, L + 1, dtype=torch.long)
    elif mask_kind == "values":
        inputs["attention_mask"] = torch.full((B, L), 2, dtype=torch.long)
    label_kind = rng.choice(["none", "ids", "ids", "ignored", "range"])
    if label_kind == "ids" and ids.dtype in (torch.long, torch.int32):
        inputs["labels"] = ids.long().clamp(0, VOCAB - 1)
    elif label_kind == "ignored":
        inputs["labels"] = torch.full((B, L), -100)
    elif label_kind == "range":
        inputs["labels"] = torch.full((B, L), VOCAB + 3)
    return inputs


def _assert_named_one_line(err: Exception) -> None:
    text = str(err)
    assert isinstance(err, (ValueError, TypeError)), f"{type(err).__name__}: {text}"
    assert "\n" not in text.strip(), f"more than one line: {text!r}"
    assert any(name in text for name in NAMES), f"names no argument: {text!r}"


def _run_case(seed: int, tiny_base) -> str:
    rng = random.Random(seed)
    gen = torch.Generator().manual_seed(seed)
    family = rng.choice(["gpt2", "llama"])
    try:
        model = ARMTForCausalLM(tiny_base(family, vocab=VOCAB), ARMTConfig(**_draw_config(rng))).eval()
    except (ValueError, TypeError) as err:
        _assert_named_one_line(err)
        return "config refused"
    inputs = _draw_inputs(rng, gen)
    try:
        with torch.no_grad():
            out = model(**inputs)
    except (ValueError, TypeError) as err:
        _assert_named_one_line(err)
        return "input refused"
    ids, mask = inputs["input_ids"].long(), inputs.get("attention_mask")
    assert out.logits.shape == (*ids.shape, VOCAB)
    if out.loss is not None:
        assert torch.isfinite(out.loss)
    with torch.no_grad():
        for row in range(ids.shape[0]):  # the reference: every row alone, without padding
            keep = torch.ones(ids.shape[1], dtype=torch.bool) if mask is None else mask[row].bool()
            alone = model(ids[row:row + 1, keep])
            torch.testing.assert_close(out.logits[row, keep], alone.logits[0], rtol=1e-4, atol=1e-4)
        if mask is None and model.config.segment_alignment == "left":
            chunks = ids.split(rng.choice([1, 3, 8]), dim=1)
            read = model.read(chunks).memory
            for got, want in zip(read.layers, out.memory.layers):
                torch.testing.assert_close(got.A, want.A, rtol=1e-4, atol=1e-5)
    return "ran, equal to the reference"


def test_api_inputs_fail_with_a_named_message_or_match_the_reference(tiny_base):
    outcomes = [_run_case(seed, tiny_base) for seed in range(CASES)]
    # the generator reaches all three outcomes (so the test exercises something)
    assert {"config refused", "input refused", "ran, equal to the reference"} <= set(outcomes), outcomes


CLI_FLAGS = {
    "--threads": ["1", "0", "-3", "x"],
    "--encoding": ["utf-8", "latin-1", "nonsense"],
    "--chunk-chars": ["50", "0", "1e3"],
    "--device": ["cpu", "gpu7"],
    "--dtype": ["auto", "float32", "int8"],
}


def test_command_line_fails_in_one_line_or_succeeds(tiny_base, tmp_path, capsys):
    from armt.cli import main
    from armt.data.tokenizer import train_bpe_tokenizer

    text = "".join(f"Mary went to the kitchen {i}. John took the apple.\n" for i in range(30))
    (tmp_path / "book.txt").write_text(text)
    tok = train_bpe_tokenizer([text], vocab_size=300)
    model = ARMTForCausalLM(tiny_base("gpt2", vocab=len(tok)), ARMTConfig(num_mem_tokens=2, d_mem=8, segment_size=16))
    model.save_pretrained(tmp_path / "m", save_base=True)
    tok.save_pretrained(tmp_path / "m")
    rng = random.Random(0)
    codes = set()
    for case in range(max(6, CASES // 4)):
        argv = ["read", "--model", str(tmp_path / rng.choice(["m", "m", "missing"])), "--input",
                str(tmp_path / "book.txt"), "--save-memory", str(tmp_path / f"s{case}.safetensors"), "--quiet"]
        for flag, values in CLI_FLAGS.items():
            if rng.random() < 0.5:
                argv += [flag, rng.choice(values)]
        try:
            code = main(argv)
        except SystemExit as exc:
            code = exc.code
        captured = capsys.readouterr()
        codes.add(code)
        assert code in (0, 2), (argv, captured.err)
        if code == 2:
            last = captured.err.strip().splitlines()[-1]
            assert "error:" in last and "Traceback" not in captured.err, (argv, captured.err)
    assert codes == {0, 2}
