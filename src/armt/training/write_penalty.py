"""A penalty on the memory's write strength, added to a training loss.

A memory that stays right far beyond its training length writes only what the task needs: every
distractor written a little makes ``A`` and the read grow with the input's length
(docs/results/length.md). With ``ARMTConfig(write_gate="hard")`` a write can be exactly zero;
this penalty makes the model use that. Both training loops use it: the capacity/needle loop
(:class:`armt.training.capacity.CapacityRecipe`) and ``armt train`` (``write_penalty``,
``write_margin`` in the run config).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from torch import Tensor

from ..inspection import by_segment, watch_memory

# the hard gate is clip(x / 4 + 1/2, 0, 1): it shuts at x = -2
_HARD_SHUT = -2.0
#: which writes a penalty costs: every write, or only those of segments the task does not need
PENALTY_TARGETS = ("all", "distractors")
#: how the hard gate's penalty goes past the fully open point: flat (as the gate itself) or rising
PENALTY_SHAPES = ("clipped", "linear")


def check_penalty_shape(shape: str) -> None:
    """Refuse a penalty shape other than those of :data:`PENALTY_SHAPES`."""
    if shape not in PENALTY_SHAPES:
        raise ValueError(f"write_penalty_shape={shape!r}: use one of {PENALTY_SHAPES}.")


def check_write_penalty(config, weight: float, margin: float = 0.0, shape: str = "clipped") -> None:
    """Refuse a penalty that ``config`` (an :class:`armt.ARMTConfig`) cannot take, saying what to
    change: negative values, a margin or a linear shape without the hard gate, a penalty on the
    wavefront. Both the run config (before any model is built) and :meth:`WritePenalty.for_model`
    call it."""
    check_penalty_shape(shape)
    if shape == "linear" and config.write_gate != "hard":
        raise ValueError("write_penalty_shape='linear' needs ARMTConfig(write_gate='hard') (armt.write_gate: hard in "
                         "a run config): the sigmoid gate has a gradient everywhere and never saturates flat.")
    if not weight >= 0:
        raise ValueError(f"write_penalty must be >= 0, got {weight!r}.")
    if not margin >= 0:
        raise ValueError(f"write_margin must be >= 0, got {margin!r}.")
    if margin > 0 and config.write_gate != "hard":
        raise ValueError("write_margin needs ARMTConfig(write_gate='hard') (armt.write_gate: hard in a run config): "
                         "the sigmoid gate never shuts, so there is no edge to keep a margin from.")
    if weight > 0 and config.memory == "associative" and config.wavefront:
        raise ValueError("write_penalty needs the sequential segment loop (the wavefront does not go through the "
                         "memories' writes); build the model with wavefront=False (armt.wavefront: false in a run "
                         "config).")


@dataclass
class WritePenalty:
    """Collects the write strengths of one forward pass and turns them into a loss term.

    Args:
        weight: the loss gets ``weight`` times the mean write strength (over layers, segments
            and memory tokens of the pass).
        margin: with the hard gate, a write counts as open until its gate input is
            ``4 * margin`` below the shut point (``clip(x / 4 + 1/2 + margin, 0, 1 + margin)``),
            so that penalised gates settle with room to spare instead of at the edge, where a
            slightly different input opens them again. The model still writes with the plain gate.
        hard: the model's gate is ``write_gate="hard"`` (``margin`` and ``shape="linear"`` need it).
        shape: with the hard gate, ``"clipped"`` penalises the strength as above, flat once the
            gate is fully open (input ``x >= 2``), where the write itself is flat too: a gate
            pushed far open gets no gradient from the penalty or from the task and stays open
            for good (a layer that writes every segment, docs/results/length.md).
            ``"linear"`` penalises ``max(x / 4 + 1/2 + margin, 0)``, which keeps rising past
            the open point, so such a gate is pulled back to where the task's gradient reaches it.
            :meth:`strength` (logged as ``write_strength``) is then the penalised value, which
            can exceed ``1 + margin``.
        on: ``"all"`` writes, or only the ``"distractors"``: then each pass is told, with
            :meth:`only_segments`, which segments of which sample hold nothing the task needs
            (the needle task knows where its facts are), and only their writes cost something.

    Example:
        >>> import torch
        >>> from armt import ARMTConfig, ARMTForCausalLM
        >>> from armt.tiny import tiny_base_model
        >>> model = ARMTForCausalLM(tiny_base_model("gpt2", layers=2, hidden=32),
        ...                         ARMTConfig(num_mem_tokens=2, d_mem=4, segment_size=8, write_gate="hard"))
        >>> penalty = WritePenalty(weight=2.0, margin=0.25, hard=True)
        >>> ids = torch.randint(1000, (1, 24))
        >>> with penalty.watch(model):
        ...     out = model(ids, labels=ids)
        >>> loss = out.loss + penalty.term()
        >>> 0.0 <= penalty.open_share() <= 1.0
        True
    """

    weight: float
    margin: float = 0.0
    hard: bool = False
    on: str = "all"
    shape: str = "clipped"
    _strengths: list[Tensor] = field(default_factory=list, repr=False)
    _opened: list[Tensor] = field(default_factory=list, repr=False)
    _segments: Tensor | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        gate = SimpleNamespace(write_gate="hard" if self.hard else "sigmoid", memory="associative", wavefront=False)
        check_write_penalty(gate, self.weight, self.margin, self.shape)
        if self.on not in PENALTY_TARGETS:
            raise ValueError(f"write penalty on={self.on!r}: use one of {PENALTY_TARGETS}.")

    def only_segments(self, penalised: Tensor | None) -> None:
        """With ``on="distractors"``: ``(B, n_segments)`` 1 where a segment's writes are
        penalised (nothing there is needed), 0 elsewhere, for the next watched pass; segments
        past its width cost nothing."""
        if self.on != "distractors":
            raise ValueError("only_segments is for WritePenalty(on='distractors').")
        self._segments = None if penalised is None else penalised.float()

    @classmethod
    def for_model(cls, model, weight: float, margin: float = 0.0, on: str = "all",
                  shape: str = "clipped") -> WritePenalty | None:
        """The penalty for ``model``, or ``None`` where there is nothing to penalise (a zero
        weight, or a model without an associative memory: RMT, no memory). Refuses the
        wavefront, whose passes do not go through the memories' writes."""
        cfg = model.config
        check_write_penalty(cfg, weight, margin, shape)
        if weight == 0 or cfg.memory != "associative":
            return None
        return cls(weight, margin, hard=cfg.write_gate == "hard", on=on, shape=shape)

    def _on_gate(self, layer: int, segment: int, x: Tensor) -> None:
        if self.hard:
            m = self.margin
            strength = (x * 0.25 + 0.5 + m).clamp(0, 1 + m if self.shape == "clipped" else None)
            self._opened.append((x.detach() > _HARD_SHUT).float().mean())
        else:
            strength = torch.sigmoid(x)
        if self.on == "all":
            self._strengths.append(strength.mean())
            return
        if self._segments is None:
            raise ValueError("WritePenalty(on='distractors') needs only_segments(...) before the pass.")
        per_sample = strength.flatten(1).mean(1)
        mask = self._segments[:, segment] if segment < self._segments.shape[1] else torch.zeros_like(per_sample)
        self._strengths.append((per_sample * mask.to(per_sample)).mean())

    @contextmanager
    def watch(self, model) -> Iterator[WritePenalty]:
        """Record the write strengths of the passes run inside (earlier records are dropped)."""
        self._strengths, self._opened = [], []
        with watch_memory(model, on_gate=by_segment(self._on_gate)):
            yield self

    def strength(self) -> Tensor | None:
        """Mean write strength of the watched passes (with the margin), ``None`` if none wrote."""
        return torch.stack(self._strengths).mean() if self._strengths else None

    def term(self) -> Tensor | float:
        """``weight * strength``: add it to the loss (0.0 when nothing was written)."""
        s = self.strength()
        return 0.0 if s is None else self.weight * s

    def open_share(self) -> float | None:
        """Share of hard-gate writes with ``beta > 0`` (``None`` for the sigmoid gate)."""
        return torch.stack(self._opened).mean().item() if self._opened else None

    def stats(self) -> dict[str, Tensor]:
        """What to log of the watched passes, detached (no device sync): ``write_strength``
        and, with the hard gate, ``write_open``; empty when nothing was written."""
        out = {}
        if self._strengths:
            out["write_strength"] = torch.stack(self._strengths).mean().detach()
        if self._opened:
            out["write_open"] = torch.stack(self._opened).mean()
        return out
