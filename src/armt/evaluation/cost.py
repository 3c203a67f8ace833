"""What a step costs: its matrix arithmetic, where its time goes, and fair timings.

ARMT's price over the bare model is set by arithmetic: ``M`` memory tokens more per segment, a
memory read at every position and a write at the memory tokens of every layer. The ratio of the
two models' floating-point operations is the *arithmetic floor* of a config: what ARMT / bare
would be if every operation ran as fast as the base model's. Time above it is overhead that can
be removed. ``benchmarks/overhead.py`` and ``benchmarks/profile_step.py`` print these.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import torch


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of the matrix products ``fn`` runs (``mm``, ``bmm``,
    ``addmm``, attention; forward and, if ``fn`` calls it, backward), as counted by
    :class:`torch.utils.flop_counter.FlopCounterMode`. Elementwise work is not counted.

    Example:
        >>> import torch
        >>> layer = torch.nn.Linear(8, 4, bias=False)
        >>> count_flops(lambda: layer(torch.randn(2, 8)))  # 2 x 8 x 4 multiply-adds
        128
    """
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def op_times(fn: Callable[[], object]) -> dict[str, float]:
    """Self CPU seconds per operator (``aten::mm``, ...) of one call of ``fn``, largest first."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    rows = {e.key: e.self_cpu_time_total / 1e6 for e in prof.key_averages()}
    return dict(sorted(rows.items(), key=lambda kv: -kv[1]))


def interleaved_times(fns: Mapping[str, Callable[[], object]], repeats: int = 5,
                      warmup: int = 1) -> dict[str, float]:
    """Median seconds of each function, timed in turns (a, b, c, a, b, c, ...) so that a change
    in the machine's load during the run falls on all of them alike.

    Example:
        >>> times = interleaved_times({"sum": lambda: sum(range(1000)), "max": lambda: max(range(1000))}, 3)
        >>> sorted(times)
        ['max', 'sum']
    """
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats!r}.")
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    seen: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            seen[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in seen.items()}


def step_functions(base, model, ids: torch.Tensor, segment: int) -> dict[str, Callable[[], object]]:
    """The four passes ``benchmarks/overhead.py`` compares, on the same tokens ``ids``:
    ``train bare`` (the base model run segment by segment, forward and backward, each segment's
    own loss), ``train ARMT`` (forward and backward as ``armt train`` runs it: only the last
    segment's logits are kept), ``read bare`` (the base model's backbone, no head, no grad) and
    ``read ARMT`` (:meth:`armt.ARMTForCausalLM.read`). The training passes start from no
    gradients, so that every call does the same work."""
    from ..segments import segment_bounds

    bounds = segment_bounds(ids.shape[1], segment, "left")
    backbone = base.base_model  # the decoder without the language-model head

    def train_bare():
        base.zero_grad(set_to_none=True)
        for a, b in bounds:
            base(ids[:, a:b], labels=ids[:, a:b]).loss.backward()

    def train_armt():
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids, output_only_last_segment=True).loss.backward()

    def read_bare():
        with torch.no_grad():
            for a, b in bounds:
                backbone(ids[:, a:b])

    def read_armt():
        model.read([ids])

    return {"train bare": train_bare, "train ARMT": train_armt, "read bare": read_bare, "read ARMT": read_armt}
