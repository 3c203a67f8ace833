"""Perplexity per segment index on held-out books: does the memory help later segments?

Windows of ``n * segment_size`` tokens are cut from books the model never trained on; each
window is read from an empty memory, segment after segment, as in training.

Definition. The pair (logits at ``t``, token ``t + 1``) of a window belongs to segment ``i``
(1-based) when its *target* ``t + 1`` lies in segment ``i``, i.e.
``(i - 1) * S <= t + 1 < i * S``. Segment 1 therefore has ``S - 1`` pairs per window (the
window's first token has no context and is never a target) and every later segment ``S``
pairs, the one predicting its first token from the last token of the segment before
included. The perplexity of segment ``i`` is ``exp`` of the mean cross-entropy (nats) of its
pairs over all windows; ``all`` pools every pair of the windows.

:func:`write_perplexity` writes ``perplexity.md``, ``perplexity.csv``, ``perplexity.json`` and
``perplexity.png`` (perplexity against segment index, one line per model).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data.books import BookSource, load_books
from ..data.lm import split_books
from ..loss import pair_nll, upcast
from ..streaming import MemoryReader

FILES = ("perplexity.md", "perplexity.csv", "perplexity.json", "perplexity.png")
FIELDS = ("model", "segment", "pairs", "loss", "perplexity")
RUN_CONFIG = "run_config.yaml"
DEFINITION = ("pair (logits t, token t+1) counted in the segment of its target t+1; segment 1 has S-1 pairs per "
              "window (the window's first token is never a target), later segments S; perplexity = exp(mean CE)")


@torch.no_grad()
def segment_nll(model, input_ids: Tensor, *, wipe_memory: bool = False,
                memory_from: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Summed cross-entropy and number of pairs of every segment, for a batch of windows.

    The windows are read with :class:`armt.streaming.MemoryReader` (the segment engine every
    reading path shares), keeping one segment's logits at a time; this equals one forward pass
    over the whole window.

    Args:
        model: an :class:`armt.ARMTForCausalLM` (with or without memory).
        input_ids: ``(B, n * segment_size)`` token ids, one window per row.
        wipe_memory: read every segment from an empty memory, with the same weights: what the
            model does without what its memory carries across segments (the control for it).
            With ``sliding_window`` the previous segment's keys and values go too: nothing
            crosses segments.
        memory_from: ``input_ids``' shape: each window reads, before each of its segments, the
            memory that the same row of ``memory_from`` wrote over as many segments (with
            ``sliding_window``, that row's previous segment too). With other text there, what is
            left of the memory's gain is what it gives any text (a bias), not what it carries of
            this one.

    Returns:
        ``(sums, counts)``, both ``(n,)``: float64 summed cross-entropy (nats) and int64 pair
        counts per segment (see the module docstring for which pairs).

    Example:
        >>> import armt
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> base = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=99))
        >>> model = armt.ARMTForCausalLM(base, armt.ARMTConfig(num_mem_tokens=4, d_mem=8, segment_size=16))
        >>> sums, counts = segment_nll(model.eval(), torch.randint(99, (2, 48)))
        >>> counts.tolist()
        [30, 32, 32]
    """
    S = model.config.segment_size
    if wipe_memory and memory_from is not None:
        raise ValueError("pass wipe_memory or memory_from, not both.")
    if wipe_memory:  # one segment per call: each starts from the empty memory
        return _segmentwise(lambda seg: model(input_ids=seg).logits, input_ids, S)
    if memory_from is not None:
        if memory_from.shape != input_ids.shape:
            raise ValueError(f"memory_from must have input_ids' shape {tuple(input_ids.shape)}, "
                             f"got {tuple(memory_from.shape)}.")
        return _segmentwise(_borrowed_memory_step(model, memory_from.to(input_ids.device), S), input_ids, S)
    _check_windows(input_ids, S)
    reader = MemoryReader(model, compute_loss=True)
    reader.feed(input_ids)
    result = reader.finish()
    return result.segment_sums, result.segment_counts


def _borrowed_memory_step(model, donors: Tensor, S: int):
    """``step(segment) -> logits`` that reads the memory the donor windows wrote so far, and
    then lets the donors write their own segment at the same index."""
    state, i = None, 0

    def step(seg: Tensor) -> Tensor:
        nonlocal state, i
        logits = model(input_ids=seg, memory=state).logits
        state = model(input_ids=donors[:, i * S:(i + 1) * S], memory=state).memory
        i += 1
        return logits

    return step


def _check_windows(input_ids: Tensor, S: int) -> int:
    if input_ids.dim() != 2 or input_ids.shape[1] == 0 or input_ids.shape[1] % S:
        raise ValueError(
            f"input_ids must be (batch, n * segment_size) with segment_size={S}, got shape "
            f"{tuple(input_ids.shape)}; cut windows with LMWindowsConfig(segment_size={S}, num_segments=n)."
        )
    return input_ids.shape[1] // S


def _segmentwise(step, input_ids: Tensor, S: int) -> tuple[Tensor, Tensor]:
    """Per-segment sums and counts when ``step(segment_ids) -> logits`` reads one segment a call."""
    n = _check_windows(input_ids, S)
    B = input_ids.shape[0]
    sums = torch.zeros(n, dtype=torch.float64)
    counts = torch.zeros(n, dtype=torch.long)
    last = None
    for i in range(n):
        seg = input_ids[:, i * S:(i + 1) * S]  # (B, S)
        logits = upcast(step(seg))  # (B, S, vocab)
        ce = pair_nll(logits[:, :-1], seg[:, 1:]).sum()
        pairs = B * (S - 1)
        if last is not None:  # the pair whose target is this segment's first token
            ce = ce + pair_nll(last, seg[:, 0]).sum()
            pairs += B
        last = logits[:, -1]
        sums[i] = ce.double().cpu()
        counts[i] = pairs
    return sums, counts


@torch.no_grad()
def base_segment_nll(base, input_ids: Tensor, segment_size: int, *, full_context: bool) -> tuple[Tensor, Tensor]:
    """:func:`segment_nll` of a plain causal LM, the two bounds a memory sits between.

    ``full_context=True`` runs each window in one pass, every token seeing all the tokens
    before it in the window (the ceiling a memory can approach); ``False`` runs every segment
    on its own, seeing nothing of the segments before (the floor: what a memory that carries
    nothing gives). The pairs are counted by segment exactly as for :func:`segment_nll`.

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> base = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=99)).eval()
        >>> ids = torch.randint(99, (2, 48))
        >>> [c.tolist() for c in base_segment_nll(base, ids, 16, full_context=True)[1:]]
        [[30, 32, 32]]
    """
    if not full_context:
        return _segmentwise(lambda seg: base(seg).logits, input_ids, segment_size)
    n = _check_windows(input_ids, segment_size)
    ce = pair_nll(base(input_ids).logits[:, :-1], input_ids[:, 1:])  # (B, L-1)
    which = torch.arange(1, input_ids.shape[1], device=ce.device) // segment_size  # segment of each target
    sums = torch.zeros(n, dtype=torch.float64).index_add_(0, which.cpu(), ce.sum(0).double().cpu())
    counts = torch.bincount(which.cpu(), minlength=n) * input_ids.shape[0]
    return sums, counts


def evenly_spaced(total: int, limit: int | None) -> list[int]:
    """``limit`` indices spread evenly over ``range(total)`` (all of them when ``limit`` is None
    or not smaller), so a capped evaluation still samples every book.

    Example:
        >>> evenly_spaced(10, 4), evenly_spaced(3, None)
        ([0, 2, 5, 7], [0, 1, 2])
    """
    if limit is None or limit >= total:
        return list(range(total))
    if limit < 1:
        raise ValueError(f"max_windows must be >= 1, got {limit}.")
    return [i * total // limit for i in range(limit)]


def evaluate_perplexity(model, windows: Tensor, *, batch_size: int = 8, progress: bool = False,
                        wipe_memory: bool = False, swap_memory: bool = False) -> list[dict]:
    """Perplexity per segment index over ``windows``.

    Args:
        model: an :class:`armt.ARMTForCausalLM`; it is put in eval mode for the call.
        windows: ``(N, n * segment_size)`` token ids (e.g. ``LMWindowDataset.windows``).
        batch_size: windows per forward pass.
        progress: show a tqdm bar over batches.
        wipe_memory: read every segment from an empty memory (see :func:`segment_nll`).
        swap_memory: window ``j`` of ``N`` reads the memory that window ``(j + N // 2) % N``
            wrote (``memory_from`` of :func:`segment_nll`): evenly spaced windows are then far
            apart, usually in another book.

    Returns:
        One record per segment and a last one for all pairs: ``{"segment": 1 .. n or "all",
        "pairs", "loss", "perplexity"}``.

    Example:
        >>> import armt
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> base = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=99))
        >>> model = armt.ARMTForCausalLM(base, armt.ARMTConfig(num_mem_tokens=4, d_mem=8, segment_size=16))
        >>> records = evaluate_perplexity(model, torch.randint(99, (3, 32)), batch_size=2)
        >>> [(r["segment"], r["pairs"]) for r in records]
        [(1, 45), (2, 48), ('all', 93)]
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    was_training = model.training
    model.eval()
    try:
        device = model.cell.memory_tokens.device
        if not swap_memory:
            return _pooled(lambda ids: segment_nll(model, ids, wipe_memory=wipe_memory), windows, batch_size,
                           device, progress)
        if wipe_memory or windows.shape[0] < 2:
            raise ValueError("swap_memory needs at least 2 windows (each reads another one's memory) and no "
                             "wipe_memory.")
        donors = windows.roll(-(windows.shape[0] // 2), dims=0)
        return _pooled(lambda ids, other: segment_nll(model, ids, memory_from=other), windows, batch_size, device,
                       progress, donors=donors)
    finally:
        model.train(was_training)


BOUNDS = ("base, full context", "base, segment only")


def evaluate_base_bounds(base, windows: Tensor, segment_size: int, *, batch_size: int = 8,
                         progress: bool = False) -> dict[str, list[dict]]:
    """The ceiling and the floor of :func:`evaluate_perplexity`: the plain base model on the
    same windows, with the whole window in context and with each segment alone.

    Returns:
        ``{"base, full context": records, "base, segment only": records}``.

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> base = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=99))
        >>> bounds = evaluate_base_bounds(base, torch.randint(99, (3, 32)), 16)
        >>> [r["pairs"] for r in bounds["base, segment only"]]
        [45, 48, 93]
    """
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}.")
    was_training = base.training
    base.eval()
    device = next(base.parameters()).device
    try:
        return {name: _pooled(lambda ids, full=full: base_segment_nll(base, ids, segment_size, full_context=full),
                              windows, batch_size, device, progress)
                for name, full in zip(BOUNDS, (True, False))}
    finally:
        base.train(was_training)


def _pooled(nll, windows: Tensor, batch_size: int, device, progress: bool, donors: Tensor | None = None) -> list[dict]:
    """Sums over batches of ``nll(batch)`` (``nll(batch, donors' same rows)`` with ``donors``)."""
    if windows.dim() != 2 or windows.shape[0] == 0:
        raise ValueError(f"windows must be a non-empty (num_windows, length) tensor, got {tuple(windows.shape)}; "
                         "the held-out books may be shorter than one window (use fewer segments).")
    starts = range(0, windows.shape[0], batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="perplexity", unit="batch")
    sums = counts = None
    for start in starts:
        rows = slice(start, start + batch_size)
        batch = windows[rows].to(device)
        s, c = nll(batch) if donors is None else nll(batch, donors[rows].to(device))
        sums, counts = (s, c) if sums is None else (sums + s, counts + c)
    records = [_record(i + 1, float(s), int(c)) for i, (s, c) in enumerate(zip(sums, counts))]
    records.append(_record("all", float(sums.sum()), int(counts.sum())))
    return records


def gap_closed(results: Mapping[str, Sequence[dict]], model: str) -> list[float | None]:
    """Per record of ``model``: the share of the floor-to-ceiling gap it closes,
    ``(floor - ppl) / (floor - ceiling)`` (1: as good as the full context, 0: no better than
    each segment alone); ``None`` where the bounds are within 0.1% of each other (segment 1,
    where both see the same tokens and differ only by rounding).

    Example:
        >>> rec = lambda p: [{"segment": 2, "pairs": 1, "loss": 0.0, "perplexity": p}]
        >>> gap_closed({"m": rec(25.0), BOUNDS[0]: rec(20.0), BOUNDS[1]: rec(30.0)}, "m")
        [0.5]
    """
    out = []
    for r, top, bottom in zip(results[model], results[BOUNDS[0]], results[BOUNDS[1]]):
        gap = bottom["perplexity"] - top["perplexity"]
        out.append(None if abs(gap) < 1e-3 * bottom["perplexity"] else (bottom["perplexity"] - r["perplexity"]) / gap)
    return out


def _record(segment: int | str, total: float, pairs: int) -> dict[str, Any]:
    loss = total / pairs
    return {"segment": segment, "pairs": pairs, "loss": loss, "perplexity": math.exp(loss)}


# which books ---------------------------------------------------------------------------------


def find_run_config(model_dir: str | os.PathLike) -> Path | None:
    """The ``run_config.yaml`` of the ``armt train`` run a model directory belongs to
    (``run/best``, ``run/stageN-Kseg/best``, ``run/stageN-Kseg/checkpoint-M``), else None."""
    here = Path(model_dir).resolve()
    for folder in (here, here.parent, here.parent.parent):
        if (folder / RUN_CONFIG).is_file():
            return folder / RUN_CONFIG
    return None


def _lm_data(model_dir) -> dict | None:
    import yaml

    path = find_run_config(model_dir)
    if path is None:
        return None
    data = (yaml.safe_load(path.read_text()) or {}).get("data") or {}
    return data if data.get("kind") == "lm" else None


def _held_out_value(spec: Any) -> Any:
    """``"2"`` -> 2, ``"0.2"`` -> 0.2, ``"a,b"`` -> ["a", "b"]; other values as they are."""
    if not isinstance(spec, str):
        return spec
    for kind in (int, float):
        try:
            return kind(spec)
        except ValueError:
            pass
    return [t.strip() for t in spec.split(",") if t.strip()]


def held_out_books(model_dirs: Sequence[str | os.PathLike], books: str | None = None,
                   held_out: Any = None) -> tuple[BookSource, list[str]]:
    """The source and titles to evaluate on, never a book that a model trained on.

    Args:
        model_dirs: the evaluated model directories; those inside an ``armt train`` run with
            ``data.kind: lm`` tell their training source and split.
        books: a folder of ``.txt`` books, a ``.txt`` file or a dataset name; default: the
            source the first model's run trained on.
        held_out: which of those books: a count, a fraction or titles (as ``held_out_books``
            of the run config; a string ``"2"``, ``"0.2"`` or ``"a,b"`` is parsed), or
            ``"all"``; default: the first run's ``held_out_books`` (else 1).

    Raises:
        ValueError: when no source is known, or an evaluation book is a training book of
            one of the runs.
    """
    runs = [(d, _lm_data(d)) for d in model_dirs]
    first = next((data for _, data in runs if data is not None), None)
    options = (first or {}).get("options") or {}
    if books is None:
        if first is None:
            raise ValueError(f"{model_dirs[0]} is not inside an armt train run of data.kind lm, so its books are "
                             "unknown; pass --books with a folder of .txt books (and --held-out-books).")
        books = options.get("source")
    source = load_books(books, seed=(first or {}).get("seed", 0))
    spec = options.get("held_out_books", 1) if held_out is None else held_out
    titles = source.titles() if spec == "all" else split_books(source, _held_out_value(spec))[1]
    for directory, data in runs:
        if data is None:
            continue
        run_options = data.get("options") or {}
        run_source = load_books(run_options.get("source"), seed=data.get("seed", 0))
        trained = set(split_books(run_source, _held_out_value(run_options.get("held_out_books", 1)))[0])
        overlap = sorted(trained & set(titles))
        if overlap:
            raise ValueError(f"{overlap} are training books of the run of {directory}; evaluate on its held-out "
                             "books (leave --held-out-books out) or pass other --books.")
    return source, sorted(titles)


# tables and plots ----------------------------------------------------------------------------


def _checked(results: Mapping[str, Sequence[dict]]) -> dict[str, list[dict]]:
    if not results:
        raise ValueError("results is empty; pass {model name: evaluate_perplexity(...)}.")
    out = {}
    for name, records in results.items():
        records = [dict(r) for r in records]
        missing = [f for f in FIELDS[1:] for r in records if f not in r]
        if missing or not records:
            raise ValueError(f"results[{name!r}] must be records of evaluate_perplexity (fields {FIELDS[1:]}).")
        out[str(name)] = records
    segments = {tuple(r["segment"] for r in records) for records in out.values()}
    if len(segments) != 1:
        raise ValueError(f"the models were evaluated on different segments {sorted(segments)}; use the same windows.")
    return out


def markdown_table(results: Mapping[str, Sequence[dict]], title: str | None = None) -> str:
    """Segments as rows, perplexity per model as columns (and their ratio for two models).

    Example:
        >>> rec = lambda s, p: {"segment": s, "pairs": 10, "loss": math.log(p), "perplexity": p}
        >>> print(markdown_table({"ARMT": [rec(1, 8.0), rec("all", 6.0)], "base": [rec(1, 10.0), rec("all", 8.0)]}))
        | segment | pairs | ARMT | base | ARMT / base |
        |---|---|---|---|---|
        | 1 | 10 | 8.00 | 10.00 | 0.800 |
        | all | 10 | 6.00 | 8.00 | 0.750 |
    """
    results = _checked(results)
    names = list(results)
    bounded = all(b in results for b in BOUNDS)
    closing = [n for n in names if n not in BOUNDS] if bounded else []
    ratio = len(names) == 2 and not bounded
    header = ["segment", "pairs", *names] + ([f"{names[0]} / {names[1]}"] if ratio else [])
    header += [f"{n}: gap closed" for n in closing]
    closed = [gap_closed(results, n) for n in closing]
    lines = [f"# {title}", ""] if title else []
    lines += ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for i, rows in enumerate(zip(*results.values())):
        cells = [str(rows[0]["segment"]), str(rows[0]["pairs"])] + [f"{r['perplexity']:.2f}" for r in rows]
        if ratio:
            cells.append(f"{rows[0]['perplexity'] / rows[1]['perplexity']:.3f}")
        cells += ["-" if c[i] is None else f"{100 * c[i]:.0f}%" for c in closed]
        lines.append("| " + " | ".join(cells) + " |")
    if bounded:
        lines += ["", "gap closed = (segment only - model) / (segment only - full context): the share of what "
                  "the full context gains over each segment alone that the model wins back."]
    return "\n".join(lines)


def plot_perplexity(results: Mapping[str, Sequence[dict]], path: str | os.PathLike, title: str | None = None) -> Path:
    """A PNG of perplexity against segment index, one line per model."""
    # Figure + the Agg canvas directly: no pyplot, so no global backend is switched
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    results = _checked(results)
    outside = len(results) > 4  # a legend inside would cover the lines
    fig = Figure(figsize=(9.0 if outside else 6.4, 4.0))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for name, records in results.items():
        points = [(r["segment"], r["perplexity"]) for r in records if r["segment"] != "all"]
        ax.plot([s for s, _ in points], [p for _, p in points], marker="o", label=name,
                linestyle="--" if name in BOUNDS else "-")
    segments = [r["segment"] for r in next(iter(results.values())) if r["segment"] != "all"]
    ax.set_xticks(segments)
    ax.set_xlabel("segment index")
    ax.set_ylabel("perplexity")
    ax.grid(alpha=0.3)
    if outside:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize="small")
    else:
        ax.legend()
    if title:
        ax.set_title(title)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    return path


def write_perplexity(results: Mapping[str, Sequence[dict]], out_dir: str | os.PathLike, *, overwrite: bool = False,
                     title: str = "Perplexity per segment on held-out books",
                     metadata: Mapping[str, Any] | None = None) -> dict[str, Path]:
    """Write ``perplexity.md``, ``.csv``, ``.json`` and ``.png`` into ``out_dir``.

    Args:
        results: ``{model name: evaluate_perplexity(...)}``, every model on the same windows.
        out_dir: the folder; created if missing.
        overwrite: replace existing files; without it an existing file is an error.
        title: heading of the table and the plot.
        metadata: JSON-serialisable facts (models, books, windows), kept in ``perplexity.json``.

    Example:
        >>> import tempfile
        >>> rec = {"segment": 1, "pairs": 4, "loss": 0.0, "perplexity": 1.0}
        >>> sorted(write_perplexity({"m": [rec]}, tempfile.mkdtemp()))
        ['perplexity.csv', 'perplexity.json', 'perplexity.md', 'perplexity.png']
    """
    results = _checked(results)
    out = Path(out_dir)
    paths = {name: out / name for name in FILES}
    existing = [str(p) for p in paths.values() if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} exists; pass overwrite=True (--overwrite on the command line) to "
                              "replace the results, or choose another output folder.")
    out.mkdir(parents=True, exist_ok=True)
    with paths["perplexity.csv"].open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS)
        writer.writeheader()
        for name, records in results.items():
            writer.writerows({"model": name, **r} for r in records)
    data = {"title": title, "definition": DEFINITION, "models": list(results), "results": results}
    if metadata is not None:
        data["metadata"] = dict(metadata)
    paths["perplexity.json"].write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    paths["perplexity.md"].write_text(markdown_table(results, title) + "\n", encoding="utf-8")
    plot_perplexity(results, paths["perplexity.png"], title)
    return paths
