"""Associative-retrieval capacity: ARMT against the RMT baseline under the same budget.

Trains a tiny GPT-NeoX (4 layers, width 128, 4 heads, MLP 512; 4 memory tokens, d_mem 32) on
the ARMT paper's capacity task (one key-value pair per 4-token segment, then a query) with a
curriculum over the number of pairs N that advances at exact match >= 0.95, once with ARMT and
once with RMT, each for at most ``--budget-min`` minutes; then evaluates both at N = 2 .. 128
(far beyond what was trained) and ARMT again with its memory wiped before the query (the
control). Writes capacity.json / .md / .png into ``--out`` and prints the wall time and the
step time at N=16 next to the official code's 1.94 s.

    python benchmarks/capacity.py [--budget-min 30] [--threads 2] [--seed 0] [--out docs]
    python benchmarks/capacity.py --side-by-side   # ARMT and RMT at once, one process and thread each
    python benchmarks/capacity.py --seeds 0,1,2 --curriculum 1,2   # robustness: steps to pass per seed
    python benchmarks/capacity.py --smoke        # seconds: a tiny model, two steps, for tests
    python benchmarks/capacity.py --models armt --option write_gate=hard --prefix capacity_hard
    python benchmarks/capacity.py --step-time --models armt,none   # only the training step at N=16,
        # batch 32, vs 1.94 s (sequential and along the diagonals), and against the bare model
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import asdict

import torch

from armt.config import parse_option
from armt.evaluation.capacity import (OFFICIAL_STEP_S_N16, capacity_markdown, capacity_outputs,
                                     run_capacity_benchmark, seed_robustness, write_capacity)
from armt.data.capacity import CapacityConfig
from armt.training.capacity import CapacityModelSpec, CapacityRecipe, time_training_step


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="armt,rmt", help="comma-separated: armt, rmt, none")
    p.add_argument("--budget-min", type=float, default=30.0, help="training minutes per model")
    p.add_argument("--curriculum", default="1,2,4,8,16,32")
    p.add_argument("--eval-pairs", default="2,4,8,16,32,64,128")
    p.add_argument("--eval-samples", type=int, default=512)
    p.add_argument("--variant", default="remember", choices=["remember", "rewrite"])
    p.add_argument("--lr", type=float, default=CapacityRecipe.learning_rate)
    p.add_argument("--warmup", type=int, default=CapacityRecipe.warmup_steps)
    p.add_argument("--batch-size", type=int, default=CapacityRecipe.batch_size)
    p.add_argument("--seed", type=int, default=0, help="model and data seed")
    p.add_argument("--seeds", default=None, help="robustness mode: train ARMT once per seed (comma-separated) "
                   "through --curriculum and report the step at which each stage passed")
    p.add_argument("--max-steps-per-stage", type=int, default=None)
    p.add_argument("--max-steps", type=int, default=None,
                   help="optimizer steps of the whole training (a budget that does not depend on the machine's load; "
                        "the time budget still applies)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="docs", help="folder for capacity.json/.md/.png")
    p.add_argument("--prefix", default="capacity")
    p.add_argument("--overwrite", action="store_true", help="replace existing result files")
    p.add_argument("--smoke", action="store_true", help="tiny model, a few steps (a test of this script)")
    p.add_argument("--side-by-side", action="store_true",
                   help="train the models at the same time, one process with one thread each (on 2 cores "
                        "the wall time halves; each model still gets --budget-min), then merge the results")
    p.add_argument("--wavefront", action="store_true", help="train ARMT along the diagonals (same numbers)")
    p.add_argument("--option", type=parse_option, action="append", default=[],
                   help="an ARMTConfig field for every model, NAME=VALUE (repeatable), e.g. write_gate=hard")
    p.add_argument("--step-time", action="store_true",
                   help="only time a training step of a fresh model at N=16, batch 32 (the official figure)")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    if args.step_time:
        # 'none' is the bare model on the same tokens, segment by segment: the ratio to it travels
        # between machines, where seconds do not
        times = {}
        for kind in [k.strip() for k in args.models.split(",") if k.strip()]:
            for wave in ([False, True] if kind == "armt" else [False]):
                net = CapacityModelSpec(seed=args.seed, kind=kind, wavefront=wave).build(CapacityConfig(num_pairs=16))
                name = kind + (" (wavefront)" if wave else "")
                times[name] = time_training_step(net, 16, batch_size=32, repeats=10)
                print(f"{name} training step at N=16, batch 32, {args.threads} threads: {times[name]:.3f}s (median "
                      f"of 10; official ARMT code: {OFFICIAL_STEP_S_N16}s)")
        if "none" in times:
            for name, t in times.items():
                if name != "none":
                    print(f"{name} / bare model: {t / times['none']:.2f}x (the official code: 1.5-1.8 s against 0.21 s "
                          "for the bare model, 7-9x, ../shared/reference/README.md)")
        return 0
    kinds = [k.strip() for k in args.models.split(",") if k.strip()]
    recipe = CapacityRecipe(curriculum=tuple(int(n) for n in args.curriculum.split(",")),
                            time_budget_s=args.budget_min * 60, learning_rate=args.lr, warmup_steps=args.warmup,
                            batch_size=args.batch_size, variant=args.variant, seed=args.seed,
                            max_steps_per_stage=args.max_steps_per_stage, max_steps=args.max_steps)
    model = CapacityModelSpec(seed=args.seed, wavefront=args.wavefront, options=tuple(args.option))
    eval_pairs = [int(n) for n in args.eval_pairs.split(",")]
    eval_samples = args.eval_samples
    if args.smoke:
        recipe = CapacityRecipe(curriculum=(1, 2), max_steps_per_stage=2, eval_every=2, eval_samples=8,
                                variant=args.variant, seed=args.seed)
        model = CapacityModelSpec(layers=1, hidden=32, heads=2, intermediate=64, seed=args.seed)
        eval_pairs, eval_samples = eval_pairs[:2], 8
    if args.seeds:
        return _seeds(args, recipe, model)
    try:
        capacity_outputs(args.out, args.prefix, overwrite=args.overwrite)  # refuse now, not after the run
    except FileExistsError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.side_by_side:
        return _side_by_side(args, kinds, argv if argv is not None else sys.argv[1:])
    print(f"capacity benchmark: models {kinds}, seed {args.seed}, {args.threads} threads, budget "
          f"{recipe.time_budget_s / 60:.0f} min per model, command: {' '.join(sys.argv)}", flush=True)
    start = time.perf_counter()
    results = run_capacity_benchmark(kinds, recipe=recipe, model=model, eval_pairs=eval_pairs,
                                     eval_samples=eval_samples, log=lambda s: print(s, flush=True),
                                     log_path=None)
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    results["command"] = "python benchmarks/capacity.py " + " ".join(sys.argv[1:])
    paths = write_capacity(results, args.out, overwrite=args.overwrite, prefix=args.prefix)
    print(capacity_markdown(results))
    for kind, entry in results["models"].items():
        t16 = entry["step_s_n16_batch32"]
        print(f"{entry['label']} training step at N=16, batch 32, {args.threads} threads: {t16:.3f}s "
              f"(official ARMT code: {OFFICIAL_STEP_S_N16}s; {OFFICIAL_STEP_S_N16 / t16:.1f}x faster)")
    print(f"wall time {results['wall_seconds']:.0f}s; wrote {', '.join(str(p) for p in paths)}")
    return 0


def _side_by_side(args, kinds, argv) -> int:
    import json
    import subprocess
    import tempfile
    from pathlib import Path

    rest, skip = [], False
    for a in argv:  # the same flags for every child, less those this parent sets
        if skip:
            skip = False
        elif a in ("--models", "--threads", "--out", "--prefix"):
            skip = True
        elif a != "--side-by-side" and not a.startswith(("--models=", "--threads=", "--out=", "--prefix=")):
            rest.append(a)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        procs = [subprocess.Popen([sys.executable, __file__, "--models", kind, "--threads", "1", "--out", tmp,
                                   "--prefix", kind, *rest]) for kind in kinds]
        codes = [p.wait() for p in procs]
        if any(codes):
            print(f"error: a child run failed (exit codes {codes})", file=sys.stderr)
            return 1
        parts = [json.loads((Path(tmp) / f"{kind}.json").read_text()) for kind in kinds]
    results = parts[0]
    for part in parts[1:]:
        results["models"].update(part["models"])
    results["threads"] = "1 per model, models trained side by side"
    results["wall_seconds"] = round(time.perf_counter() - start, 1)
    results["command"] = "python benchmarks/capacity.py " + " ".join(argv)
    paths = write_capacity(results, args.out, overwrite=args.overwrite, prefix=args.prefix)
    print(capacity_markdown(results))
    print(f"wall time {results['wall_seconds']:.0f}s; wrote {', '.join(str(p) for p in paths)}")
    return 0


def _seeds(args, recipe, model) -> int:
    import json
    from pathlib import Path

    seeds = [int(s) for s in args.seeds.split(",")]
    path = Path(args.out) / f"{args.prefix}_seeds.json"
    if path.exists() and not args.overwrite:
        print(f"error: {path} exists; pass --overwrite to replace it.", file=sys.stderr)
        return 2
    if args.smoke:
        recipe = CapacityRecipe(curriculum=(1,), max_steps_per_stage=2, eval_every=2, eval_samples=8)
    print(f"seed robustness: seeds {seeds}, curriculum {list(recipe.curriculum)}, lr {recipe.learning_rate}, "
          f"warm-up {recipe.warmup_steps}, batch {recipe.batch_size}, {args.threads} threads", flush=True)
    rows = seed_robustness(seeds, recipe=recipe, model=model, log=lambda s: print(s, flush=True))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"recipe": asdict(recipe), "rows": rows,
                                "command": "python benchmarks/capacity.py " + " ".join(sys.argv[1:])}, indent=1))
    stages = [str(n) for n in recipe.curriculum]
    print("| seed | " + " | ".join(f"steps to pass N={n}" for n in stages) + " | seconds |")
    print("|---|" + "---|" * len(stages) + "---|")
    for r in rows:
        print(f"| {r['seed']} | " + " | ".join(str(r["passed_at_step"].get(n, "-")) for n in stages)
              + f" | {r['seconds']:.0f} |")
    print(f"wrote {path}")
    return 0 if all(r["passed_all"] for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
