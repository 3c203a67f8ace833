"""The ``armt`` command line (the only argv parser of the project)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence


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


def _load(args: argparse.Namespace):
    import torch

    from . import ARMTForCausalLM
    from .saving import load_tokenizer

    torch.set_num_threads(args.threads)
    kwargs = {} if args.dtype == "auto" else {"dtype": getattr(torch, args.dtype)}
    model = ARMTForCausalLM.from_pretrained(args.model, base_model=args.base, **kwargs).eval()
    if args.dtype != "auto":
        model.to(getattr(torch, args.dtype))
    return model.to(args.device), load_tokenizer(args.model, args.tokenizer)


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _read(args: argparse.Namespace) -> int:
    import os

    from .state import MemoryState
    from .streaming import iter_text_tokens

    if os.path.exists(args.save_memory) and not args.overwrite:
        raise FileExistsError(f"{args.save_memory} exists; pass --overwrite to replace it.")
    if not os.path.isfile(args.input):
        raise FileNotFoundError(f"--input {args.input} is not a file.")
    model, tokenizer = _load(args)
    memory = MemoryState.load(args.memory, device=args.device) if args.memory else None
    start = time.perf_counter()
    # a byte count is a good enough bar total for most tokenizers (~4 bytes per token)
    total = os.path.getsize(args.input) // 4
    result = model.read(iter_text_tokens(args.input, tokenizer, chunk_chars=args.chunk_chars), memory,
                        compute_loss=args.loss, progress=not args.quiet, total=total)
    took = time.perf_counter() - start
    if result.memory is None:
        raise ValueError(f"--input {args.input} holds no tokens.")
    result.memory.save(args.save_memory, overwrite=args.overwrite)
    line = (f"read {result.tokens:,} tokens in {took:.1f}s ({result.tokens / took:,.0f} tokens/s), "
            f"{result.memory.segments} segments in memory, peak RSS {_peak_rss_mib():,.0f} MiB; "
            f"memory saved to {args.save_memory}")
    if args.loss and result.loss is not None:
        import math

        line += f"; loss {result.loss:.4f} (perplexity {math.exp(result.loss):.2f})"
    print(line)
    return 0


def _generate(args: argparse.Namespace) -> int:
    import torch

    from .state import MemoryState

    model, tokenizer = _load(args)
    memory = MemoryState.load(args.memory, device=args.device) if args.memory else None
    ids = tokenizer(args.prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(args.device)
    if ids.shape[1] == 0:
        raise ValueError("--prompt is empty; give the question or text to continue.")
    torch.manual_seed(args.seed)
    options = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample)
    if args.do_sample:
        options.update(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    if args.repetition_penalty != 1.0:
        options["repetition_penalty"] = args.repetition_penalty
    if tokenizer.eos_token_id is not None:
        options.setdefault("eos_token_id", tokenizer.eos_token_id)
        options.setdefault("pad_token_id", tokenizer.pad_token_id if tokenizer.pad_token_id is not None
                           else tokenizer.eos_token_id)
    if args.stream:
        from transformers import TextStreamer

        options["streamer"] = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    out = model.generate(ids, memory=memory, **options)
    if not args.stream:
        print(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return 0


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="directory written by save_pretrained (or armt train)")
    p.add_argument("--base", default=None,
                   help="base model name or path, when the directory holds only the ARMT weights "
                        "(default: the saved base, or the recorded name)")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer name or path (default: the one saved in --model, else the base's)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="dtype of the model")
    p.add_argument("--memory", default=None, help="memory state (.safetensors) to start from")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads")


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

    rd = sub.add_parser("read", help="read a text file of any length into memory and save the state")
    _add_model_args(rd)
    rd.add_argument("--input", required=True, help="text file to read (streamed, never loaded whole)")
    rd.add_argument("--save-memory", required=True, help="where to write the memory state (.safetensors)")
    rd.add_argument("--overwrite", action="store_true", help="replace an existing --save-memory file")
    rd.add_argument("--loss", action="store_true", help="also report the language-model loss of the text")
    rd.add_argument("--chunk-chars", type=int, default=1 << 20, help="characters tokenized at a time")
    rd.add_argument("--quiet", action="store_true", help="no progress bar")
    rd.set_defaults(func=_read)

    gen = sub.add_parser("generate", help="generate text after a prompt, reading a saved memory state")
    _add_model_args(gen)
    gen.add_argument("--prompt", required=True, help="text to continue, e.g. a question about what was read")
    gen.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate")
    gen.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--temperature", type=float, default=1.0, help="sampling temperature")
    gen.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling threshold")
    gen.add_argument("--top-k", type=int, default=50, help="sample among the k most likely tokens")
    gen.add_argument("--repetition-penalty", type=float, default=1.0, help="HF repetition penalty")
    gen.add_argument("--seed", type=int, default=0, help="random seed for sampling")
    gen.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    gen.set_defaults(func=_generate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
