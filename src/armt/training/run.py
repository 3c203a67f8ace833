"""``armt train``: build the model and data of a :class:`RunConfig` and run its curriculum,
each stage a Hugging Face ``Trainer`` run that starts from the previous stage's best model.
The run directory records finished stages, so an interrupted curriculum resumes at the stage
and step where it stopped."""

from __future__ import annotations

import dataclasses
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from ..model import ARMTForCausalLM
from .config import RunConfig, Stage
from .trainer import ARMTTrainer, SegmentCollator, StopAtMetric, import_object, load_model_dir

logger = logging.getLogger(__name__)
STATE_NAME = "curriculum_state.json"
CONFIG_NAME = "run_config.yaml"


def build_model(cfg: RunConfig) -> ARMTForCausalLM:
    """The base model of ``cfg.model`` (tiny, Hub name or local path; LoRA if asked) wrapped
    with ARMT; ``init_from`` loads a saved ARMT directory instead of fresh memory weights."""
    spec = cfg.model
    dtype = getattr(torch, spec.dtype)
    if spec.tiny is not None:
        from ..tiny import tiny_base_model

        tiny = dict(spec.tiny)
        base = tiny_base_model(tiny.pop("family", "gpt2"), **tiny, attn=spec.attn_implementation or "sdpa").to(dtype)
    elif spec.name_or_path is not None:
        from transformers import AutoModelForCausalLM

        kwargs = {"dtype": dtype}
        if spec.attn_implementation:
            kwargs["attn_implementation"] = spec.attn_implementation
        base = AutoModelForCausalLM.from_pretrained(spec.name_or_path, **kwargs)
    else:
        base = None
    if spec.init_from is not None:
        model = ARMTForCausalLM.from_pretrained(spec.init_from, base_model=base, is_trainable=True)
    else:
        if spec.lora:
            from peft import LoraConfig, get_peft_model

            base = get_peft_model(base, LoraConfig(**spec.lora))
        model = ARMTForCausalLM(base, dataclasses.replace(cfg.armt))
    if spec.freeze_base:
        model.freeze_base()
    return model


def _vocab_size(model: ARMTForCausalLM) -> int:
    return model.cell.runner.get_input_embeddings().weight.shape[0]


def dataset_factory(cfg: RunConfig, model: ARMTForCausalLM, tokenizer=None) -> Callable[[int, str], Dataset]:
    """``make(num_segments, split)`` for the configured data kind."""
    data = cfg.data
    segment = cfg.armt.segment_size
    if data.kind == "associative_retrieval":
        from ..data.retrieval import RetrievalConfig, RetrievalDataset

        vocab = _vocab_size(model)

        def make(num_segments: int, split: str) -> Dataset:
            n = data.num_train if split == "train" else data.num_eval
            # a different seed stream for evaluation, so no eval sample is a training sample
            seed = data.seed if split == "train" else data.seed + 7919
            return RetrievalDataset(RetrievalConfig(vocab_size=vocab, segment_size=segment, num_segments=num_segments,
                                                    num_samples=n, seed=seed, **data.options))

        return make
    if data.kind == "lm":
        from ..data.books import load_books
        from ..data.lm import LMWindowDataset, LMWindowsConfig, split_books

        options = dict(data.options)
        options.pop("tokenizer", None)
        options.pop("tokenizer_vocab", None)
        options.pop("tokenizer_train_chars", None)
        source = load_books(options.pop("source", None), seed=data.seed)
        held_out = options.pop("held_out_books", 1)
        train_titles, eval_titles = split_books(source, held_out)
        logger.info("language-modelling data: %s; held out: %s", source.description, eval_titles)
        cache: dict = {}

        def make(num_segments: int, split: str) -> Dataset:
            key = (num_segments, split)
            if key not in cache:
                titles = train_titles if split == "train" else eval_titles
                ds = LMWindowDataset.from_books(source, tokenizer, LMWindowsConfig(segment_size=segment,
                                                num_segments=num_segments, **options), books=titles)
                limit = data.num_train if split == "train" else data.num_eval
                cache[key] = torch.utils.data.Subset(ds, range(min(limit, len(ds))))
            return cache[key]

        return make
    if data.kind == "babilong":
        return babilong_factory(cfg, tokenizer)
    raise ValueError(f"data.kind={data.kind!r} is unknown.")


def babilong_factory(cfg, tokenizer) -> Callable[[int, str], Dataset]:
    """``make(num_segments, split)`` for ``data.kind: babilong``; ``data.options`` may set
    ``tasks`` (default qa1-qa5), ``babi`` (folder, ``builtin``), ``background`` (folder of
    books, dataset name, ``builtin``)."""
    from ..data.babilong_training import BabilongTrainingSet
    from ..evaluation.babilong_eval import open_sources

    if tokenizer is None:
        raise ValueError("data.kind=babilong needs a tokenizer: set data.options.tokenizer or model.name_or_path.")
    options = dict(cfg.data.options)
    tasks = options.pop("tasks", ["qa1", "qa2", "qa3", "qa4", "qa5"])
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    babi = options.pop("babi", "builtin")
    background = options.pop("background", None)
    for key in ("tokenizer", "tokenizer_vocab", "tokenizer_train_chars"):
        options.pop(key, None)
    if options:
        raise ValueError(f"unknown key data.options.{sorted(options)[0]} for babilong "
                         "(known: tasks, babi, background, tokenizer, tokenizer_vocab, tokenizer_train_chars).")
    cache: dict = {}

    def make(num_segments: int, split: str) -> Dataset:
        key = (num_segments, split)
        if key not in cache:
            sources = open_sources(babi, background, seed=cfg.data.seed, split="train" if split == "train" else "test")
            n = cfg.data.num_train if split == "train" else cfg.data.num_eval
            per_task = max(1, n // len(tasks))
            cache[key] = BabilongTrainingSet(tokenizer, tasks, per_task, num_segments, cfg.armt.segment_size,
                                             sources.background, sources.babi, split="train" if split == "train"
                                             else "test", seed=cfg.data.seed + (0 if split == "train" else 1))
        return cache[key]

    return make


def resolve_tokenizer(cfg: RunConfig, save_dir: Path):
    """The tokenizer a run needs (``None`` for associative retrieval): ``data.options.tokenizer``
    or the base model's, loaded by name; offline, a byte-level BPE trained on the training
    books (``data.options.tokenizer_vocab`` entries) and saved in the run. Returns
    ``(tokenizer, description)``."""
    if cfg.data.kind == "associative_retrieval":
        return None, "none (associative retrieval uses token ids directly)"
    from ..data.books import load_books
    from ..data.tokenizer import get_tokenizer

    options = cfg.data.options
    name = options.get("tokenizer") or cfg.model.name_or_path
    texts_source = options.get("source") if cfg.data.kind == "lm" else options.get("background")
    books = load_books(texts_source, seed=cfg.data.seed)

    def texts():
        # language modelling evaluates on held-out books: the tokenizer is not fitted on them either
        keep = None
        if cfg.data.kind == "lm":
            from ..data.lm import split_books

            keep = set(split_books(books, options.get("held_out_books", 1))[0])
        for book in books.books():
            if keep is None or book.title in keep:
                yield book.text

    return get_tokenizer(name, train_texts=texts(), vocab_size=int(options.get("tokenizer_vocab", 4096)),
                         save_dir=save_dir, max_train_chars=int(options.get("tokenizer_train_chars", 5_000_000)))


def _latest_checkpoint(directory: Path) -> str | None:
    found = [(int(m.group(1)), p) for p in directory.glob("checkpoint-*")
             if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))]
    return str(max(found)[1]) if found else None


@dataclass
class StageResult:
    stage: int
    num_segments: int
    best_dir: str
    best_metric: float | None
    steps: int
    stopped_at_goal: bool


def train(cfg: RunConfig, *, resume: bool = False, overwrite: bool = False, tokenizer=None,
          metric_fns: tuple = (), callbacks: tuple = ()) -> list[StageResult]:
    """Run the whole curriculum of ``cfg``; returns one :class:`StageResult` per stage.

    The run directory (``training.output_dir``) gets ``run_config.yaml`` (the resolved
    config), ``curriculum_state.json``, one ``stageN-Kseg/`` directory per stage (Trainer
    checkpoints, TensorBoard logs under ``runs/``, and ``best/``: a ``save_pretrained``
    directory) and ``best/``, the final model. ``resume=True`` continues an interrupted run
    (finished stages are skipped, the current one restarts from its last checkpoint with
    its optimizer, scheduler, data order and RNG state).
    """
    import os

    import yaml

    out = Path(cfg.training["output_dir"])
    state_file = out / STATE_NAME
    # under torchrun/accelerate every process runs this; only the first touches the run directory
    main_process = int(os.environ.get("RANK", "0")) == 0
    if not main_process:
        return _train_stages(cfg, out, resume=resume, tokenizer=tokenizer, metric_fns=metric_fns,
                             callbacks=callbacks, main_process=False)
    if out.exists() and any(out.iterdir()) and not (resume or overwrite):
        raise FileExistsError(
            f"{out} already holds a run; pass --resume to continue it or --overwrite to start again "
            "(or choose another training.output_dir)."
        )
    if overwrite and not resume and out.exists():
        import shutil

        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    resolved = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    if resume and (out / CONFIG_NAME).exists() and (out / CONFIG_NAME).read_text() != resolved:
        raise ValueError(f"--resume: {out / CONFIG_NAME} differs from this config; resume with the same config.")
    (out / CONFIG_NAME).write_text(resolved)
    return _train_stages(cfg, out, resume=resume, tokenizer=tokenizer, metric_fns=metric_fns,
                         callbacks=callbacks, main_process=True)


def _generation_kwargs(tokenizer) -> dict:
    if tokenizer is None or tokenizer.eos_token_id is None:
        return {}
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return {"eos_token_id": tokenizer.eos_token_id, "pad_token_id": pad}


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def _train_stages(cfg: RunConfig, out: Path, *, resume: bool, tokenizer, metric_fns, callbacks,
                  main_process: bool) -> list[StageResult]:
    from transformers import EarlyStoppingCallback, TrainingArguments

    state_file = out / STATE_NAME
    state = json.loads(state_file.read_text()) if resume and state_file.exists() else {"finished": []}

    if tokenizer is None:
        tokenizer, described = resolve_tokenizer(cfg, out / "tokenizer" if main_process else None)
        logger.warning("tokenizer: %s", described)
    if tokenizer is not None and cfg.model.tiny is not None:
        vocab = cfg.model.tiny.get("vocab")
        if vocab is None:
            cfg.model.tiny["vocab"] = len(tokenizer)
        elif vocab < len(tokenizer):
            raise ValueError(f"model.tiny.vocab={vocab} is smaller than the tokenizer ({len(tokenizer)} tokens); "
                             "leave it out to use the tokenizer's size.")
    model = build_model(cfg)
    make = dataset_factory(cfg, model, tokenizer)
    transforms = [import_object(s) for s in cfg.batch_transforms]
    fns = tuple(metric_fns) + tuple(import_object(s) for s in cfg.custom_metrics)
    pad = getattr(tokenizer, "pad_token_id", None) or 0
    training = dict(cfg.training)
    metric = training.get("metric_for_best_model")
    if metric and not metric.startswith("eval_"):
        metric = training["metric_for_best_model"] = "eval_" + metric
    results: list[StageResult] = []
    previous_best: str | None = None
    for i, stage in enumerate(cfg.stages):
        name = f"stage{i + 1}-{stage.num_segments}seg"
        stage_dir = out / name
        done = next((r for r in state["finished"] if r["stage"] == i + 1), None)
        if done is not None:
            results.append(StageResult(**done))
            previous_best = done["best_dir"]
            continue
        if previous_best is not None:
            load_model_dir(model, previous_best)  # each stage starts from the best of the last
        train_ds = _stage_dataset(make, stage, cfg.data.seed)
        eval_ds = make(stage.eval_segments or stage.num_segments, "eval")
        args = dict(training)
        args.update(output_dir=str(stage_dir), max_steps=stage.max_steps,
                    load_best_model_at_end=bool(metric), remove_unused_columns=False)
        args.setdefault("dataloader_pin_memory", torch.cuda.is_available())
        if stage.batch_size is not None:
            args["per_device_train_batch_size"] = stage.batch_size
        stage_callbacks = list(callbacks)
        goal = None
        if stage.stop_metric is not None:
            lower = any(word in stage.stop_metric for word in ("loss", "perplexity", "ppl"))
            goal = StopAtMetric(stage.stop_metric, stage.stop_value, greater_is_better=not lower)
            stage_callbacks.append(goal)
        if cfg.early_stopping_patience is not None:
            if not metric:
                raise ValueError("early_stopping_patience needs training.metric_for_best_model.")
            stage_callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
        trainer = ARMTTrainer(
            model=model, args=TrainingArguments(**args), train_dataset=train_ds, eval_dataset=eval_ds,
            data_collator=SegmentCollator(pad_token_id=pad, transforms=transforms), tokenizer=tokenizer,
            callbacks=stage_callbacks, metrics=cfg.metrics, metric_fns=fns, num_segments=stage.num_segments,
            save_base=not cfg.model.freeze_base or cfg.model.tiny is not None,
            generation_kwargs=_generation_kwargs(tokenizer),
        )
        checkpoint = _latest_checkpoint(stage_dir) if resume else None
        trainer.train(resume_from_checkpoint=checkpoint)
        best_dir = stage_dir / "best"
        if main_process:
            model.save_pretrained(best_dir, save_base=model.cell.runner is model.base_model, overwrite=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(best_dir)
        record = StageResult(stage=i + 1, num_segments=stage.num_segments, best_dir=str(best_dir),
                             best_metric=trainer.state.best_metric, steps=trainer.state.global_step,
                             stopped_at_goal=bool(goal and goal.reached))
        results.append(record)
        state["finished"].append(dataclasses.asdict(record))
        if main_process:
            state_file.write_text(json.dumps(state, indent=2))
        _barrier()  # the next stage (on every process) starts from the best just written
        previous_best = str(best_dir)
    if main_process and previous_best is not None and results and Path(previous_best).exists():
        load_model_dir(model, previous_best)
        final = out / "best"
        model.save_pretrained(final, save_base=model.cell.runner is model.base_model, overwrite=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(final)
    return results


def _stage_dataset(make, stage: Stage, seed: int) -> Dataset:
    if not stage.sample_segments:
        return make(stage.num_segments, "train")
    from ..data.retrieval import MixedSegments

    return MixedSegments(lambda k: make(k, "train"), stage.num_segments, seed=seed)
