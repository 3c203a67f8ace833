"""See inside the associative memory while a model reads: per layer and per segment, how large
``A`` and ``z`` are, how much each write changes them and how large the read is next to the
hidden state it is added to.

:func:`inspect_memory` reads an input segment by segment (the plain loop, not the wavefront, so
that every layer's write can be observed) and returns a :class:`MemoryTrace`; ``armt
inspect-memory`` writes it as JSON and a plot. Statistics per (segment, layer), averaged over
the batch, the heads and the memory tokens unless named otherwise:

- ``A_norm``, ``z_norm``: Frobenius norm of ``A`` and norm of ``z`` after the segment's write.
- ``kz_mean``, ``kz_min``, ``kz_max``: ``k . z`` of the written keys against ``z`` before the
  write (0 on the first segment): ``>= 1`` means ``gamma = 0``, the key adds nothing to ``z``.
- ``gamma_mean``, ``gamma_zero``: the normaliser's update weight and the share of keys with 0.
- ``beta_mean``, ``beta_max``: the write strength.
- ``step_mean``, ``step_max``: the effective delta-rule step ``beta / (k . z + eps)``, by which
  ``k A`` moves towards ``(k . z) v`` (``beta`` on the first segment, where nothing is stored).
- ``read_ratio``: norm of the read ``phi(q) A / (phi(q) . z)`` over the norm of the hidden state
  it is added to, mean over positions (absent on the first segment, which does not read).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from .ops.fused import EPS
from .segments import run_segment

STATS = ("A_norm", "z_norm", "kz_mean", "kz_min", "kz_max", "gamma_mean", "gamma_zero", "beta_mean", "beta_max",
         "step_mean", "step_max", "read_ratio")


@dataclass
class MemoryTrace:
    """What :func:`inspect_memory` recorded: ``stats[name][i][layer]`` at segment ``segments[i]``
    (1-based; only the segments asked for are kept), ``nan`` where a value does not exist."""

    segments: list[int] = field(default_factory=list)
    stats: dict[str, list[list[float]]] = field(default_factory=lambda: {name: [] for name in STATS})
    num_layers: int = 0
    description: str = ""

    def series(self, name: str, layer: int) -> list[float]:
        """One statistic of one layer, by recorded segment."""
        return [row[layer] for row in self.stats[name]]

    def to_dict(self) -> dict:
        clean = {k: [[None if math.isnan(x) else x for x in row] for row in rows] for k, rows in self.stats.items()}
        return {"description": self.description, "num_layers": self.num_layers, "segments": self.segments,
                "stats": clean}

    def save_json(self, path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return path

    def plot(self, path, title: str | None = None) -> Path:
        """Every statistic against the segment index (log x), one line per layer."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        panels = [("A_norm", "|A|", True), ("z_norm", "|z|", False), ("kz_mean", "k . z (mean; band min-max)", False),
                  ("gamma_mean", "gamma (mean)", False), ("beta_mean", "beta (mean)", False),
                  ("step_max", "beta / (k . z), max", True), ("read_ratio", "|read| / |hidden|", True),
                  ("gamma_zero", "share of keys with gamma = 0", False)]
        fig, axes = plt.subplots(2, 4, figsize=(16, 6.5))
        for ax, (name, label, log_y) in zip(axes.flat, panels):
            for layer in range(self.num_layers):
                ys = self.series(name, layer)
                line, = ax.plot(self.segments, ys, label=f"layer {layer}", linewidth=1)
                if name == "kz_mean":
                    ax.fill_between(self.segments, self.series("kz_min", layer), self.series("kz_max", layer),
                                    color=line.get_color(), alpha=0.12)
            ax.set_xscale("log")
            if log_y and any(y > 0 for layer in range(self.num_layers) for y in self.series(name, layer)):
                ax.set_yscale("log")
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("segment", fontsize=8)
        axes.flat[0].legend(fontsize=7)
        fig.suptitle(title or self.description, fontsize=10)
        fig.tight_layout()
        path = Path(path)
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path


def default_marks(num_segments: int, dense: int = 64, per_octave: int = 8) -> list[int]:
    """Segments to record: every one up to ``dense``, then ``per_octave`` per doubling, and the last.

    Example:
        >>> default_marks(200, dense=4, per_octave=2)
        [1, 2, 3, 4, 6, 8, 11, 16, 23, 32, 45, 64, 91, 128, 181, 200]
    """
    marks = set(range(1, min(dense, num_segments) + 1))
    x = float(dense)
    while x < num_segments:
        x *= 2 ** (1 / per_octave)
        marks.add(min(num_segments, int(round(x))))
    return sorted(marks | {num_segments})


def by_segment(callback: Callable) -> Callable:
    """``callback(layer, segment, *rest)`` as a hook of :func:`watch_memory` (``hook(layer, *rest)``):
    the segment loop runs every layer once per segment, so a layer's k-th call is segment k's. Make
    one per pass; it counts from 0.

    Example:
        >>> seen = []
        >>> hook = by_segment(lambda layer, segment, x: seen.append((layer, segment)))
        >>> for layer in (0, 1, 0, 1):
        ...     hook(layer, None)
        >>> seen
        [(0, 0), (1, 0), (0, 1), (1, 1)]
    """
    calls: dict[int, int] = {}

    def hook(layer: int, *rest) -> None:
        segment = calls.get(layer, 0)
        calls[layer] = segment + 1
        callback(layer, segment, *rest)

    return hook


@contextmanager
def watch_memory(model, on_read: Callable | None = None, on_write: Callable | None = None,
                 on_gate: Callable | None = None) -> Iterator[None]:
    """Call ``on_read(layer, hidden, out)`` after every memory read and
    ``on_write(layer, memory_before, k, beta, memory_after)`` after every write of ``model``'s
    associative memories (the sequential segment loop; the wavefront does not go through them)
    while the context is open; ``on_gate(layer, x)`` gets the write strength's input before the
    gate (``beta = gate(x)``, ``(B, H, M, 1 or d_model / H)``). The tensors keep their gradients, so a training loss can use them
    (:class:`armt.training.write_penalty.WritePenalty`). Watches nest; the memories' own methods
    are back when the last one ends.

    Example:
        >>> import torch
        >>> from armt import ARMTConfig, ARMTForCausalLM
        >>> from armt.tiny import tiny_base_model
        >>> model = ARMTForCausalLM(tiny_base_model("gpt2", layers=2, hidden=32),
        ...                         ARMTConfig(num_mem_tokens=2, d_mem=4, segment_size=8))
        >>> seen = []
        >>> with watch_memory(model, on_write=lambda layer, old, k, beta, new: seen.append(layer)):
        ...     _ = model(torch.randint(1000, (1, 16)))
        >>> seen
        [0, 1, 0, 1]
    """
    mems = list(model.cell.memory_layers)
    callbacks = (on_read, on_write, on_gate)

    def install(index, mem) -> list:
        # one wrapper per memory, shared by nested watches: each adds its callbacks to the list
        watchers = mem.__dict__.get("_armt_watchers")
        if watchers is not None:
            return watchers
        watchers = []
        read = mem.read

        def watched_read(hidden: Tensor, memory) -> Tensor:
            out = read(hidden, memory)
            for reader, _, _ in list(watchers):
                if reader is not None:
                    reader(index, hidden, out)
            return out

        def watched_write(mem_out: Tensor, memory):
            kvb = F.linear(mem_out, *mem.write_projection())
            for _, _, gate in list(watchers):
                if gate is not None:
                    gate(index, mem.split_heads(kvb[..., -mem.W_mb.out_features:]))
            k, v, beta = mem.write_features(kvb)  # (B, H, M, .)
            new = mem.write_features_into(k, v, beta, memory)
            for _, writer, _ in list(watchers):
                if writer is not None:
                    writer(index, memory, k, beta, new)
            return new

        # instance attributes shadow the class's methods, which `bind` calls through self
        mem.read, mem.write, mem._armt_watchers = watched_read, watched_write, watchers
        return watchers

    for i, mem in enumerate(mems):
        install(i, mem).append(callbacks)
    try:
        yield
    finally:
        for mem in mems:
            watchers = mem.__dict__["_armt_watchers"]
            watchers.remove(callbacks)
            if not watchers:
                del mem.read, mem.write, mem._armt_watchers


def _recorder(model, row: dict[int, dict[str, float]]):
    """``watch_memory`` callbacks that put one segment's statistics into ``row`` (layer -> stats)."""
    mems = list(model.cell.memory_layers)

    def on_read(index, hidden, out):
        ratio = (out - hidden).float().norm(dim=-1) / hidden.float().norm(dim=-1).clamp_min(1e-12)
        row.setdefault(index, {})["read_ratio"] = ratio.mean().item()

    def on_write(index, memory, k, beta, new):
        beta = beta.float().mean(dim=-1)  # (B, H, M): with gating, the mean over value dimensions
        if memory is None or memory.z is None:
            kz = torch.zeros_like(beta)
            gamma = torch.ones_like(beta)
            step = beta
        else:
            kz = (k * memory.z.unsqueeze(-2)).sum(-1).float() + EPS
            gamma = (1 - kz / (k * k).sum(-1).float()).clamp(0, 1) if mems[index].correction else torch.ones_like(kz)
            step = beta / kz
        row.setdefault(index, {}).update(
            A_norm=new.A.float().flatten(1).norm(dim=1).mean().item(),
            z_norm=math.nan if new.z is None else new.z.float().flatten(1).norm(dim=1).mean().item(),
            kz_mean=kz.mean().item(), kz_min=kz.min().item(), kz_max=kz.max().item(),
            gamma_mean=gamma.mean().item(), gamma_zero=(gamma == 0).float().mean().item(),
            beta_mean=beta.mean().item(), beta_max=beta.max().item(),
            step_mean=step.mean().item(), step_max=step.max().item())

    return on_read, on_write


@torch.no_grad()
def inspect_memory(model, input_ids: Tensor, *, memory=None, marks: Sequence[int] | None = None,
                   description: str = "", progress: bool = False) -> MemoryTrace:
    """Read ``input_ids`` ``(B, L)`` segment by segment and record the memory's statistics (see
    the module docstring) at the segments ``marks`` (1-based; default :func:`default_marks`).
    ``progress`` shows a tqdm bar over the segments.

    Example:
        >>> import torch
        >>> from armt import ARMTConfig, ARMTForCausalLM
        >>> from armt.tiny import tiny_base_model
        >>> model = ARMTForCausalLM(tiny_base_model("gpt2", layers=2, hidden=32),
        ...                         ARMTConfig(num_mem_tokens=2, d_mem=4, segment_size=8))
        >>> trace = inspect_memory(model, torch.randint(1000, (1, 40)))
        >>> trace.segments, len(trace.stats["A_norm"][0])
        ([1, 2, 3, 4, 5], 2)
    """
    cell = model.cell
    if model.config.memory != "associative":
        raise ValueError("inspect_memory needs the associative memory (memory='associative'); "
                         "RMT and the no-memory model have no A or z to inspect.")
    if input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be (batch, length) with length >= 1, got {tuple(input_ids.shape)}.")
    S = model.config.segment_size
    n = -(-input_ids.shape[1] // S)
    keep = set(default_marks(n) if marks is None else (int(m) for m in marks))
    trace = MemoryTrace(num_layers=cell.num_layers, description=description)
    was_training = model.training
    model.eval()
    embed = cell.runner.get_input_embeddings()
    device = cell.memory_tokens.device
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=n, unit="seg", desc="inspecting", dynamic_ncols=True)
    try:
        for s in range(n):
            if bar is not None:
                bar.update(1)
            row: dict[int, dict[str, float]] = {}
            on_read, on_write = _recorder(model, row)
            with watch_memory(model, on_read, on_write):
                ids = input_ids[:, s * S:(s + 1) * S].to(device)
                _, memory = run_segment(cell, embed(ids), None, memory, compute_logits=False)
            if s + 1 in keep:
                trace.segments.append(s + 1)
                for name in STATS:
                    trace.stats[name].append([row.get(layer, {}).get(name, math.nan)
                                              for layer in range(cell.num_layers)])
    finally:
        model.train(was_training)
        if bar is not None:
            bar.close()
    return trace
