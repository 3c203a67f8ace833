"""Exact match on the needle task (:mod:`armt.data.needle`) at any number of segments, and its
curriculum stages for :func:`armt.training.capacity.train_stages`.

The context is read in chunks of whole segments at constant memory (:meth:`armt.ARMTForCausalLM.read`,
along the diagonals for ARMT), then the query segment runs on the memory that came out and its
value is scored. Samples are fixed by a seed, so models are compared on the same haystacks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import torch
from torch import Tensor

from ..data.needle import DISTRACTORS, NeedleConfig, TextStream, fixed_needle_batch, needle_batch
from ..inspection import by_segment, watch_memory
from ..ops import fused
from ..wavefront import wavefront_blocker
from .reports import wilson_interval


def _reads_nothing(model) -> bool:
    """The no-memory model without a window carries nothing across segments: its answer depends on
    the query segment alone, so the context need not be read (tested equal)."""
    return not model.config.use_memory and not model.config.sliding_window


@torch.no_grad()
def needle_predictions(model, input_ids: Tensor, config: NeedleConfig, *, wipe_memory: bool = False,
                       chunk_segments: int = 1024, wavefront: bool | None = None) -> Tensor:
    """The model's answer ``(B, value_len)`` to each sample of ``input_ids`` ``(B, L)``.

    Args:
        model: an :class:`armt.ARMTForCausalLM` whose segment size is ``config.segment_size``.
        wipe_memory: answer the query with an empty memory (the control: above chance means the
            answer came through the memory).
        chunk_segments: segments read per call; bounds the memory use of long inputs.
        wavefront: read along the diagonals (see :meth:`armt.ARMTForCausalLM.read`); ``None``
            uses it for the associative memory where it applies.
    """
    S = config.segment_size
    if model.config.segment_size != S:
        raise ValueError(f"the model's segment_size={model.config.segment_size} differs from the task's {S}; "
                         "build the model for the task (CapacityModelSpec.build(task)).")
    if input_ids.shape[1] != config.length:
        raise ValueError(f"input_ids has {input_ids.shape[1]} tokens, the task {config.length}.")
    was_training = model.training
    model.eval()
    try:
        context, query = input_ids[:, :-S], input_ids[:, -S:]
        memory = None
        if not wipe_memory and not _reads_nothing(model):
            if wavefront is None:
                wavefront = wavefront_blocker(model.cell) is None
            step = chunk_segments * S
            memory = model.read((context[:, i:i + step] for i in range(0, context.shape[1], step)),
                                wavefront=wavefront).memory
        device = model.cell.memory_tokens.device
        logits = model(query.to(device), memory=memory, output_only_last_segment=True).logits
        at = config.key_len  # the '?' predicts the value's first symbol
        return logits[:, at:at + config.value_len].argmax(-1).cpu()
    finally:
        model.train(was_training)


def evaluate_needle(model, config: NeedleConfig, *, num_samples: int = 64, seed: int = 12345,
                    text: TextStream | None = None, wipe_memory: bool = False, batch_size: int = 64,
                    chunk_segments: int = 1024) -> dict:
    """Exact match of ``model`` on ``num_samples`` fixed samples of ``config``.

    Returns ``{"exact_match", "correct", "n", "interval"}`` (the 95% Wilson interval).

    Example:
        >>> from armt.training.capacity import CapacityModelSpec
        >>> model = CapacityModelSpec(layers=1, hidden=32, heads=2, intermediate=64).build()
        >>> r = evaluate_needle(model, NeedleConfig(num_facts=1, num_segments=3), num_samples=4)
        >>> r["n"], 0 <= r["exact_match"] <= 1
        (4, True)
    """
    data = fixed_needle_batch(config, num_samples, seed, text)
    start = int(data["answer_start"][0])
    correct = 0
    for i in range(0, num_samples, batch_size):
        ids = data["input_ids"][i:i + batch_size]
        pred = needle_predictions(model, ids, config, wipe_memory=wipe_memory, chunk_segments=chunk_segments)
        correct += int((pred == ids[:, start:start + config.value_len]).all(dim=1).sum())
    return {"exact_match": correct / num_samples, "correct": correct, "n": num_samples,
            "interval": list(wilson_interval(correct, num_samples))}


# facts first (every segment a fact, as the capacity recipe that learns reliably), then distractors
DEFAULT_STAGES = ((1, 1), (2, 2), (4, 4), (4, 8), (4, 16))


class NeedleStage:
    """One curriculum stage: ``num_facts`` facts among ``num_segments`` segments; a batch is split
    evenly among the ``distractors`` kinds (a model trained on both is evaluated on each).

    Example:
        >>> stage = NeedleStage(2, 4)
        >>> stage.batch(4, torch.Generator().manual_seed(0))["input_ids"].shape
        torch.Size([4, 20])
    """

    def __init__(self, num_facts: int, num_segments: int, *, distractors: Sequence[str] = ("symbols",),
                 variant: str = "remember", text: TextStream | None = None):
        kinds = tuple(distractors)
        if not kinds or any(k not in DISTRACTORS for k in kinds):
            raise ValueError(f"distractors={distractors!r}: give one or more of {DISTRACTORS}.")
        self.tasks = [NeedleConfig(num_facts=num_facts, num_segments=num_segments, distractors=k, variant=variant)
                      for k in kinds]
        if "text" in kinds and text is None:
            raise ValueError("distractors 'text' needs text=TextStream(...).")
        self.text = text
        self.key = f"K{num_facts}xM{num_segments}"
        # with no distractors every write is needed: CapacityRecipe.write_penalty waits for them
        self.penalise_writes = num_segments > num_facts
        self.fields = {"num_facts": num_facts, "num_segments": num_segments}

    def _split(self, n: int) -> list[int]:
        k = len(self.tasks)
        return [n // k + (i < n % k) for i in range(k)]

    def batch(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        parts = [needle_batch(t, n, generator, self.text) for t, n in zip(self.tasks, self._split(batch_size)) if n]
        return {key: torch.cat([p[key] for p in parts]) for key in ("input_ids", "labels", "distractor_segments")}

    def leak(self, model, num_segments: int, num_samples: int = 32) -> float:
        """:func:`open_gate_share` of ``model`` at ``num_segments`` segments, counted beyond this
        stage's own length, averaged over the stage's distractor kinds (the same samples each call)."""
        shares = [open_gate_share(model, replace(task, num_segments=num_segments), num_samples=num_samples,
                                  text=self.text, after=task.num_segments)
                  for task in self.tasks]
        return sum(shares) / len(shares)

    def evaluate(self, model, num_samples: int, seed: int) -> float:
        total = 0
        for task, n in zip(self.tasks, self._split(num_samples)):
            if n:
                total += evaluate_needle(model, task, num_samples=n, seed=seed, text=self.text)["correct"]
        return total / num_samples


def needle_stages(stages: Sequence[tuple[int, int]] = DEFAULT_STAGES, **kwargs) -> list[NeedleStage]:
    """:class:`NeedleStage` for each ``(num_facts, num_segments)``; ``kwargs`` go to every stage.

    Example:
        >>> [s.key for s in needle_stages([(1, 1), (4, 16)])]
        ['K1xM1', 'K4xM16']
    """
    return [NeedleStage(k, m, **kwargs) for k, m in stages]


def open_gate_share(model, config: NeedleConfig, *, num_samples: int = 16, seed: int = 54321,
                    text: TextStream | None = None, after: int = 0) -> float:
    """Share of distractor segments at which some layer's write gate opens (``beta > 0`` for any
    memory token), over ``num_samples`` fixed samples of ``config``: how much a hard-gated memory
    leaks. A gated memory whose gate opens on distractors grows with the input's length and fades
    (docs/results/length.md); this sees it on inputs far shorter than those where exact match drops.

    ``after``: count only the distractor segments from this index on (0-based). The first segments
    of a sample are written more and their number does not grow with the length; the segments
    beyond the training length are the ones whose writes add up.

    Example:
        >>> from armt.training.capacity import CapacityModelSpec
        >>> cfg = NeedleConfig(num_facts=1, num_segments=8)
        >>> spec = CapacityModelSpec(layers=1, hidden=32, heads=2, intermediate=64, options=(("write_gate", "hard"),))
        >>> 0.0 <= open_gate_share(spec.build(cfg), cfg, num_samples=2) <= 1.0
        True
    """
    if model.config.memory != "associative" or model.config.write_gate != "hard":
        raise ValueError("open_gate_share needs an associative memory with write_gate='hard' (only that gate "
                         "shuts exactly).")
    if not 0 <= after < config.num_segments:
        raise ValueError(f"after={after} must lie in [0, num_segments={config.num_segments}); count from a segment "
                         "the samples have.")
    batch = fixed_needle_batch(config, num_samples, seed, text)
    opened = torch.zeros(num_samples, config.num_segments, dtype=torch.bool)

    def on_gate(layer: int, segment: int, x: Tensor) -> None:
        if segment < config.num_segments:
            opened[:, segment] |= (fused.gate(x.detach(), "hard") > 0).flatten(1).any(1).cpu()

    training = model.training
    model.eval()
    try:
        with torch.no_grad(), watch_memory(model, on_gate=by_segment(on_gate)):
            model(batch["input_ids"].to(model.cell.memory_tokens.device), output_only_last_segment=True,
                  wavefront=False)
    finally:
        model.train(training)
    counted = batch["distractor_segments"].clone()
    counted[:, :after] = False
    if not counted.any():
        raise ValueError(f"no distractor segment from index {after} on in these samples; lower after or raise "
                         "num_segments.")
    return float(opened[counted].float().mean())
