"""Length generalisation: trained on at most 16 segments, read up to 16,384.

Trains the capacity benchmark's tiny GPT-NeoX (4 layers, width 128; 4 memory tokens, d_mem 32)
on the needle task (``armt.data.needle``: K=4 facts ``k1 k2 : v`` among M segments of
distractors, then the query) through the stages (K, M) = (1, 1), (2, 2), (4, 4), (4, 8), (4, 16),
each until exact match 0.9, once with ARMT, once with RMT and once without memory, the same budget
each, on batches that mix random-symbol and book-text distractors. Then evaluates each model at
M = 16 .. 16,384 segments (1x to 1,024x the longest training input) on both distractor kinds,
with 95% intervals and the memory-wiped control, and writes length.json / .md / .png to ``--out``.

    python benchmarks/length.py [--budget-min 7] [--out docs/length]
    python benchmarks/length.py --models armt --option write_gate=hard --write-penalty 0.5 --hold-last --prefix length_hold
    # hard gate, linear penalty, leak rule: an exact gate on every seed tried (docs/results/length.md)
    python benchmarks/length.py --models armt --option write_gate=hard --write-penalty 2 --write-margin 0.25 \
        --write-penalty-shape linear --hold-last --keep-best --leak-stop 0 --leak-segments 256 \
        --max-steps 3000 --seed 0 --threads 1 --long-samples 64 --prefix length_linear_seed0
    # continue a saved run's model on the last stage (runs/length/<prefix>/<kind> is what a run saves)
    python benchmarks/length.py --models armt --option write_gate=hard --write-penalty 2 --write-margin 0.25 \
        --init runs/length/length_w2_2000_seed2_best --stages "4,16" --hold-last --max-steps 400 --prefix more
    python benchmarks/length.py --smoke     # seconds: a tiny model, two steps (a test of this script)
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from armt.config import parse_option
from armt.evaluation.capacity import capacity_outputs
from armt.evaluation.length import EVAL_SEGMENTS, length_table, run_length_benchmark, write_length
from armt.training.capacity import CapacityModelSpec, CapacityRecipe
from armt.evaluation.needle import DEFAULT_STAGES


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="armt,rmt,none", help="comma-separated: armt, rmt, none")
    p.add_argument("--budget-min", type=float, default=7.0, help="training minutes per model")
    p.add_argument("--max-steps", type=int, default=None,
                   help="training steps per model (with a generous --budget-min: the same run on any machine)")
    p.add_argument("--stages", default=";".join(f"{k},{m}" for k, m in DEFAULT_STAGES),
                   help="curriculum stages 'K,M;K,M;...' (facts, segments)")
    p.add_argument("--distractors", default="symbols,text", help="comma-separated: symbols, text")
    p.add_argument("--variant", default="remember", choices=["remember", "rewrite"])
    p.add_argument("--text-source", default=None,
                   help="folder of .txt books for the text distractors (default: ../shared/data/gutenberg if it "
                        "exists, else built-in generated prose)")
    p.add_argument("--eval-segments", default=",".join(str(m) for m in EVAL_SEGMENTS))
    p.add_argument("--eval-samples", type=int, default=64)
    p.add_argument("--long-samples", type=int, default=32, help="samples at M >= --long-from")
    p.add_argument("--long-from", type=int, default=4096)
    p.add_argument("--stop-below", type=float, default=None,
                   help="skip the longer lengths of a distractor kind once exact match falls below this")
    p.add_argument("--advance-at", type=float, default=0.9, help="exact match that ends a stage")
    p.add_argument("--write-penalty", type=float, default=0.0,
                   help="add this times the mean write strength beta to the training loss")
    p.add_argument("--write-margin", type=float, default=0.0,
                   help="with --option write_gate=hard: the penalty counts a gate as open until its input is "
                        "4 x this below the shut point")
    p.add_argument("--write-penalty-on", choices=["all", "distractors"], default="all",
                   help="which writes pay the penalty: all, or only those of distractor segments (the task "
                        "knows where its facts are)")
    p.add_argument("--write-penalty-shape", choices=["clipped", "linear"], default="clipped",
                   help="with --option write_gate=hard: the penalty flat past the fully open point like the gate "
                        "(clipped), or rising there (linear), so a gate stuck open is pulled back")
    p.add_argument("--init", default=None,
                   help="start each model from the one an earlier run saved (DIR/<kind>, e.g. runs/length/PREFIX) "
                        "instead of a fresh one; --stages then continues that run")
    p.add_argument("--hold-last", action="store_true",
                   help="train the last stage for the rest of the budget once it passes (default: stop there)")
    p.add_argument("--keep-best", action="store_true",
                   help="with --hold-last: keep the weights of the held stage's best evaluation, not the last step's")
    p.add_argument("--leak-stop", type=float, default=None,
                   help="with --hold-last: end the held stage at the first passing evaluation whose gate leak (share "
                        "of distractor segments beyond the training length where a hard gate opens) is at most this; "
                        "with --keep-best keep the passing evaluation with the least leak")
    p.add_argument("--leak-segments", type=int, default=CapacityRecipe.leak_segments,
                   help="segments of the inputs the leak is measured on")
    p.add_argument("--leak-samples", type=int, default=CapacityRecipe.leak_samples)
    p.add_argument("--lr", type=float, default=CapacityRecipe.learning_rate)
    p.add_argument("--batch-size", type=int, default=CapacityRecipe.batch_size)
    p.add_argument("--seed", type=int, default=0, help="model and data seed")
    p.add_argument("--option", type=parse_option, action="append", default=[],
                   help="an ARMTConfig field for every model, NAME=VALUE (repeatable)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="docs/length", help="folder for <prefix>.json/.md/.png")
    p.add_argument("--prefix", default="length")
    p.add_argument("--save-models", default="runs/length",
                   help="save each trained model to DIR/<prefix>/<kind> ('' to keep none)")
    p.add_argument("--overwrite", action="store_true", help="replace existing result files")
    p.add_argument("--smoke", action="store_true", help="tiny model, a few steps (a test of this script)")
    args = p.parse_args(argv)
    if args.keep_best and not args.hold_last:
        p.error("--keep-best picks among the evaluations of the held last stage: add --hold-last")
    if args.leak_stop is not None and not args.hold_last:
        p.error("--leak-stop ends the held last stage: add --hold-last")
    if args.threads < 1:
        p.error(f"--threads must be >= 1, got {args.threads}")
    torch.set_num_threads(args.threads)
    # denormal floats in a long-lived memory state slow CPU maths several times
    torch.set_flush_denormal(True)
    try:
        capacity_outputs(args.out, args.prefix, overwrite=args.overwrite)  # refuse now, not after the run
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    stages = [tuple(int(x) for x in s.split(",")) for s in args.stages.split(";") if s.strip()]
    distractors = [d.strip() for d in args.distractors.split(",") if d.strip()]
    segments = [int(m) for m in args.eval_segments.split(",")]
    text_source = args.text_source
    if text_source is None and "text" in distractors:
        from pathlib import Path

        shared = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "gutenberg"
        text_source = str(shared) if shared.is_dir() else "builtin"
    recipe = CapacityRecipe(time_budget_s=args.budget_min * 60, max_steps=args.max_steps, learning_rate=args.lr,
                            batch_size=args.batch_size, seed=args.seed, advance_at=args.advance_at, write_penalty=args.write_penalty,
                            write_margin=args.write_margin, write_penalty_on=args.write_penalty_on,
                            write_penalty_shape=args.write_penalty_shape,
                            hold_last=args.hold_last, keep_best=args.keep_best, leak_stop=args.leak_stop,
                            leak_segments=args.leak_segments, leak_samples=args.leak_samples)
    model = CapacityModelSpec(seed=args.seed, options=tuple(args.option))
    eval_samples, long_samples = args.eval_samples, args.long_samples
    if args.smoke:
        recipe = CapacityRecipe(max_steps_per_stage=2, eval_every=2, eval_samples=8, seed=args.seed,
                                write_penalty=args.write_penalty, write_margin=args.write_margin,
                                write_penalty_on=args.write_penalty_on, write_penalty_shape=args.write_penalty_shape,
                                hold_last=args.hold_last, keep_best=args.keep_best, leak_stop=args.leak_stop,
                                leak_segments=8, leak_samples=4)
        model = CapacityModelSpec(layers=1, hidden=32, heads=2, intermediate=64, seed=args.seed,
                                  options=tuple(args.option))
        stages, segments, eval_samples, long_samples = stages[:2], segments[:2], 8, 8
    print(f"length benchmark: models {kinds}, stages {stages}, distractors {distractors}, seed {args.seed}, "
          f"{args.threads} threads, budget {recipe.time_budget_s / 60:.1f} min per model, options "
          f"{dict(args.option)}", flush=True)
    start = time.perf_counter()
    results = run_length_benchmark(kinds, recipe=recipe, model=model, stages=stages, distractors=distractors,
                                   variant=args.variant, eval_segments=segments, eval_samples=eval_samples,
                                   long_samples=long_samples, long_from=args.long_from, text_source=text_source,
                                   stop_below=args.stop_below,
                                   save_models=f"{args.save_models}/{args.prefix}" if args.save_models else None,
                                   log=lambda s: print(s, flush=True), init_from=args.init)
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    results["command"] = "python benchmarks/length.py " + " ".join(sys.argv[1:] if argv is None else argv)
    paths = write_length(results, args.out, args.prefix, overwrite=args.overwrite)
    print(length_table(results))
    print(f"wall time {results['wall_seconds']:.0f}s; wrote {', '.join(str(p) for p in paths)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
