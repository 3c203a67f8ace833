"""The length-generalisation benchmark: train ARMT, RMT and the no-memory model on the needle task
(:mod:`armt.data.needle`) with the same curriculum and budget on short inputs, then measure exact
match at up to thousands of times the training length, with the memory-wiped control and 95%
intervals; write JSON, a markdown table and a plot."""

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

from ..model import ARMTForCausalLM
from ..data.needle import DISTRACTORS, NeedleConfig, TextStream
from ..training.capacity import CapacityModelSpec, CapacityRecipe, train_stages
from .capacity import capacity_outputs
from .needle import DEFAULT_STAGES, evaluate_needle, needle_stages

LABELS = {"armt": "ARMT", "rmt": "RMT", "none": "no memory"}
EVAL_SEGMENTS = (16, 64, 256, 1024, 4096, 16384)


def _at_chance(result: dict, chance: float) -> bool:
    low, high = result["interval"]
    return low <= chance <= high


def evaluate_lengths(model, segments: Sequence[int], *, num_facts: int, distractors: str, variant: str,
                     samples: Callable[[int], int], seed: int, text: TextStream | None, chance: float,
                     stop_after_chance: int | None, wipe_memory: bool = False, stop_below: float | None = None,
                     log: Callable[[str], None] = print, name: str = "") -> dict[str, dict]:
    """Exact match at each number of segments; once ``stop_after_chance`` lengths in a row are at
    chance (chance inside the 95% interval), or one length is below ``stop_below``, longer ones
    are recorded as skipped, not run.

    Example:
        >>> spec = CapacityModelSpec(kind="none", layers=1, hidden=32, heads=2, intermediate=64)
        >>> out = evaluate_lengths(spec.build(), [2, 4], num_facts=1, distractors="symbols", variant="remember",
        ...                        samples=lambda m: 8, seed=0, text=None, chance=1 / 16, stop_after_chance=None,
        ...                        log=lambda s: None)
        >>> sorted(out), out["2"]["n"]
        (['2', '4'], 8)
    """
    out: dict[str, dict] = {}
    run_of_chance, skipped = 0, None
    for m in segments:
        if skipped is not None:
            out[str(m)] = {"skipped": skipped}
            continue
        task = NeedleConfig(num_facts=num_facts, num_segments=int(m), distractors=distractors, variant=variant)
        t0 = time.perf_counter()
        res = evaluate_needle(model, task, num_samples=samples(int(m)), seed=seed, text=text, wipe_memory=wipe_memory)
        res["seconds"] = round(time.perf_counter() - t0, 1)
        out[str(m)] = res
        log(f"[{name}] {distractors} M={m}{' (memory wiped)' if wipe_memory else ''}: exact match "
            f"{res['exact_match']:.3f} [{res['interval'][0]:.2f}, {res['interval'][1]:.2f}] n={res['n']} "
            f"({res['seconds']}s)")
        run_of_chance = run_of_chance + 1 if _at_chance(res, chance) else 0
        if stop_after_chance and run_of_chance >= stop_after_chance:
            skipped = f"at chance at the {stop_after_chance} lengths up to {m}"
        elif stop_below is not None and res["exact_match"] < stop_below:
            skipped = f"below {stop_below} at {m}"
    return out


def run_length_benchmark(kinds: Sequence[str] = ("armt", "rmt", "none"), *, recipe: CapacityRecipe | None = None,
                         model: CapacityModelSpec | None = None,
                         stages: Sequence[tuple[int, int]] = DEFAULT_STAGES,
                         distractors: Sequence[str] = DISTRACTORS, variant: str = "remember",
                         eval_segments: Sequence[int] = EVAL_SEGMENTS, eval_samples: int = 64,
                         long_samples: int = 32, long_from: int = 4096, eval_seed: int = 12345,
                         stop_after_chance: int | None = 2, stop_below: float | None = None,
                         text_source: str | None = None,
                         save_models: str | os.PathLike | None = None, log: Callable[[str], None] = print,
                         log_path: str | os.PathLike | None = None,
                         init_from: str | os.PathLike | None = None) -> dict[str, Any]:
    """Train each model kind through ``stages`` (``(num_facts, num_segments)``, the same budget
    each; batches mix the ``distractors`` kinds) and evaluate it at ``eval_segments`` on each
    distractor kind, with ``eval_samples`` samples (``long_samples`` from ``long_from``
    segments on); the memory models also with their memory wiped before the query. With
    ``save_models`` each trained model is saved (base included) to ``save_models/<kind>``; with
    ``init_from`` each model starts from the one saved at ``init_from/<kind>`` (same spec), so
    ``stages`` can continue an earlier run.

    Returns a JSON-ready dict; :func:`write_length` turns it into files.

    Example:
        >>> spec = CapacityModelSpec(layers=1, hidden=32, heads=2, intermediate=64)
        >>> recipe = CapacityRecipe(max_steps_per_stage=2, eval_every=2, eval_samples=8)
        >>> res = run_length_benchmark(["armt", "none"], recipe=recipe, model=spec, stages=[(1, 2)],
        ...                            distractors=["symbols"], eval_segments=[2, 8], eval_samples=8,
        ...                            log=lambda s: None)
        >>> sorted(res["models"]), sorted(res["models"]["armt"]["exact_match"]["symbols"])
        (['armt', 'none'], ['2', '8'])
    """
    recipe = recipe or CapacityRecipe(time_budget_s=300.0)
    model = model or CapacityModelSpec()
    text = TextStream(text_source) if "text" in distractors else None
    num_facts = stages[-1][0]
    probe = NeedleConfig(num_facts=num_facts, num_segments=max(num_facts, 1), variant=variant)
    chance = 1.0 / probe.num_symbols ** probe.value_len
    results: dict[str, Any] = {
        "task": {"num_facts": num_facts, "variant": variant, "distractors": list(distractors),
                 "num_symbols": probe.num_symbols, "segment_size": probe.segment_size},
        "text_source": None if text is None else text.description,
        "stages": [list(s) for s in stages], "train_segments": max(m for _, m in stages),
        "recipe": asdict(recipe), "model": asdict(model), "eval_segments": list(eval_segments),
        "eval_samples": eval_samples, "long_samples": long_samples, "long_from": long_from,
        "eval_seed": eval_seed, "stop_after_chance": stop_after_chance, "stop_below": stop_below,
        "init_from": None if init_from is None else str(init_from),
        "chance": chance,
        "threads": torch.get_num_threads(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__, "models": {},
    }
    if text is not None:
        log(f"text distractors from {text.description}")

    def samples(m: int) -> int:
        return long_samples if m >= long_from else eval_samples

    for kind in kinds:
        spec = replace(model, kind=kind, wavefront=model.wavefront and kind == "armt")
        net = spec.build(probe)
        if init_from is not None:
            _start_from(net, Path(init_from) / kind)
            log(f"[{kind}] starting from the model saved at {Path(init_from) / kind}")
        log(f"[{kind}] training: stages (K, M) {[tuple(s) for s in stages]}, budget {recipe.time_budget_s:.0f}s")

        def progress(record, kind=kind):
            if "stage_done" in record:
                s = record["stage_done"]
                kept = f", kept step {s['kept_step']}" if "kept_step" in s else ""
                kept += f" (leak {s['kept_leak']:.4f})" if "kept_leak" in s else ""
                log(f"[{kind}] K={s['num_facts']} M={s['num_segments']}: {'passed' if s['passed'] else 'stopped'} "
                    f"after {s['steps']} steps, {s['seconds']}s, best exact match {s['best_exact_match']:.3f}{kept}")
            else:
                beta = f", write strength {record['write_strength']:.4f}" if "write_strength" in record else ""
                beta += f", open {record['write_open']:.3f}" if "write_open" in record else ""
                beta += f", leak {record['leak']:.4f}" if "leak" in record else ""
                log(f"[{kind}] step {record['step']} K={record['num_facts']} M={record['num_segments']} loss "
                    f"{record['loss']:.3f} exact match {record['exact_match']:.3f}{beta} ({record['step_s']:.3f}s/step, "
                    f"{record['elapsed_s']}s)")

        path = None if log_path is None else f"{log_path}.{kind}.jsonl"
        trained = needle_stages(stages, distractors=distractors, variant=variant, text=text)
        run = train_stages(net, trained, recipe, log=progress, log_path=path)
        leak = None
        if net.config.memory == "associative" and net.config.write_gate == "hard":
            leak = trained[-1].leak(net, recipe.leak_segments, recipe.leak_samples)
            log(f"[{kind}] leak of the trained model: {leak:.4f} of the distractor segments beyond "
                f"{stages[-1][1]} open a gate (inputs of {recipe.leak_segments} segments)")
        if save_models is not None:
            net.save_pretrained(Path(save_models) / kind, save_base=True, overwrite=True)
        start = time.perf_counter()
        common = dict(num_facts=num_facts, variant=variant, samples=samples, seed=eval_seed, text=text,
                      chance=chance, log=log, name=kind)
        em = {d: evaluate_lengths(net, eval_segments, distractors=d, stop_after_chance=stop_after_chance,
                                  stop_below=stop_below, **common)
              for d in distractors}
        # the no-memory model's answer is already memory-free; the wiped control costs one segment
        wiped = None if kind == "none" else {
            d: evaluate_lengths(net, eval_segments, distractors=d, stop_after_chance=None, wipe_memory=True, **common)
            for d in distractors}
        passed = [s for s in run.stages if s["passed"]]
        results["models"][kind] = {
            "label": LABELS[kind], "exact_match": em, "memory_wiped": wiped,
            "trained_to": None if not passed else [passed[-1]["num_facts"], passed[-1]["num_segments"]],
            "stages": run.stages, "train_seconds": round(run.seconds, 1), "steps": run.steps, "leak": leak,
            "step_seconds": {str(k): round(v, 4) for k, v in run.step_seconds.items()},
            "eval_seconds": round(time.perf_counter() - start, 1),
        }
    return results


def _start_from(net: ARMTForCausalLM, folder: Path) -> None:
    """Load the model saved (base included) at ``folder`` into ``net``, refusing another spec."""
    if not folder.is_dir():
        raise FileNotFoundError(f"init_from: no saved model at {folder} (save_models of an earlier run writes one).")
    saved = ARMTForCausalLM.from_pretrained(folder)
    if saved.config != net.config:
        theirs, ours = saved.config.to_dict(), net.config.to_dict()
        differ = ", ".join(f"{k}={theirs.get(k)!r} (this run: {ours.get(k)!r})"
                           for k in sorted(set(theirs) | set(ours)) if theirs.get(k) != ours.get(k))
        raise ValueError(f"init_from: the model at {folder} was built with {differ}; use the same --option "
                         "settings as the run that saved it.")
    net.load_state_dict(saved.state_dict())


def _cell(result: dict) -> str:
    if "skipped" in result:
        return "chance (not run)" if result["skipped"].startswith("at chance") else "lower (not run)"
    low, high = result["interval"]
    return f"{result['exact_match']:.2f} [{low:.2f}, {high:.2f}]"


def length_table(results: dict[str, Any]) -> str:
    """Markdown table: exact match [95% interval] by number of segments, per model and distractor kind.

    Example:
        >>> res = {"eval_segments": [16], "task": {"distractors": ["symbols"]}, "train_segments": 16,
        ...        "models": {"armt": {"label": "ARMT", "exact_match": {"symbols": {"16": {"exact_match": 1.0,
        ...        "interval": [0.9, 1.0]}}}, "memory_wiped": {"symbols": {"16": {"exact_match": 0.06,
        ...        "interval": [0.0, 0.2]}}}}}}
        >>> print(length_table(res).splitlines()[2])
        | 16 (1x) | 1.00 [0.90, 1.00] | 0.06 [0.00, 0.20] |
    """
    cols, header = [], []
    for d in results["task"]["distractors"]:
        for kind, entry in results["models"].items():
            cols.append(entry["exact_match"][d])
            header.append(f"{entry['label']}, {d}")
            if entry.get("memory_wiped"):
                cols.append(entry["memory_wiped"][d])
                header.append(f"{entry['label']} wiped, {d}")
    lines = ["| segments M | " + " | ".join(header) + " |", "|---" * (len(header) + 1) + "|"]
    train = results["train_segments"]
    for m in results["eval_segments"]:
        cells = [_cell(c[str(m)]) for c in cols]
        lines.append(f"| {m} ({m / train:g}x) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def combine_lengths(runs: Sequence[tuple[dict[str, Any], str | None]],
                    kinds: Sequence[str] | None = None) -> dict[str, Any]:
    """Several length benchmark results as one (its table and plot show them side by side).
    Each run is ``(results, label)``; ``label`` renames the run's ARMT model. ``kinds`` keeps
    only those model kinds of each run. The runs must share the task, the training length and
    the evaluated lengths.

    Example:
        >>> a = {"task": {"num_facts": 4}, "train_segments": 16, "eval_segments": [16],
        ...      "models": {"armt": {"label": "ARMT"}, "rmt": {"label": "RMT"}}}
        >>> merged = combine_lengths([(a, "official"), (a, "hard gate")], kinds=["armt"])
        >>> [e["label"] for e in merged["models"].values()]
        ['official', 'hard gate']
    """
    if not runs:
        raise ValueError("combine_lengths needs at least one run.")
    first = runs[0][0]
    merged = {**first, "models": {}, "combined_from": []}
    for i, (results, label) in enumerate(runs):
        for key in ("task", "train_segments", "eval_segments"):
            if results[key] != first[key]:
                raise ValueError(f"run {i} has {key}={results[key]!r} but run 0 has {first[key]!r}; only runs of the "
                                 "same task, training length and evaluated lengths can be combined.")
        merged["combined_from"].append(results.get("command", f"run {i}"))
        for kind, entry in results["models"].items():
            if kinds is not None and kind not in kinds:
                continue
            name = label if (label and kind == "armt") else entry["label"]
            merged["models"][f"{i}:{kind}"] = {**entry, "label": name}
    return merged


def write_length(results: dict[str, Any], out_dir: str | os.PathLike, prefix: str = "length", *,
                 overwrite: bool = False) -> list[Path]:
    """Write ``<prefix>.json``, ``<prefix>.md`` and ``<prefix>.png`` into ``out_dir``; existing
    files are replaced only with ``overwrite=True`` (check first with
    :func:`armt.evaluation.capacity.capacity_outputs`)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    paths = capacity_outputs(out_dir, prefix, overwrite=overwrite)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    paths[0].write_text(json.dumps(results, indent=1) + "\n")
    lines = [f"# Length generalisation: {results['task']['num_facts']} facts among M segments", "",
             "Exact match [95% interval] on the value asked; trained on at most "
             f"{results['train_segments']} segments; chance {results['chance']:.3f}.", "", length_table(results), ""]
    for kind, e in results["models"].items():
        lines.append(f"- {e['label']}: trained {e['steps']} steps in {e['train_seconds']} s, last stage passed "
                     f"(K, M) = {e['trained_to']}; evaluation {e['eval_seconds']} s.")
    if results.get("text_source"):
        lines.append(f"- text distractors: {results['text_source']}.")
    paths[1].write_text("\n".join(lines) + "\n")

    kinds = results["task"]["distractors"]
    fig, axes = plt.subplots(1, len(kinds), figsize=(5.5 * len(kinds), 4), squeeze=False, sharey=True)
    for ax, d in zip(axes[0], kinds):
        for kind, e in results["models"].items():
            for series, style, label in ((e["exact_match"][d], "-o", e["label"]),
                                         ((e.get("memory_wiped") or {}).get(d), ":x", f"{e['label']}, memory wiped")):
                if not series:
                    continue
                ms = [int(m) for m, r in series.items() if "skipped" not in r]
                if not ms:
                    continue
                ys = [series[str(m)]["exact_match"] for m in ms]
                line, = ax.plot(ms, ys, style, label=label, markersize=4)
                lows = [series[str(m)]["interval"][0] for m in ms]
                highs = [series[str(m)]["interval"][1] for m in ms]
                ax.fill_between(ms, lows, highs, color=line.get_color(), alpha=0.12)
        ax.axvline(results["train_segments"], color="grey", linestyle="--", linewidth=1, label="longest training input")
        ax.axhline(results["chance"], color="grey", linestyle=":", linewidth=1, label="chance")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("segments before the query (M)")
        ax.set_title(f"{results['task']['num_facts']} facts, {d} distractors")
        ax.set_ylim(-0.02, 1.02)
    axes[0][0].set_ylabel("exact match")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(paths[2], dpi=110)
    plt.close(fig)
    return paths
