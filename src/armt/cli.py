"""The ``armt`` command line (the only argv parser of the project)."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Optional, Sequence


def _demo(args: argparse.Namespace) -> int:
    import torch

    from . import ARMTConfig, ARMTForCausalLM, segment_bounds
    from .tiny import tiny_base_model

    torch.set_num_threads(args.threads)
    base = tiny_base_model(args.family)
    cfg = ARMTConfig(num_mem_tokens=args.mem_tokens, d_mem=args.d_mem, segment_size=args.segment_size)
    model = ARMTForCausalLM(base, cfg).eval()
    vocab = base.config.vocab_size
    ids = torch.randint(vocab, (1, args.tokens), generator=torch.Generator().manual_seed(0))
    print(f"armt demo: random {args.family} ({sum(p.numel() for p in base.parameters()) / 1e6:.2f}M params), "
          f"{args.tokens} tokens, segments of {cfg.segment_size} + {cfg.num_mem_tokens} memory tokens")

    with torch.no_grad():
        first = ids[:, :cfg.segment_size]
        diff = (model(first).logits - base(first).logits).abs().max().item()
        print(f"fresh wrapper vs base model on the first segment: max |logit diff| = {diff:.2e}")

        start = time.perf_counter()
        for a, b in segment_bounds(args.tokens, cfg.segment_size, "left"):
            base.base_model(ids[:, a:b])
        bare = time.perf_counter() - start

        start = time.perf_counter()
        out = model(ids, output_only_last_segment=True)
        took = time.perf_counter() - start
    state_bytes = sum(t.numel() * t.element_size() for t in out.memory.tensors().values())
    print(f"bare model, segment by segment: {bare:.2f}s ({args.tokens / bare:,.0f} tokens/s)")
    print(f"ARMT: {took:.2f}s ({args.tokens / took:,.0f} tokens/s, {took / bare:.2f}x the bare model), "
          f"{out.memory.segments} segments written")
    print(f"memory state: {len(out.memory.layers)} layers, {state_bytes / 1024:.0f} KiB whatever the input length")
    return 0


def _convert_official(args: argparse.Namespace) -> int:
    import os

    from transformers import AutoConfig, AutoModelForCausalLM

    from .config import ARMTConfig
    from .official import load_official_checkpoint
    from .saving import CONFIG_NAME

    if os.path.exists(os.path.join(args.output, CONFIG_NAME)) and not args.overwrite:
        print(f"error: {args.output} already holds an ARMT model; pass --overwrite to replace it.", file=sys.stderr)
        return 2
    base_cfg = AutoConfig.from_pretrained(args.base)
    base = AutoModelForCausalLM.from_config(base_cfg)
    cfg = ARMTConfig(segment_size=args.segment_size, n_heads=args.n_heads, use_denom=not args.no_denom,
                     correction=not args.no_correction, segment_alignment=args.segment_alignment)
    model = load_official_checkpoint(base, args.input, cfg)
    model.save_pretrained(args.output, save_base=True, overwrite=args.overwrite)
    c = model.config
    print(f"converted {args.input} -> {args.output}: {type(base).__name__}, {c.num_mem_tokens} memory tokens, "
          f"d_mem={c.d_mem}, n_heads={c.n_heads}, gating={c.gating}, sink={c.use_sink}, "
          f"layers at {c.layers_path!r}, segment_size={c.segment_size}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="armt", description="Associative Recurrent Memory Transformer tools.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="wrap a small random model and run a long input through it")
    demo.add_argument("--family", default="gpt2", choices=["gpt2", "llama"], help="base model family")
    demo.add_argument("--tokens", type=int, default=16384, help="length of the random input")
    demo.add_argument("--segment-size", type=int, default=128, help="real tokens per segment")
    demo.add_argument("--mem-tokens", type=int, default=16, help="memory tokens per segment")
    demo.add_argument("--d-mem", type=int, default=32, help="memory key width before DPFP")
    demo.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    demo.set_defaults(func=_demo)

    conv = sub.add_parser("convert-official", help="convert a checkpoint of the official ARMT code")
    conv.add_argument("input", help="official state dict (.safetensors, or .bin/.pt opened weights-only)")
    conv.add_argument("output", help="directory to write (ARMT config + weights + base model)")
    conv.add_argument("--base", required=True,
                      help="Hub name or local directory of the base model's config (its weights are not used)")
    conv.add_argument("--segment-size", type=int, default=512, help="segment size the checkpoint was trained with")
    conv.add_argument("--n-heads", type=int, default=1, help="memory heads (needed only with gating)")
    conv.add_argument("--segment-alignment", default="left", choices=["left", "right", "center"],
                      help="how inputs are split into segments")
    conv.add_argument("--no-denom", action="store_true", help="the checkpoint was trained with use_denom=False")
    conv.add_argument("--no-correction", action="store_true", help="the checkpoint was trained with correction=False")
    conv.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    conv.set_defaults(func=_convert_official)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
