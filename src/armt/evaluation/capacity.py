"""The capacity benchmark: train ARMT and the RMT baseline on the associative-retrieval capacity
task under the same budget, then measure exact match by the number of pairs N far beyond the
curriculum; write JSON, a markdown table and a plot."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch

from ..data.capacity import CapacityConfig, capacity_batch
from ..training.capacity import (CapacityModelSpec, CapacityRecipe, chance_level, evaluate_capacity,
                                 time_training_step, train_capacity)

LABELS = {"armt": "ARMT", "rmt": "RMT", "none": "no memory"}
OFFICIAL_STEP_S_N16 = 1.94  # official ARMT code, this task and model, 2 threads, this CPU (issue anchor)


def run_capacity_benchmark(kinds: Sequence[str] = ("armt", "rmt"), *, recipe: CapacityRecipe | None = None,
                           model: CapacityModelSpec | None = None, eval_pairs: Sequence[int] = (2, 4, 8, 16, 32, 64, 128),
                           eval_samples: int = 512, eval_seed: int = 12345,
                           log: Callable[[str], None] = print, log_path: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train each model kind with ``recipe`` (the same budget each) and evaluate it at
    ``eval_pairs``; ARMT is also evaluated with its memory wiped before the query (the control).

    Returns a JSON-ready dict; :func:`write_capacity` turns it into files.

    Example:
        >>> spec = CapacityModelSpec(layers=1, hidden=32, heads=2, intermediate=64)
        >>> recipe = CapacityRecipe(curriculum=(1,), max_steps_per_stage=2, eval_every=2, eval_samples=8)
        >>> res = run_capacity_benchmark(["armt", "rmt"], recipe=recipe, model=spec, eval_pairs=[1, 2],
        ...                              eval_samples=8, log=lambda s: None)
        >>> sorted(res["models"]), sorted(res["models"]["armt"]["exact_match"])
        (['armt', 'rmt'], ['1', '2'])
    """
    recipe = recipe or CapacityRecipe()
    model = model or CapacityModelSpec()
    results: dict[str, Any] = {
        "task": {"variant": recipe.variant, **{k: v for k, v in asdict(CapacityConfig(num_pairs=1)).items()
                                               if k in ("num_symbols", "key_len", "value_len")}},
        "recipe": asdict(recipe), "model": asdict(model), "eval_pairs": list(eval_pairs),
        "eval_samples": eval_samples, "eval_seed": eval_seed, "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "torch": torch.__version__,
        "chance": chance_level(CapacityConfig(num_pairs=1)), "models": {},
    }
    for kind in kinds:
        spec = replace(model, kind=kind, wavefront=model.wavefront and kind == "armt")
        net = spec.build(CapacityConfig(num_pairs=1, variant=recipe.variant))
        log(f"[{kind}] training: curriculum N={list(recipe.curriculum)}, budget {recipe.time_budget_s:.0f}s, "
            f"model seed {spec.seed}, data seed {recipe.seed}")

        def progress(record, kind=kind):
            if "stage_done" in record:
                s = record["stage_done"]
                log(f"[{kind}] N={s['num_pairs']}: {'passed' if s['passed'] else 'stopped'} after {s['steps']} "
                    f"steps, {s['seconds']}s, best exact match {s['best_exact_match']:.3f}")
            else:
                log(f"[{kind}] step {record['step']} N={record['num_pairs']} loss {record['loss']:.3f} exact match "
                    f"{record['exact_match']:.3f} ({record['step_s']:.3f}s/step, {record['elapsed_s']}s)")

        path = None if log_path is None else f"{log_path}.{kind}.jsonl"
        run = train_capacity(net, recipe, log=progress, log_path=path)
        start = time.perf_counter()
        em = evaluate_capacity(net, eval_pairs, num_samples=eval_samples, variant=recipe.variant, seed=eval_seed)
        wiped = None if kind == "none" else evaluate_capacity(
            net, eval_pairs, num_samples=eval_samples, variant=recipe.variant, seed=eval_seed, wipe_memory=True)
        entry = _model_entry(LABELS[kind], run, em, wiped)
        entry["eval_seconds"] = round(time.perf_counter() - start, 1)
        # the official code's figure is for batch 32 at N=16: time exactly that, on a copy
        entry["step_s_n16_batch32"] = round(time_training_step(net, 16, batch_size=32, variant=recipe.variant), 4)
        results["models"][kind] = entry
        log(f"[{kind}] exact match by N: " + ", ".join(f"{k}: {v:.3f}" for k, v in entry["exact_match"].items()))
    return results


def _model_entry(label: str, run, em: dict[int, float], wiped: dict[int, float] | None) -> dict[str, Any]:
    """One model's results, JSON-ready (keys of N as strings)."""
    entry = {"label": label, "train_seconds": round(run.seconds, 1), "steps": run.steps,
             "reached": run.reached, "stages": run.stages,
             "step_seconds": {str(k): round(v, 4) for k, v in run.step_seconds.items()},
             "exact_match": {str(k): v for k, v in em.items()}}
    if wiped is not None:
        entry["memory_wiped"] = {str(k): v for k, v in wiped.items()}
    return entry


def seed_robustness(seeds: Sequence[int], *, recipe: CapacityRecipe, model: CapacityModelSpec | None = None,
                    log: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Train a fresh model per seed (model and data seed alike) through ``recipe`` and report,
    for each, how many steps it took to pass each stage of the curriculum.

    Example:
        >>> recipe = CapacityRecipe(curriculum=(1,), max_steps_per_stage=2, eval_every=2, eval_samples=8)
        >>> rows = seed_robustness([0, 1], recipe=recipe, model=CapacityModelSpec(layers=1, hidden=32, heads=2,
        ...                        intermediate=64), log=lambda s: None)
        >>> [r["seed"] for r in rows], rows[0]["passed_all"]
        ([0, 1], False)
    """
    model = model or CapacityModelSpec()
    rows = []
    for seed in seeds:
        net = replace(model, seed=seed).build(CapacityConfig(num_pairs=1, variant=recipe.variant))
        run = train_capacity(net, replace(recipe, seed=seed))
        total, passed_at = 0, {}
        for stage in run.stages:
            total += stage["steps"]
            if stage["passed"]:
                passed_at[str(stage["num_pairs"])] = total
        row = {"seed": seed, "passed_at_step": passed_at, "steps": run.steps, "seconds": round(run.seconds, 1),
               "passed_all": len(passed_at) == len(recipe.curriculum),
               "last_exact_match": run.evaluations[-1]["exact_match"] if run.evaluations else None}
        log(f"seed {seed}: passed at total step {passed_at} ({row['seconds']}s)")
        rows.append(row)
    return rows


def capacity_markdown(results: dict[str, Any]) -> str:
    """The exact-match table: one row per N, one column per model (and ARMT's wiped control).

    Example:
        >>> res = {"eval_pairs": [2], "chance": 0.0625, "models": {"armt": {"label": "ARMT",
        ...        "exact_match": {"2": 1.0}, "memory_wiped": {"2": 0.06}, "reached": 2, "train_seconds": 5,
        ...        "steps": 10, "step_seconds": {}}}}
        >>> print(capacity_markdown(res).splitlines()[0])
        | pairs N | ARMT | ARMT, memory wiped |
    """
    models = results["models"]
    header = ["pairs N"]
    columns: list[tuple[str, str]] = []
    for kind, entry in models.items():
        header.append(entry["label"])
        columns.append((kind, "exact_match"))
        if "memory_wiped" in entry and kind == "armt":
            header.append(f"{entry['label']}, memory wiped")
            columns.append((kind, "memory_wiped"))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for n in results["eval_pairs"]:
        cells = [str(n)]
        for kind, key in columns:
            value = models[kind][key].get(str(n))
            cells.append("-" if value is None else f"{value:.3f}")
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    for kind, entry in models.items():
        steps = entry["step_seconds"]
        at = ", ".join(f"N={k}: {v:.3f}s" for k, v in steps.items())
        timed = entry.get("step_s_n16_batch32")
        lines.append(f"- {entry['label']}: trained up to N={entry['reached']} (curriculum threshold passed) in "
                     f"{entry['train_seconds']:.0f}s, {entry['steps']} steps; median step time {at or '-'}"
                     + (f"; a step at N=16 with batch 32: {timed:.3f}s." if timed is not None else "."))
    lines.append(f"- Chance: {results['chance']:.4f}.")
    return "\n".join(lines) + "\n"


def plot_capacity(results: dict[str, Any], path: str | os.PathLike) -> Path:
    """Exact match against N (log scale), one line per model, the wiped-memory control dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for kind, entry in results["models"].items():
        ns = [int(n) for n in entry["exact_match"]]
        line, = ax.plot(ns, list(entry["exact_match"].values()), marker="o", label=entry["label"])
        if "memory_wiped" in entry and kind == "armt":
            ax.plot(ns, list(entry["memory_wiped"].values()), linestyle="--", color=line.get_color(),
                    label=f"{entry['label']}, memory wiped")
        if entry.get("reached"):
            ax.axvline(entry["reached"], color=line.get_color(), linestyle=":", linewidth=1)
    ax.axhline(results["chance"], color="grey", linewidth=1, label="chance")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("key-value pairs N (one per segment)")
    ax.set_ylabel("exact match")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title("Associative retrieval capacity\n(dotted: largest N passed in training)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def capacity_outputs(out_dir: str | os.PathLike, prefix: str = "capacity", *, overwrite: bool = False) -> list[Path]:
    """The files :func:`write_capacity` writes; raises before any work if they exist and
    ``overwrite`` is False (call it before a long run)."""
    out = Path(out_dir)
    paths = [out / f"{prefix}.{ext}" for ext in ("json", "md", "png")]
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing} exist; pass overwrite=True (--overwrite) to replace them, "
                              "or choose another output folder.")
    return paths


def write_capacity(results: dict[str, Any], out_dir: str | os.PathLike, *, overwrite: bool = False,
                   prefix: str = "capacity") -> list[Path]:
    """Write ``<prefix>.json``, ``<prefix>.md`` and ``<prefix>.png`` into ``out_dir``; existing
    files are replaced only with ``overwrite=True``."""
    paths = capacity_outputs(out_dir, prefix, overwrite=overwrite)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths[0].write_text(json.dumps(results, indent=1))
    paths[1].write_text(capacity_markdown(results))
    plot_capacity(results, paths[2])
    return paths


def _symbols(ids, task: CapacityConfig) -> str:
    names = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = []
    for t in ids.tolist():
        out.append(":" if t == task.colon else "?" if t == task.ask else
                   names[t] if t < len(names) else f"<{t}>")
    return "".join(out)


@torch.no_grad()
def show_queries(model, num_pairs: int, count: int = 3, seed: int = 7) -> list[str]:
    """A few samples at ``num_pairs`` written out: the stored pairs, the query, the model's answer."""
    from ..data.capacity import CapacityDataset

    task = CapacityConfig(num_pairs=num_pairs, num_samples=count, seed=seed)
    data = CapacityDataset(task).batch()
    model.eval()
    logits = model(data["input_ids"], output_only_last_segment=True).logits
    lines = []
    S = task.segment_size
    for ids, row in zip(data["input_ids"], logits):
        pairs = " ".join(_symbols(ids[i:i + S], task) for i in range(0, num_pairs * S, S))
        if num_pairs > 6:
            words = pairs.split()
            pairs = " ".join(words[:3] + ["..."] + words[-2:])
        asked = _symbols(ids[-S:-1], task)
        said = _symbols(row[-2].argmax(-1).view(1), task)
        truth = _symbols(ids[-1:], task)
        where = next(i for i in range(num_pairs) if torch.equal(ids[i * S:i * S + task.key_len], ids[-S:-S + task.key_len]))
        lines.append(f"  {pairs} | {asked} -> {said} ({'right' if said == truth else f'wrong, {truth}'}; "
                     f"stored {num_pairs - where} segments back)")
    return lines


DEMO_STEPS = 900


def run_demo(*, steps: int = DEMO_STEPS, minutes: float | None = None, curriculum: Sequence[int] = (1, 2, 4, 8),
             eval_pairs: Sequence[int] = (1, 2, 4, 8, 16, 32), eval_samples: int = 256, seed: int = 0,
             log: Callable[[str], None] = print) -> dict[str, Any]:
    """The main demo: train a tiny ARMT on the capacity task for ``steps`` optimizer steps (so
    that every machine prints the same numbers for a seed; ``minutes`` adds a wall-clock cap,
    which does not), then show that it answers queries about pairs stored many segments back,
    next to the same weights with the memory wiped (the control). Progress is logged at every
    evaluation. Returns the results (JSON-ready, as :func:`write_capacity` takes).

    Example:
        >>> res = run_demo(steps=2, curriculum=(1,), eval_pairs=(1,), eval_samples=8, log=lambda s: None)
        >>> sorted(res["models"]["armt"]["exact_match"])
        ['1']
    """
    spec = CapacityModelSpec(seed=seed)
    task = CapacityConfig(num_pairs=1)
    net = spec.build(task)
    # a fresh wrapper is the base model: the memory writes but W_mv = 0 makes its reads zero
    ids = capacity_batch(CapacityConfig(num_pairs=3), 2, torch.Generator().manual_seed(seed))["input_ids"]
    with torch.no_grad():
        net.eval()
        diff = (net(ids[:, :task.segment_size]).logits - net.base_model(ids[:, :task.segment_size]).logits).abs().max()
    log(f"model: random GPT-NeoX, {spec.layers} layers, width {spec.hidden}, + ARMT ({spec.num_mem_tokens} memory "
        f"tokens, d_mem {spec.d_mem}); fresh wrapper vs base model: max |logit diff| = {float(diff):.2e}")
    log(f"task: {task.num_symbols} symbols, one pair 'k1 k2 : v' per segment, then 'k1 k2 ? v'; chance "
        f"{chance_level(task):.3f}")
    recipe = CapacityRecipe(curriculum=tuple(curriculum), max_steps=steps, seed=seed,
                            time_budget_s=minutes * 60 if minutes else float("inf"))
    cap = f", at most {minutes:g} min" if minutes else ""
    log(f"training: {steps} steps{cap} (about 7 minutes on 2 CPU cores), N = {' -> '.join(map(str, curriculum))} "
        f"pairs (next N once exact match >= {recipe.advance_at}):")

    def progress(record):
        if "stage_done" in record:
            s = record["stage_done"]
            log(f"  N={s['num_pairs']}: {'passed' if s['passed'] else 'stopped'} after {s['steps']} steps "
                f"({s['seconds']:.0f}s), exact match {s['best_exact_match']:.2f}")
        else:
            log(f"  step {record['step']} (N={record['num_pairs']}): loss {record['loss']:.3f}, exact match "
                f"{record['exact_match']:.2f}, {record['elapsed_s']:.0f}s")

    run = train_capacity(net, recipe, log=progress)
    em = evaluate_capacity(net, eval_pairs, num_samples=eval_samples, seed=12345)
    wiped = evaluate_capacity(net, eval_pairs, num_samples=eval_samples, seed=12345, wipe_memory=True)
    results = {
        "task": {"variant": "remember", "num_symbols": task.num_symbols, "key_len": task.key_len,
                 "value_len": task.value_len},
        "recipe": asdict(recipe), "model": asdict(spec), "eval_pairs": list(eval_pairs),
        "eval_samples": eval_samples, "eval_seed": 12345, "threads": torch.get_num_threads(),
        "chance": chance_level(task),
        "models": {"armt": _model_entry("ARMT", run, em, wiped)},
    }
    shown = run.reached or 1
    log(f"queries at N={shown} (value stored up to {shown} segments back):")
    for line in show_queries(net, shown):
        log(line)
    return results
