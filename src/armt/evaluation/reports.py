"""BABILong results: records per (task, length), CSV/JSON/Markdown tables and a heatmap.

A result is a dict ``{"task": "qa1", "length": "4k", "n": 100, "correct": 87,
"accuracy": 0.87}``. :func:`write_results` writes ``results.csv``, ``results.json``,
``results.md`` and ``heatmap.png`` into one folder; :func:`load_results` reads them back and
:func:`merge_results` adds new pairs to old ones, so an evaluation can be resumed.
"""

from __future__ import annotations

import csv
import json
import math
import os
import re
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from armt.data.babilong import length_name, parse_length

from ..checks import InputTypeError

FILES = ("results.csv", "results.json", "results.md", "heatmap.png")
FIELDS = ("task", "length", "n", "correct", "accuracy")
PREDICTIONS_DIR = "predictions"  # armt babilong eval writes <task>_<length>.jsonl there, one line per question


def length_label(length: Any) -> str:
    """The name results keep a length under: ``"256"`` and ``"0.25k"`` are both ``"0.25k"``; a
    label that is not a length (from another benchmark) stays as given.

    Example:
        >>> length_label("256"), length_label(4096), length_label("all")
        ('0.25k', '4k', 'all')
    """
    try:
        return length_name(parse_length(length))
    except (TypeError, ValueError):  # a free-form label (e.g. from another benchmark) stays as given
        return str(length)


def prediction_files(folder: str | os.PathLike, task: str = "*") -> list[tuple[str, str, Path]]:
    """``(task, length, path)`` of each predictions file in ``folder`` (``task`` ``"*"``: all
    tasks), sorted; files named by token count by older versions (``qa1_256.jsonl``) give their
    length's name (``"0.25k"``), and a file whose name holds no length is left out.

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()); (d / PREDICTIONS_DIR).mkdir()
        >>> for name in ("qa1_256", "qa1_4k", "qa2_0k", "notes"):
        ...     _ = (d / PREDICTIONS_DIR / f"{name}.jsonl").write_text("")
        >>> [(t, n) for t, n, _ in prediction_files(d)], [n for _, n, _ in prediction_files(d, "qa1")]
        ([('qa1', '0.25k'), ('qa1', '4k'), ('qa2', '0k')], ['0.25k', '4k'])
    """
    found = []
    for path in sorted((Path(folder) / PREDICTIONS_DIR).glob(f"{task}_*.jsonl")):
        name, _, length = path.stem.partition("_")
        try:
            found.append((name, length_name(parse_length(length)), path))
        except (TypeError, ValueError):
            continue
    return found


def result_record(task: str, length: str, correct: int, n: int) -> dict[str, Any]:
    """One result, checked: ``0 <= correct <= n`` and ``n >= 1``. A length is kept under its
    short name (``"256"`` and ``"0.25k"`` are one length), so results saved by older versions
    merge with new ones.

    Example:
        >>> result_record("qa1", "4k", 87, 100)
        {'task': 'qa1', 'length': '4k', 'n': 100, 'correct': 87, 'accuracy': 0.87}
        >>> result_record("qa1", "256", 16, 40)["length"]
        '0.25k'
    """
    for name, value in (("n", n), ("correct", correct)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputTypeError(f"{name} must be an int, got {value!r}.")
    if n < 1 or not 0 <= correct <= n:
        raise ValueError(f"Need n >= 1 and 0 <= correct <= n, got correct={correct}, n={n} for {task} {length}.")
    return {"task": str(task), "length": length_label(length), "n": n, "correct": correct, "accuracy": correct / n}


def _checked(results: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    out, seen = [], set()
    for r in results:
        missing = [f for f in ("task", "length", "n", "correct") if f not in r]
        if missing:
            raise ValueError(f"A result lacks {missing}; results are dicts with fields {FIELDS}.")
        record = result_record(r["task"], r["length"], int(r["correct"]), int(r["n"]))
        if "accuracy" in r and not math.isclose(float(r["accuracy"]), record["accuracy"], abs_tol=1e-9):
            raise ValueError(f"accuracy={r['accuracy']} of {record['task']} {record['length']} is not "
                             f"correct/n = {record['accuracy']}; drop it or fix correct and n.")
        key = (record["task"], record["length"])
        if key in seen:
            raise ValueError(f"Two results for {key}; merge them with merge_results() first.")
        seen.add(key)
        out.append(record)
    return out


def _task_key(task: str) -> tuple[int, str]:
    match = re.fullmatch(r"qa(\d+)", task)
    return (int(match.group(1)), task) if match else (10**6, task)


def _length_key(length: str) -> tuple[int, str]:
    try:
        return parse_length(length), length
    except (TypeError, ValueError):
        return 2**62, length


def table_axes(results: Sequence[dict[str, Any]], tasks: Sequence[str] | None = None,
               lengths: Sequence[str] | None = None) -> tuple[list[str], list[str]]:
    """Row tasks and column lengths: the given orders, else qa1..qa20 and short to long."""
    tasks = list(tasks) if tasks is not None else sorted({r["task"] for r in results}, key=_task_key)
    lengths = list(lengths) if lengths is not None else sorted({r["length"] for r in results}, key=_length_key)
    return tasks, lengths


def _grid(results: Sequence[dict[str, Any]], tasks: list[str], lengths: list[str]) -> list[list[float | None]]:
    cells = {(r["task"], r["length"]): r["accuracy"] for r in results}
    return [[cells.get((t, n)) for n in lengths] for t in tasks]


def _averages(grid: list[list[float | None]]) -> list[float | None]:
    columns = [[v for v in col if v is not None] for col in zip(*grid)] if grid else []
    return [sum(c) / len(c) if c else None for c in columns]


def markdown_table(results: Iterable[dict[str, Any]], tasks: Sequence[str] | None = None,
                   lengths: Sequence[str] | None = None, title: str | None = None) -> str:
    """Tasks x lengths accuracy in %, with an average row (the mean over the tasks of a column).

    Example:
        >>> print(markdown_table([result_record("qa1", "0k", 9, 10), result_record("qa2", "0k", 5, 10)]))
        | task | 0k |
        |---|---|
        | qa1 | 90.0 |
        | qa2 | 50.0 |
        | average | 70.0 |
    """
    results = _checked(results)
    tasks, lengths = table_axes(results, tasks, lengths)
    grid = _grid(results, tasks, lengths)

    def cell(value: float | None) -> str:
        return "–" if value is None else f"{100 * value:.1f}"

    lines = [f"# {title}", ""] if title else []
    lines += ["| task | " + " | ".join(lengths) + " |", "|---" * (len(lengths) + 1) + "|"]
    lines += [f"| {t} | " + " | ".join(cell(v) for v in row) + " |" for t, row in zip(tasks, grid)]
    lines.append("| average | " + " | ".join(cell(v) for v in _averages(grid)) + " |")
    return "\n".join(lines)


def plot_heatmap(results: Iterable[dict[str, Any]], path: str | os.PathLike,
                 tasks: Sequence[str] | None = None, lengths: Sequence[str] | None = None,
                 title: str | None = None) -> Path:
    """A PNG of accuracy per task (rows) and length (columns), red (0%) to green (100%),
    with the number in each cell; missing cells are grey."""
    # Figure + the Agg canvas directly: no pyplot, so no global backend is switched
    import matplotlib
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    results = _checked(results)
    tasks, lengths = table_axes(results, tasks, lengths)
    grid = _grid(results, tasks, lengths)
    values = [[math.nan if v is None else 100 * v for v in row] for row in grid]
    fig = Figure(figsize=(1.0 + 0.7 * max(len(lengths), 1), 1.0 + 0.45 * max(len(tasks), 1)))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    cmap = matplotlib.colormaps["RdYlGn"].with_extremes(bad="lightgrey")
    image = ax.imshow(values, cmap=cmap, vmin=0, vmax=100, aspect="auto")
    for i, row in enumerate(values):
        for j, v in enumerate(row):
            if not math.isnan(v):
                # the ends of the colour map are dark, so their numbers go white
                ax.text(j, i, f"{v:.0f}", ha="center", va="center", fontsize=9,
                        color="white" if v < 15 or v > 85 else "black")
    ax.set_xticks(range(len(lengths)), lengths)
    ax.set_yticks(range(len(tasks)), tasks)
    ax.set_xlabel("context length")
    if title:
        ax.set_title(wrap_title(title))
    fig.colorbar(image, ax=ax, label="accuracy, %")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def write_results(results: Iterable[dict[str, Any]], out_dir: str | os.PathLike, *,
                  overwrite: bool = False, title: str = "BABILong accuracy, %",
                  tasks: Sequence[str] | None = None, lengths: Sequence[str] | None = None,
                  metadata: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``results.csv``, ``results.json``, ``results.md`` and ``heatmap.png`` into ``out_dir``.

    Args:
        results: result dicts (see :func:`result_record`), one per (task, length).
        out_dir: the folder; created if missing.
        overwrite: replace files that exist; without it an existing file is an error
            (to resume, ``merge_results(load_results(out_dir), new)`` and write with it).
        title: heading of the table and the plot.
        tasks, lengths: row and column order; default qa1..qa20 and short to long.
        metadata: JSON-serialisable facts about the run (model, data sources, settings),
            kept under ``"metadata"`` in ``results.json`` (see :func:`load_metadata`).

    Example:
        >>> import tempfile
        >>> paths = write_results([result_record("qa1", "1k", 3, 4)], tempfile.mkdtemp())
        >>> sorted(paths), load_results(paths["results.json"].parent)[0]["accuracy"]
        (['heatmap.png', 'results.csv', 'results.json', 'results.md'], 0.75)
    """
    results = _checked(results)
    tasks, lengths = table_axes(results, tasks, lengths)
    out = Path(out_dir)
    paths = {name: out / name for name in FILES}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(
            f"{existing[0]} exists; pass overwrite=True (--overwrite on the command line) to replace the results, "
            "or merge_results(load_results(out_dir), new) and write those with overwrite=True to resume."
        )
    out.mkdir(parents=True, exist_ok=True)
    order = {(t, n): (i, j) for i, t in enumerate(tasks) for j, n in enumerate(lengths)}
    rows = sorted(results, key=lambda r: order.get((r["task"], r["length"]), (len(tasks), len(lengths))))
    with paths["results.csv"].open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    data = {"title": title, "tasks": tasks, "lengths": lengths, "results": rows}
    if metadata is not None:
        data["metadata"] = dict(metadata)
    paths["results.json"].write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    paths["results.md"].write_text(markdown_table(rows, tasks, lengths, title) + "\n", encoding="utf-8")
    plot_heatmap(rows, paths["heatmap.png"], tasks, lengths, title)
    return paths


def load_results(out_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """The results saved by :func:`write_results` (``results.json``, else ``results.csv``);
    an empty list when the folder holds neither."""
    out = Path(out_dir)
    if (out / "results.json").exists():
        data = json.loads((out / "results.json").read_text(encoding="utf-8"))
        return _checked(data["results"] if isinstance(data, dict) else data)
    if (out / "results.csv").exists():
        with (out / "results.csv").open(newline="", encoding="utf-8") as f:
            return _checked(csv.DictReader(f))
    return []


def load_metadata(out_dir: str | os.PathLike) -> dict[str, Any]:
    """The ``metadata`` that :func:`write_results` kept in ``results.json`` (empty if none)."""
    path = Path(out_dir) / "results.json"
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
    return dict(data.get("metadata") or {}) if isinstance(data, dict) else {}


def merge_results(existing: Iterable[dict[str, Any]], new: Iterable[dict[str, Any]], *,
                  replace: bool = False) -> list[dict[str, Any]]:
    """``existing`` plus the results of ``new`` for (task, length) pairs not in it yet.

    With ``replace=True`` a new result replaces the old one of its pair instead.

    Example:
        >>> old = [result_record("qa1", "1k", 1, 2)]
        >>> new = [result_record("qa1", "1k", 2, 2), result_record("qa2", "1k", 0, 2)]
        >>> [(r["task"], r["correct"]) for r in merge_results(old, new)]
        [('qa1', 1), ('qa2', 0)]
    """
    merged = {(r["task"], r["length"]): r for r in _checked(existing)}
    for r in _checked(new):
        key = (r["task"], r["length"])
        if replace or key not in merged:
            merged[key] = r
    return list(merged.values())


def missing_pairs(results: Iterable[dict[str, Any]], tasks: Sequence[str], lengths: Sequence[str]) -> list[tuple[str, str]]:
    """The (task, length) pairs of ``tasks x lengths`` that have no result yet.

    Example:
        >>> missing_pairs([result_record("qa1", "0k", 1, 1)], ["qa1", "qa2"], ["0k"])
        [('qa2', '0k')]
    """
    done = {(r["task"], length_label(r["length"])) for r in results}
    wanted = [(t, length_label(n)) for t in tasks for n in lengths]
    return [pair for pair in wanted if pair not in done]


# several models side by side ------------------------------------------------------------------


def wilson_interval(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The 95% Wilson score interval of an accuracy ``correct / n``: with the few samples that
    long contexts afford on a CPU, the interval says how much a difference can mean.

    Example:
        >>> [round(x, 3) for x in wilson_interval(18, 20)]
        [0.699, 0.972]
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}.")
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def compare_runs(runs: Mapping[str, Sequence[str | os.PathLike]], task: str) -> dict[str, list[dict[str, Any]]]:
    """Results of one task from several evaluation folders per model, merged by length.

    Args:
        runs: ``{model name: [results folders]}``, e.g. one folder for the short lengths and
            one for the long ones (evaluated with different sample counts).
        task: the bAbI task to compare, e.g. ``"qa1"``.

    Raises:
        ValueError: a folder holds no results for ``task``, or two folders of one model hold
            the same length.
    """
    out = {}
    for name, folders in runs.items():
        merged: dict[str, dict[str, Any]] = {}
        for folder in folders:
            found = [r for r in load_results(folder) if r["task"] == task]
            if not found:
                raise ValueError(f"{folder} holds no {task} results; evaluate it with armt babilong eval "
                                 f"--tasks {task}.")
            for r in found:
                if r["length"] in merged:
                    raise ValueError(f"{name}: two folders hold {task} at {r['length']}; keep one.")
                merged[r["length"]] = r
        out[name] = sorted(merged.values(), key=lambda r: _length_key(r["length"]))
    return out


def comparison_table(compared: Mapping[str, Sequence[dict[str, Any]]], task: str) -> str:
    """Lengths as rows, one column per model: accuracy in %, samples and the 95% interval.

    Example:
        >>> print(comparison_table({"ARMT": [result_record("qa1", "1k", 9, 10)]}, "qa1"))
        | qa1 | ARMT |
        |---|---|
        | 1k | 90% (n=10, 60-98) |
    """
    lengths = sorted({r["length"] for rs in compared.values() for r in rs}, key=_length_key)
    lines = ["| " + " | ".join([task, *compared]) + " |", "|---" * (len(compared) + 1) + "|"]
    for length in lengths:
        cells = [length]
        for records in compared.values():
            r = next((r for r in records if r["length"] == length), None)
            if r is None:
                cells.append("-")
            else:
                lo, hi = wilson_interval(r["correct"], r["n"])
                cells.append(f"{100 * r['accuracy']:.0f}% (n={r['n']}, {100 * lo:.0f}-{100 * hi:.0f})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def wrap_title(title: str, width: int = 64) -> str:
    """``title`` broken into lines of at most ``width`` characters (at spaces), so that a long
    one stays inside a figure 6.4 inches wide instead of being cut at its edges.

    >>> print(wrap_title("BABILong qa1, question alone", width=16))
    BABILong qa1,
    question alone
    """
    return "\n".join(textwrap.wrap(title, width)) or title


def plot_comparison(compared: Mapping[str, Sequence[dict[str, Any]]], path: str | os.PathLike, title: str) -> Path:
    """Accuracy against context length (log axis), one line per model, with 95% intervals."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    lengths = sorted({r["length"] for rs in compared.values() for r in rs}, key=_length_key)
    fig = Figure(figsize=(6.4, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name, records in compared.items():
        xs = [lengths.index(r["length"]) for r in records]
        ys = [100 * r["accuracy"] for r in records]
        bounds = [wilson_interval(r["correct"], r["n"]) for r in records]
        err = [[y - 100 * lo for y, (lo, _) in zip(ys, bounds)], [100 * hi - y for y, (_, hi) in zip(ys, bounds)]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
    ax.set_xticks(range(len(lengths)), lengths)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("accuracy, % (95% interval)")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(wrap_title(title))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def write_comparison(compared: Mapping[str, Sequence[dict[str, Any]]], out_dir: str | os.PathLike, *, task: str,
                     title: str, runs: Mapping[str, Sequence[str]] | None = None, overwrite: bool = False) -> str:
    """Write ``comparison.md``, ``.json`` and ``.png`` of :func:`compare_runs` results into
    ``out_dir`` (an existing file is an error unless ``overwrite``); returns the table."""
    out = Path(out_dir)
    paths = [out / "comparison.md", out / "comparison.json", out / "comparison.png"]
    taken = [str(p) for p in paths if p.exists()]
    if taken and not overwrite:
        raise FileExistsError(f"{taken[0]} exists; pass overwrite=True (--overwrite) to replace it, or another folder.")
    table = comparison_table(compared, task)
    out.mkdir(parents=True, exist_ok=True)
    paths[0].write_text(f"# {title}\n\n{table}\n", encoding="utf-8")
    record = {"title": title, "task": task, "runs": {k: [str(f) for f in v] for k, v in (runs or {}).items()},
              "results": compared}
    paths[1].write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    plot_comparison(compared, paths[2], title)
    return table
