"""ARMT against the bare model on a GPU: SmolLM2-135M in bf16 with a float32 memory.

For each length (8k to 128k tokens by default), prints seconds and peak GPU memory of:
reading (no grad) with the bare backbone segment by segment, ARMT sequentially and ARMT along
the diagonals (wavefront); and a training step (forward + backward; ARMT with per-segment
gradient checkpointing from 32k up, so that memory stays flat) for the bare model segment by
segment and for ARMT. Each figure is the median of ``--repeats`` interleaved runs.

The model is SmolLM2-135M's architecture (30 layers, width 576, 9 heads, 3 key/value heads) with
random weights, so nothing needs downloading: speed and memory do not depend on the weights.
``--base PATH`` loads a real folder instead. Sized to run in about 8 minutes on one H100:

    python benchmarks/gpu_check.py --out $OUT/gpu_check.json

Every path it uses is tested on the CPU with a tiny model (``tests/evaluation/test_cost.py``):

    python benchmarks/gpu_check.py --tiny --device cpu --lengths 64 --repeats 1
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

import armt
from armt.evaluation.cost import step_functions

SMOLLM2 = dict(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
               num_key_value_heads=3, head_dim=64, vocab_size=49152, max_position_embeddings=8192,
               rope_theta=100000.0, rms_norm_eps=1e-5, tie_word_embeddings=True)
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            head_dim=8, vocab_size=128, max_position_embeddings=4096, tie_word_embeddings=True)


def make_base(args, dtype):
    from transformers import LlamaConfig, LlamaForCausalLM

    if args.base:
        from armt.bases import load_base_model

        return load_base_model(args.base, dtype=dtype)
    torch.manual_seed(0)
    config = LlamaConfig(**(TINY if args.tiny else SMOLLM2))
    return LlamaForCausalLM(config).to(dtype)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(fn, device, repeats: int) -> tuple[float, float]:
    """Median seconds and peak memory (GiB; 0 on the CPU) of ``fn``."""
    times, peak = [], 0.0
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
        if device.type == "cuda":
            peak = max(peak, torch.cuda.max_memory_allocated(device) / 2**30)
    return statistics.median(times), peak


def passes(base, model, ids, segment, checkpoint: bool):
    fns = step_functions(base, model, ids, segment)
    train_armt = fns["train ARMT"]

    def train_armt_checkpointed():
        model.gradient_checkpointing = checkpoint
        train_armt()

    return {"read bare": fns["read bare"],
            "read ARMT": lambda: model.read([ids], wavefront=False),
            "read ARMT wavefront": lambda: model.read([ids], wavefront=True),
            "train bare": fns["train bare"],
            "train ARMT": train_armt_checkpointed}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 32768, 131072])
    p.add_argument("--train-up-to", type=int, default=32768, help="train only at lengths up to this")
    p.add_argument("--checkpoint-from", type=int, default=32768,
                   help="ARMT training recomputes each segment in the backward from this length")
    p.add_argument("--segment", type=int, default=256)
    p.add_argument("--mem", type=int, default=16)
    p.add_argument("--d-mem", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", default=None, help="base dtype (default: bfloat16 on a GPU, float32 on the CPU)")
    p.add_argument("--base", help="a local model folder instead of SmolLM2's architecture with random weights")
    p.add_argument("--tiny", action="store_true", help="a tiny Llama (a test of this script)")
    p.add_argument("--budget-s", type=float, default=480, help="skip what is left after this many seconds")
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda, but torch sees no GPU; use --device cpu", file=sys.stderr)
        return 2
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    start = time.perf_counter()
    base = make_base(args, dtype).to(device).eval()
    model = armt.ARMTForCausalLM(make_base(args, dtype), armt.ARMTConfig(
        num_mem_tokens=args.mem, d_mem=args.d_mem, segment_size=args.segment, memory_dtype="float32")).to(device).eval()
    torch.manual_seed(1)
    for mem in model.cell.memory_layers:  # W_mv = 0 at init would leave the read idle
        mem.W_mv.reset_parameters()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"{name}; base {dtype}, memory float32; segment {args.segment}, {args.mem} memory tokens, d_mem "
          f"{args.d_mem}; median of {args.repeats}; torch {torch.__version__}", flush=True)
    print("| tokens | pass | seconds | x bare | peak GiB |\n|---|---|---|---|---|", flush=True)
    rows = []
    for length in args.lengths:
        ids = torch.randint(base.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0)).to(device)
        fns = passes(base, model, ids, args.segment, checkpoint=length >= args.checkpoint_from)
        if length > args.train_up_to:
            fns = {k: v for k, v in fns.items() if not k.startswith("train")}
        for fn in fns.values():  # warm-up, and a first look at the budget
            if time.perf_counter() - start > args.budget_s:
                break
            fn()
        seen = {}
        for key, fn in fns.items():
            if time.perf_counter() - start > args.budget_s:
                print(f"| {length} | {key} | skipped: past --budget-s {args.budget_s:.0f} | | |", flush=True)
                continue
            seconds, peak = measure(fn, device, args.repeats)
            seen[key] = seconds
            ref = seen.get(key.split(" ")[0] + " bare")
            ratio = f"{seconds / ref:.2f}x" if ref and not key.endswith("bare") else ""
            rows.append({"tokens": length, "pass": key, "seconds": seconds, "peak_gib": peak})
            print(f"| {length} | {key} | {seconds:.3f} | {ratio} | {peak:.2f} |", flush=True)
    print(f"wall {time.perf_counter() - start:.0f} s")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"device": name, "dtype": str(dtype), "rows": rows, "args": vars(args)}, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
