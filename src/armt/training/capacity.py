"""Training and evaluating on the associative-retrieval capacity task (:mod:`armt.data.capacity`):
a curriculum over the number of pairs N that advances once exact match reaches a threshold,
under a wall-clock budget, and exact match by N far beyond what was trained.

This is a lean loop (plain AdamW, a fresh batch every step), not the Hugging Face Trainer: the
task is a benchmark whose per-step time is part of the result, and the ``armt train`` route
(``data.kind: capacity``) remains for runs that want checkpoints and TensorBoard.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor

from .. import families
from ..checks import check_positive_int
from ..config import ARMTConfig
from ..data.capacity import VARIANTS, CapacityConfig, CapacityDataset, capacity_batch
from ..model import ARMTForCausalLM
from .write_penalty import PENALTY_TARGETS, WritePenalty, check_penalty_shape

MODEL_KINDS = ("armt", "rmt", "none")


@dataclass(frozen=True)
class CapacityModelSpec:
    """The benchmark's model: a tiny random GPT-NeoX (4 layers, width 128, 4 heads, MLP 512)
    with 4 memory tokens and ``d_mem`` 32, segments of one pair (4 tokens).

    Args:
        kind: ``armt`` (associative memory), ``rmt`` (memory tokens only, the RMT baseline) or
            ``none`` (no memory: each segment sees only itself; the control).
        wavefront: run ARMT's segments along the diagonals in training too (GPT-NeoX here has
            no dropout; see :mod:`armt.wavefront`); the same numbers, fewer operations.
        options: further :class:`armt.ARMTConfig` fields as ``(name, value)`` pairs, e.g.
            ``(("write_gate", "hard"),)`` (an error names any unknown one).
    """

    kind: str = "armt"
    layers: int = 4
    hidden: int = 128
    heads: int = 4
    intermediate: int = 512
    num_mem_tokens: int = 4
    d_mem: int = 32
    seed: int = 0
    wavefront: bool = False
    options: tuple[tuple[str, Any], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "options", tuple(tuple(o) for o in self.options))
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"kind={self.kind!r} is unknown; use one of {MODEL_KINDS}.")
        if self.wavefront and self.kind != "armt":
            raise ValueError(f"wavefront=True needs kind='armt' (the associative memory), not {self.kind!r}.")

    def build(self, task: CapacityConfig | None = None) -> ARMTForCausalLM:
        """A fresh model for ``task``'s vocabulary and segment size.

        Example:
            >>> model = CapacityModelSpec(kind="rmt", layers=1, hidden=32, heads=2, intermediate=64).build()
            >>> model.config.memory, model.config.segment_size
            ('tokens', 4)
        """
        from ..tiny import tiny_base_model

        task = task or CapacityConfig(num_pairs=1)
        base = tiny_base_model(families.CAPACITY_TINY, layers=self.layers, hidden=self.hidden, heads=self.heads,
                               intermediate=self.intermediate, vocab=task.vocab_size, max_positions=64,
                               seed=self.seed)
        # only the query segment is scored: the other segments skip the head and the loss
        config = ARMTConfig(num_mem_tokens=self.num_mem_tokens, d_mem=self.d_mem, segment_size=task.segment_size,
                            memory={"armt": "associative", "rmt": "tokens", "none": "none"}[self.kind],
                            last_segment_loss_only=True,
                            wavefront=self.wavefront, **dict(self.options))
        torch.manual_seed(self.seed)
        return ARMTForCausalLM(base, config)


@dataclass(frozen=True)
class CapacityRecipe:
    """How to train on the capacity task.

    Args:
        curriculum: the numbers of pairs N, in order; a stage ends when exact match on fresh
            evaluation samples reaches ``advance_at`` (or its step limit is spent).
        advance_at: exact match that ends a stage.
        time_budget_s: wall-clock limit of the whole training (evaluations included).
        max_steps_per_stage: step limit of one stage (``None``: only the time budget).
        max_steps: step limit of the whole training (``None``: only the time budget). A step
            budget gives the same run on a loaded or a faster machine; a time budget does not.
        batch_size, learning_rate, warmup_steps, weight_decay, max_grad_norm: the optimiser
            (AdamW, linear warm-up then constant; the curriculum's length is not known ahead).
        eval_every: steps between evaluations; eval_samples: samples per evaluation.
        variant: ``remember`` or ``rewrite``.
        seed: draws of the training batches (the model's seed is in the model spec).
        write_penalty: add this times the mean write strength ``beta`` (over the layers, segments
            and memory tokens of a batch) to the loss: the model then writes only what the task
            needs. With ``ARMTConfig(write_gate="hard")`` unneeded writes reach exactly 0.
            Models without an associative memory have no writes to penalise. A stage whose
            ``penalise_writes`` is False (a needle stage with no distractors, where every write
            is needed) trains without it.
        write_margin: with ``ARMTConfig(write_gate="hard")``, the penalty counts a write as open
            until its gate input is ``4 * write_margin`` below the point where the gate shuts (it
            penalises ``clip(x / 4 + 1/2 + write_margin, 0, 1 + write_margin)``; the model still
            writes with ``clip(x / 4 + 1/2, 0, 1)``). Without a margin, penalised gates settle just
            at the edge, where a slightly different input opens them a little again. Each
            evaluation record gets ``write_open``, the share of writes with ``beta > 0``.
        write_penalty_on: ``"all"`` writes pay the penalty, or only ``"distractors"``: the writes
            of segments that hold nothing the task needs, which a stage's batches name in
            ``distractor_segments`` (the needle task's do). Fact writes are then free.
        write_penalty_shape: with the hard gate, ``"clipped"`` (flat past the fully open point,
            like the gate) or ``"linear"`` (keeps rising there, so a gate stuck fully open, which
            gets no gradient from the task, is pulled back):
            :class:`armt.training.write_penalty.WritePenalty`'s ``shape``.
        hold_last: once the last stage reaches ``advance_at``, keep training on it until the time
            budget (or its step limit) is spent instead of stopping there. The evaluations go on
            being logged; the stage counts as passed.
        keep_best: with ``hold_last``, end with the weights of the held stage's best evaluation
            (the latest of equal ones) instead of the last step's: a late collapse of the held
            stage then does not reach the saved model. The stage record gets ``kept_step``.
        leak_stop: with ``hold_last``, measure at every evaluation of the held stage how much the
            write gate leaks (the stage's ``leak(model, leak_segments, leak_samples)``: for a
            needle stage, the share of distractor segments beyond the stage's length, in inputs of
            ``leak_segments`` segments, where a hard gate opens; recorded as ``leak``), and end the
            stage at the first passing evaluation whose leak is at most this. With ``keep_best``
            the kept weights are those of the passing evaluation with the least leak (then the best
            exact match, then the latest); exact match at the training length does not tell which model holds at
            1,000 times it, the leak does (docs/results/length.md).
        leak_segments, leak_samples: the inputs the leak is measured on.
    """

    curriculum: tuple[int, ...] = (1, 2, 4, 8, 16, 32)
    advance_at: float = 0.95
    time_budget_s: float = 1800.0
    max_steps_per_stage: int | None = None
    max_steps: int | None = None
    batch_size: int = 64
    learning_rate: float = 1e-3
    warmup_steps: int = 100
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0
    eval_every: int = 50
    eval_samples: int = 256
    variant: str = "remember"
    seed: int = 0
    write_penalty: float = 0.0
    write_margin: float = 0.0
    write_penalty_on: str = "all"
    write_penalty_shape: str = "clipped"
    hold_last: bool = False
    keep_best: bool = False
    leak_stop: float | None = None
    leak_segments: int = 64
    leak_samples: int = 32

    def __post_init__(self) -> None:
        if self.leak_stop is not None:
            if not self.hold_last:
                raise ValueError("leak_stop ends the held last stage; set hold_last=True as well.")
            if not 0 <= self.leak_stop <= 1:
                raise ValueError(f"leak_stop is a share of segments in [0, 1], got {self.leak_stop!r}.")
        for name in ("leak_segments", "leak_samples"):
            check_positive_int(self, name, "Use a positive number.")
        if self.keep_best and not self.hold_last:
            raise ValueError("keep_best picks among the evaluations of the held last stage; set hold_last=True "
                             "as well (without it every stage ends at its first passing evaluation).")
        if not self.write_margin >= 0:
            raise ValueError(f"write_margin must be >= 0, got {self.write_margin!r}.")
        if not self.write_penalty >= 0:
            raise ValueError(f"write_penalty must be >= 0, got {self.write_penalty!r}.")
        if self.write_penalty_on not in PENALTY_TARGETS:
            raise ValueError(f"write_penalty_on={self.write_penalty_on!r}: use one of {PENALTY_TARGETS}.")
        check_penalty_shape(self.write_penalty_shape)
        if not self.curriculum or any(isinstance(n, bool) or not isinstance(n, int) or n < 1
                                      for n in self.curriculum):
            raise ValueError(f"curriculum must be a non-empty list of pair counts >= 1, got {self.curriculum!r}.")
        object.__setattr__(self, "curriculum", tuple(self.curriculum))
        if self.max_steps is not None:
            check_positive_int(self, "max_steps", "Use a number of optimizer steps, or None.")
        for name in ("batch_size", "eval_every", "eval_samples"):
            check_positive_int(self, name, "Use a positive number.")
        if self.variant not in VARIANTS:
            raise ValueError(f"variant={self.variant!r} is unknown; use one of {VARIANTS}.")
        if not self.time_budget_s > 0:
            raise ValueError(f"time_budget_s must be > 0 seconds, got {self.time_budget_s!r}.")


@dataclass
class CapacityRun:
    """What :func:`train_capacity` did: one record per evaluation and one per stage."""

    evaluations: list[dict] = field(default_factory=list)
    stages: list[dict] = field(default_factory=list)
    steps: int = 0
    seconds: float = 0.0
    step_seconds: dict[int | str, float] = field(default_factory=dict)

    @property
    def reached(self) -> int | None:
        """The largest N whose stage ended at the threshold (``None`` if none did)."""
        done = [s["num_pairs"] for s in self.stages if s["passed"] and "num_pairs" in s]
        return max(done) if done else None

    def to_dict(self) -> dict:
        return asdict(self) | {"reached": self.reached}


def answer_logits(logits: Tensor, answer_start: int, value_len: int) -> Tensor:
    """The logits that predict the answer: positions ``answer_start - 1 ..`` (next-token)."""
    return logits[:, answer_start - 1:answer_start - 1 + value_len]


@torch.no_grad()
def evaluate_capacity(model: ARMTForCausalLM, num_pairs: Sequence[int], *, num_samples: int = 256,
                      variant: str = "remember", seed: int = 1, batch_size: int = 256,
                      wipe_memory: bool = False) -> dict[int, float]:
    """Exact match (every value symbol right) by N on fixed samples (seed ``seed``).

    ``wipe_memory=True`` is the memory-off control of the same weights: the query segment runs
    with an empty memory, so any answer above chance must have come through the memory.

    Example:
        >>> model = CapacityModelSpec(layers=1, hidden=32, heads=2, intermediate=64).build()
        >>> scores = evaluate_capacity(model, [1, 2], num_samples=8)
        >>> sorted(scores), all(0 <= v <= 1 for v in scores.values())
        ([1, 2], True)
    """
    was_training = model.training
    model.eval()
    out: dict[int, float] = {}
    try:
        for n in num_pairs:
            task = CapacityConfig(num_pairs=int(n), variant=variant, num_samples=num_samples, seed=seed)
            data = CapacityDataset(task).batch()
            start = int(data["answer_start"][0])
            correct = 0
            for i in range(0, num_samples, batch_size):
                ids = data["input_ids"][i:i + batch_size].to(model.cell.memory_tokens.device)
                if wipe_memory:
                    ids = ids[:, -task.segment_size:]
                logits = model(ids, output_only_last_segment=True).logits
                # the answer's index within the returned (last-segment) logits
                seg_start = start - (task.length - logits.shape[1])
                pred = answer_logits(logits, seg_start, task.value_len).argmax(-1).cpu()
                if pred.shape[1] != task.value_len:
                    raise RuntimeError(f"answer logits have shape {tuple(pred.shape)}; the query segment "
                                       "was not returned whole")
                target = data["input_ids"][i:i + batch_size, start:start + task.value_len]
                correct += int((pred == target).all(dim=1).sum())
            out[int(n)] = correct / num_samples
    finally:
        model.train(was_training)
    return out


class CapacityStage:
    """One stage of the capacity curriculum: ``num_pairs`` pairs (see :func:`train_stages`)."""

    def __init__(self, num_pairs: int, variant: str = "remember"):
        self.task = CapacityConfig(num_pairs=num_pairs, variant=variant)
        self.key = num_pairs
        self.fields = {"num_pairs": num_pairs}

    def batch(self, batch_size: int, generator: torch.Generator) -> dict[str, Tensor]:
        return capacity_batch(self.task, batch_size, generator)

    def evaluate(self, model: ARMTForCausalLM, num_samples: int, seed: int) -> float:
        n = self.task.num_pairs
        return evaluate_capacity(model, [n], num_samples=num_samples, variant=self.task.variant, seed=seed)[n]


def train_capacity(model: ARMTForCausalLM, recipe: CapacityRecipe, *,
                   log: Callable[[dict], None] | None = None, log_path: str | None = None) -> CapacityRun:
    """Train ``model`` through ``recipe``'s curriculum; returns the :class:`CapacityRun`.

    Every evaluation (``eval_every`` steps) is passed to ``log`` and, with ``log_path``,
    appended to that JSON-lines file. The loss and exact match are on the answer only.

    Example:
        >>> model = CapacityModelSpec(layers=1, hidden=32, heads=2, intermediate=64).build()
        >>> run = train_capacity(model, CapacityRecipe(curriculum=(1,), max_steps_per_stage=4,
        ...                                            eval_every=2, eval_samples=8))
        >>> run.steps, [e["step"] for e in run.evaluations]
        (4, [2, 4])
    """
    stages = [CapacityStage(n, recipe.variant) for n in recipe.curriculum]
    return train_stages(model, stages, recipe, log=log, log_path=log_path)


def train_stages(model: ARMTForCausalLM, stages: Sequence, recipe: CapacityRecipe, *,
                 log: Callable[[dict], None] | None = None, log_path: str | None = None) -> CapacityRun:
    """Train ``model`` through ``stages`` in order, each until its exact match on fresh samples
    reaches ``recipe.advance_at`` (then the next) or its step limit or the time budget is spent
    (then training stops). The optimiser, budget and evaluation settings come from ``recipe``
    (its ``curriculum`` and ``variant`` are the stages' business here).

    A stage is any object with ``key`` (names it in :attr:`CapacityRun.step_seconds`),
    ``fields`` (a dict merged into its log records), ``batch(batch_size, generator)`` (a dict
    with ``input_ids`` and ``labels``, only the answer labelled) and
    ``evaluate(model, num_samples, seed)`` (exact match), and optionally ``penalise_writes``
    (see :attr:`CapacityRecipe.write_penalty`): :class:`CapacityStage`, or
    :class:`armt.evaluation.needle.NeedleStage`.
    """
    stages = list(stages)
    if recipe.leak_stop is not None and not callable(getattr(stages[-1], "leak", None)):
        raise ValueError("leak_stop needs a last stage that measures its leak (a needle stage, "
                         "armt.evaluation.needle.NeedleStage); this one has no leak(model, ...).")
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.dim() < 2 or "norm" in name or "memory_tokens" in name else decay).append(p)
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=recipe.learning_rate)
    warm = max(1, recipe.warmup_steps)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm))
    gen = torch.Generator().manual_seed(recipe.seed)
    device = model.cell.memory_tokens.device
    run = CapacityRun()
    start_time = time.perf_counter()
    sink = open(log_path, "a") if log_path else None

    def emit(record: dict) -> None:
        if log is not None:
            log(record)
        if sink is not None:
            sink.write(json.dumps(record) + "\n")
            sink.flush()

    penalty = WritePenalty.for_model(model, recipe.write_penalty, recipe.write_margin, recipe.write_penalty_on,
                                     recipe.write_penalty_shape)
    try:
        model.train()
        for index, stage in enumerate(stages):
            hold = recipe.hold_last and index == len(stages) - 1
            stage_start, stage_steps, passed, best = time.perf_counter(), 0, False, 0.0
            kept: tuple[int, dict, tuple] | None = None
            step_time, losses, betas, opens = [], [], [], []
            while True:
                if recipe.max_steps_per_stage is not None and stage_steps >= recipe.max_steps_per_stage:
                    break
                if time.perf_counter() - start_time >= recipe.time_budget_s:
                    break
                if recipe.max_steps is not None and run.steps >= recipe.max_steps:
                    break
                batch = stage.batch(recipe.batch_size, gen)
                t0 = time.perf_counter()
                watched = penalty is not None and getattr(stage, "penalise_writes", True)
                if watched and penalty.on == "distractors":
                    if "distractor_segments" not in batch:
                        raise ValueError("write_penalty_on='distractors' needs batches with 'distractor_segments' "
                                         f"(the needle task's have them); stage {stage.key!r} gives none.")
                    penalty.only_segments(batch["distractor_segments"].to(device))
                with penalty.watch(model) if watched else nullcontext():
                    # ARMTConfig.wavefront covers passes without gradients; training asks per call
                    out = model(batch["input_ids"].to(device), labels=batch["labels"].to(device),
                                output_only_last_segment=True, wavefront=model.config.wavefront or None)
                loss = out.loss
                strength = penalty.strength() if watched else None
                if strength is not None:
                    loss = loss + penalty.weight * strength
                    betas.append(strength.item())
                    share = penalty.open_share()
                    if share is not None:
                        opens.append(share)
                loss.backward()
                if recipe.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), recipe.max_grad_norm)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
                step_time.append(time.perf_counter() - t0)
                losses.append(out.loss.detach().item())
                stage_steps += 1
                run.steps += 1
                if stage_steps % recipe.eval_every == 0:
                    em = stage.evaluate(model, recipe.eval_samples, recipe.seed + 1_000 + run.steps)
                    best = max(best, em)
                    record = {"step": run.steps, **stage.fields, "stage_step": stage_steps,
                              "loss": sum(losses) / len(losses), "exact_match": em,
                              "step_s": sorted(step_time)[len(step_time) // 2],
                              "elapsed_s": round(time.perf_counter() - start_time, 1)}
                    if betas:
                        record["write_strength"] = sum(betas) / len(betas)
                        if opens:
                            record["write_open"] = sum(opens) / len(opens)
                    losses, betas, opens = [], [], []
                    passing = em >= recipe.advance_at
                    leak = None
                    if hold and recipe.leak_stop is not None:
                        leak = record["leak"] = stage_leak(stage, model, recipe)
                    run.evaluations.append(record)
                    emit(record)
                    if hold and recipe.keep_best:
                        # passing evaluations outrank failing ones; among them the least leak (then,
                        # or without a leak measure, the best exact match) wins, the latest of equals
                        rank = (passing, -leak if leak is not None and passing else 0.0, em)
                        if kept is None or rank >= kept[2]:
                            # a copy, not a reference: the optimiser updates the tensors in place
                            kept = (run.steps, {k: v.detach().clone() for k, v in model.state_dict().items()}, rank)
                    if passing:
                        passed = True
                        if not hold or (leak is not None and leak <= recipe.leak_stop):
                            break
            if step_time:
                run.step_seconds[stage.key] = sorted(step_time)[len(step_time) // 2]
            done = {**stage.fields, "steps": stage_steps, "passed": passed, "best_exact_match": best,
                    "seconds": round(time.perf_counter() - stage_start, 1)}
            if kept is not None:
                model.load_state_dict(kept[1])
                done["kept_step"] = kept[0]
                if recipe.leak_stop is not None and kept[2][0]:
                    done["kept_leak"] = -kept[2][1]
            run.stages.append(done)
            emit({"stage_done": done})
            if not passed:
                break
    finally:
        run.seconds = time.perf_counter() - start_time
        if sink is not None:
            sink.close()
    return run


def stage_leak(stage, model: ARMTForCausalLM, recipe: CapacityRecipe) -> float:
    """The leak of ``model`` as ``stage`` measures it, on ``recipe``'s leak inputs."""
    return float(stage.leak(model, recipe.leak_segments, recipe.leak_samples))


def time_training_step(model: ARMTForCausalLM, num_pairs: int = 16, *, batch_size: int = 32, repeats: int = 5,
                       variant: str = "remember") -> float:
    """Median seconds of one training step (forward, backward, AdamW) at ``num_pairs``, on a
    copy of ``model`` (its weights are left alone).

    Example:
        >>> model = CapacityModelSpec(layers=1, hidden=32, heads=2, intermediate=64).build()
        >>> time_training_step(model, 2, batch_size=4, repeats=2) > 0
        True
    """
    import copy

    net = copy.deepcopy(model).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(0)
    task = CapacityConfig(num_pairs=num_pairs, variant=variant)
    device = net.cell.memory_tokens.device
    times = []
    for i in range(repeats + 1):  # the first step warms up
        batch = capacity_batch(task, batch_size, gen)
        t0 = time.perf_counter()
        net(batch["input_ids"].to(device), labels=batch["labels"].to(device),
            output_only_last_segment=True, wavefront=net.config.wavefront or None).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def chance_level(task: CapacityConfig) -> float:
    """Exact match of a uniform guess of the value."""
    return 1.0 / math.pow(task.num_symbols, task.value_len)
