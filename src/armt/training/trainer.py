"""The Hugging Face ``Trainer`` taught three things about ARMT: checkpoints are ARMT
``save_pretrained`` directories, the loss is weighted by scored pairs across gradient
accumulation and processes, and evaluation computes the loss over the whole set, the loss of
every segment, exact-match accuracy of generated answers and any custom metric; optionally a
penalty on the memory's write strength joins the training loss."""

from __future__ import annotations

import importlib
import os
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import Trainer, TrainerCallback

from ..adapters import has_adapters
from ..saving import load_into
from .write_penalty import WritePenalty

MODEL_KEYS = ("input_ids", "attention_mask", "labels", "labels_mask")


@dataclass
class SegmentCollator:
    """Pads a list of items on the right (ids with ``pad_token_id``, ``attention_mask`` 0,
    labels -100), so every item's segments are cut exactly as if it ran alone, then applies
    the batch transforms. Keys other than the model's inputs are dropped."""

    pad_token_id: int = 0
    transforms: Sequence[Callable[[dict], dict]] = ()

    def __call__(self, items: list[dict]) -> dict:
        longest = max(len(item["input_ids"]) for item in items)
        ragged = any(len(item["input_ids"]) != longest for item in items)
        batch: dict[str, torch.Tensor] = {}
        for key, fill in (("input_ids", self.pad_token_id), ("labels", -100), ("labels_mask", False),
                          ("attention_mask", 0)):
            if not any(key in item for item in items):
                continue
            rows = []
            for item in items:
                row = torch.as_tensor(item[key])
                rows.append(torch.cat([row, row.new_full((longest - len(row),), fill)]))
            batch[key] = torch.stack(rows)
        if ragged and "attention_mask" not in batch:
            batch["attention_mask"] = torch.stack([
                torch.cat([torch.ones(len(i["input_ids"]), dtype=torch.long),
                           torch.zeros(longest - len(i["input_ids"]), dtype=torch.long)]) for i in items])
        for transform in self.transforms:
            batch = transform(batch)
        return batch


@dataclass
class EvalRecords:
    """What a custom metric sees: every evaluated item with its generated answer.

    Attributes:
        items: the raw dataset items.
        predictions: greedy answer ids per item (``None`` where the item has no answer). Read
            from the loss pass when the trainer can (see ``ARMTTrainer``): then a wrong answer
            is the argmax after each reference token, which may differ from a free continuation
            after its first wrong token. Custom metrics always get ``generate``'s answers.
        targets: the reference answer ids per item.
        loss: token-weighted evaluation loss.
        segment_losses: mean within-segment loss per segment index.
    """

    items: list[dict] = field(default_factory=list)
    predictions: list[list[int] | None] = field(default_factory=list)
    targets: list[list[int] | None] = field(default_factory=list)
    loss: float = float("nan")
    segment_losses: list[float] = field(default_factory=list)


def import_object(spec: str):
    """``"package.module:name"`` -> the object (custom metrics and batch transforms)."""
    module, _, name = spec.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot import {spec!r}: {err}. Write it as 'package.module:function'.") from err


class StopAtMetric(TrainerCallback):
    """Ends training once an evaluation metric reaches a value (a curriculum stage's goal)."""

    def __init__(self, metric: str, value: float, greater_is_better: bool = True):
        self.metric, self.value, self.greater = metric, value, greater_is_better
        self.reached = False

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        got = (metrics or {}).get(self.metric)
        if got is not None and (got >= self.value if self.greater else got <= self.value):
            self.reached = True
            control.should_training_stop = True
        return control


class ARMTTrainer(Trainer):
    """``transformers.Trainer`` for :class:`armt.ARMTForCausalLM`.

    Args:
        metrics: built-in evaluation metrics; ``"exact_match"`` checks the greedy answer of
            every item that has ``answer_start`` against the reference (read from the loss pass
            with an eval batch size of 1, else generated).
        metric_fns: callables ``(EvalRecords) -> dict`` computed over the whole eval set.
        num_segments: shown in the logs (the curriculum stage's length).
        save_base: write the base weights into checkpoints (needed when they train).
        generation_kwargs: extra ``generate`` arguments for exact match.
        answers_from_loss: read exact match's answers from the loss pass where that is exact
            (see above); ``False`` always generates them (e.g. to time the two ways).
        tokenizer: saved with every checkpoint (not handed to the Trainer, whose special-token
            alignment expects a transformers model config).
        write_penalty: a :class:`armt.training.write_penalty.WritePenalty` added to the training
            loss (not to the evaluation loss); the logs get ``write_strength`` and, with the hard
            gate, ``write_open`` (the share of writes with ``beta > 0``). The logged ``loss``
            includes the penalty.

    Everything else as ``transformers.Trainer``.
    """

    def __init__(self, *args, metrics: Sequence[str] = (), metric_fns: Sequence[Callable] = (),
                 num_segments: int | None = None, save_base: bool = True,
                 generation_kwargs: dict | None = None, tokenizer=None, answers_from_loss: bool = True,
                 write_penalty: WritePenalty | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.write_penalty = write_penalty
        self._write_logs: dict[str, list[torch.Tensor]] = {"write_strength": [], "write_open": []}
        self.armt_tokenizer = tokenizer
        self.armt_metrics = tuple(metrics)
        self.metric_fns = tuple(metric_fns)
        self.num_segments = num_segments
        self.save_base = save_base
        self.generation_kwargs = dict(generation_kwargs or {})
        self.answers_from_loss = answers_from_loss
        self._tokens_since_log = 0
        self._last_log_time = time.perf_counter()

    @property
    def armt_model(self):
        return self.accelerator.unwrap_model(self.model)

    # loss weighting ---------------------------------------------------------------------
    def _get_num_items_in_batch(self, batch_samples, device):
        # count exactly the pairs the model scores (labels shifted, labels_mask, last segment)
        model = self.armt_model
        count = sum(model.count_loss_pairs(b["labels"], b.get("labels_mask")) for b in batch_samples)
        count = torch.as_tensor(count, device=device)
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            count = self.accelerator.gather(count).sum()
        return count

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        # the loss is the same, but earlier segments' logits (and, with bptt_segments, their
        # graphs) are not kept: training memory stays flat in the number of segments
        inputs = {**inputs, "output_only_last_segment": True}
        penalty = self.write_penalty if model.training else None
        with penalty.watch(self.armt_model) if penalty is not None else nullcontext():
            loss, outputs = super().compute_loss(model, inputs, return_outputs=True,
                                                 num_items_in_batch=num_items_in_batch)
        strength = penalty.strength() if penalty is not None else None
        if strength is not None:
            term = penalty.weight * strength
            if num_items_in_batch is not None and self.model_accepts_loss_kwargs:
                # the task loss is already a share of the whole accumulated batch; the penalty,
                # a mean per micro-batch, must be too (training_step divides neither)
                term = term / getattr(self, "current_gradient_accumulation_steps", 1)
            loss = loss + term
            for key, value in penalty.stats().items():  # read out at the next log, not every step
                self._write_logs[key].append(value)
        if not bool(torch.isfinite(loss.detach()).all()):
            memory = outputs["memory"] if isinstance(outputs, dict) else getattr(outputs, "memory", None)
            layers = [] if memory is None else [i for i, m in enumerate(memory.layers)
                                                if m.A.numel() and not bool(torch.isfinite(m.A).all())]
            raise FloatingPointError(
                f"training loss is {float(loss)} at step {self.state.global_step}: the memory state of layers "
                f"{layers or 'none'} is non-finite after the last segment. Lower the learning rate, train in "
                "float32 or keep the memory in float32 (armt.memory_dtype: float32)."
            )
        return (loss, outputs) if return_outputs else loss

    def training_step(self, model, inputs, num_items_in_batch=None):
        self._tokens_since_log += int(inputs["input_ids"].numel())
        return super().training_step(model, inputs, num_items_in_batch)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "loss" in logs:  # a training log: add throughput and the curriculum's length
            now = time.perf_counter()
            tokens = self._tokens_since_log * self.args.world_size
            logs["tokens_per_second"] = tokens / max(now - self._last_log_time, 1e-9)
            self._tokens_since_log, self._last_log_time = 0, now
            for key, values in self._write_logs.items():
                if values:
                    logs[key] = torch.stack(values).mean().item()
                    values.clear()
        if self.num_segments is not None:
            logs["num_segments"] = self.num_segments
        super().log(logs, start_time)

    # checkpoints ------------------------------------------------------------------------
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        model = self.armt_model
        adapters = has_adapters(model.base_model)
        model.save_pretrained(output_dir, save_base=self.save_base and not adapters, overwrite=True)
        if self.armt_tokenizer is not None:
            self.armt_tokenizer.save_pretrained(output_dir)
        torch.save(self.args, os.path.join(output_dir, "training_args.bin"))

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        load_into(self.armt_model if model is None else model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        load_into(self.armt_model, self.state.best_model_checkpoint)

    # evaluation -------------------------------------------------------------------------
    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        if dataset is None:
            raise ValueError("evaluate() needs an eval_dataset (pass one to the trainer or to evaluate).")
        start = time.perf_counter()
        records = self.evaluation_records(dataset)
        metrics: dict[str, Any] = {f"{metric_key_prefix}_loss": records.loss}
        for i, value in enumerate(records.segment_losses):
            metrics[f"{metric_key_prefix}_segment_{i + 1}_loss"] = value
        if "exact_match" in self.armt_metrics:
            scored = [(p, t) for p, t in zip(records.predictions, records.targets) if t is not None]
            if scored:
                metrics[f"{metric_key_prefix}_exact_match"] = sum(p == t for p, t in scored) / len(scored)
        for fn in self.metric_fns:
            for key, value in fn(records).items():
                metrics[key if key.startswith(metric_key_prefix + "_") else f"{metric_key_prefix}_{key}"] = value
        metrics[f"{metric_key_prefix}_runtime"] = time.perf_counter() - start
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    @torch.no_grad()
    def evaluation_records(self, dataset) -> EvalRecords:
        """Loss, per-segment loss and generated answers over the whole ``dataset`` (every
        process evaluates all of it: eval sets are small and the numbers then agree)."""
        model = self.armt_model
        was_training = model.training
        model.eval()
        device = next(model.parameters()).device
        collate = self.data_collator
        batch_size = self.args.per_device_eval_batch_size
        records = EvalRecords()
        loss_sum, loss_count = 0.0, 0
        seg_sum: list[float] = []
        seg_n: list[int] = []
        wants_answers = "exact_match" in self.armt_metrics or bool(self.metric_fns)
        forced = wants_answers and self._forced_answers_ok(model, collate)
        for start in range(0, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = {k: v.to(device) for k, v in collate(items).items() if k in MODEL_KEYS}
            out = model(**batch, output_only_last_segment=True)
            n = int(out.num_loss_tokens)
            loss_sum += float(out.loss) * n
            loss_count += n
            for i, value in enumerate(out.segment_losses.tolist()):
                if i >= len(seg_sum):
                    seg_sum.append(0.0)
                    seg_n.append(0)
                if value == value:  # NaN where a segment scored nothing
                    seg_sum[i] += value * len(items)
                    seg_n[i] += len(items)
            records.items.extend(items)
            for item in items:
                prediction = target = None
                if wants_answers and "answer_start" in item:
                    answer = self._forced_answer(item, out.logits) if forced and len(items) == 1 else None
                    prediction, target = answer or self._answer(model, item, device)
                records.predictions.append(prediction)
                records.targets.append(target)
        records.loss = loss_sum / max(loss_count, 1)
        records.segment_losses = [s / n if n else float("nan") for s, n in zip(seg_sum, seg_n)]
        model.train(was_training)
        return records

    # Greedy decoding writes the open segment to memory once it is full, so with left alignment
    # it equals full forward passes over the growing text (tests/test_generation.py): the answer
    # is the target exactly when the loss forward's argmax is the target at every answer
    # position. Reading that argmax saves reading the context a second time in ``generate``;
    # custom metrics, batch transforms and extra generation arguments still get ``generate``.
    def _forced_answers_ok(self, model, collate) -> bool:
        return (self.answers_from_loss and not self.metric_fns and not getattr(collate, "transforms", None)
                and model.config.segment_alignment == "left"
                and set(self.generation_kwargs) <= {"eos_token_id", "pad_token_id"})

    @staticmethod
    def _answer_span(item) -> tuple[torch.Tensor, int, int]:
        """``(ids, start, end)``: the answer is ``ids[start:end]``, up to the last scored label."""
        ids = torch.as_tensor(item["input_ids"])
        scored = (torch.as_tensor(item["labels"]) != -100).nonzero().flatten()
        end = int(scored.max()) + 1 if len(scored) else len(ids)
        return ids, int(item["answer_start"]), end

    def _forced_answer(self, item, logits):
        """``(argmax ids, target ids)`` over the answer of a single-item batch from its last
        segment's logits, or ``None`` when they do not cover the answer (it starts a segment)."""
        mask = item.get("attention_mask")
        if mask is not None and not bool(torch.as_tensor(mask).all()):
            return None
        ids, start, end = self._answer_span(item)
        first = len(ids) - logits.shape[1]  # the position of the logits' first row
        if start - 1 < first or end <= start:
            return None
        # logits at t score token t + 1
        predicted = logits[0, start - 1 - first:end - 1 - first].argmax(-1)
        return predicted.tolist(), ids[start:end].tolist()

    def _answer(self, model, item, device):
        ids, start, end = self._answer_span(item)
        target = ids[start:end].tolist()
        kwargs = {"do_sample": False, "pad_token_id": 0, **self.generation_kwargs}
        out = model.generate(ids[:start].unsqueeze(0).to(device), max_new_tokens=len(target), **kwargs)
        return out[0, start:].tolist(), target
