"""``armt train``: build the model and data of a :class:`RunConfig` and run its curriculum,
each stage a Hugging Face ``Trainer`` run that starts from the previous stage's best model.
The run directory records finished stages, so an interrupted curriculum resumes at the stage
and step where it stopped."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset

from .. import families
from ..adapters import has_adapters
from ..data.babi import VARIANTS
from ..generation import generation_defaults
from ..model import ARMTForCausalLM
from ..config import RUN_OPTIONS, ARMTConfig, with_run_options
from ..saving import load_into, load_saved_base, saved_config
from .config import RunConfig, Stage
from .curriculum import MixedSegments
from .trainer import ARMTTrainer, SegmentCollator, StopAtMetric, import_object
from .write_penalty import WritePenalty

logger = logging.getLogger(__name__)
STATE_NAME = "curriculum_state.json"
RUN_CONFIG_NAME = "run_config.yaml"


def build_model(cfg: RunConfig) -> ARMTForCausalLM:
    """The base model of ``cfg.model`` (tiny, Hub name or local path; LoRA if asked) wrapped
    with ARMT; ``init_from`` loads a saved ARMT directory instead of fresh memory weights."""
    spec = cfg.model
    dtype = getattr(torch, spec.dtype)
    if spec.tiny is not None:
        from ..tiny import tiny_base_model

        tiny = dict(spec.tiny)
        base = tiny_base_model(tiny.pop("family", families.DEFAULT_TINY), **tiny, attn=spec.attn_implementation or "sdpa").to(dtype)
    elif spec.name_or_path is not None:
        from ..bases import load_base_model

        kwargs = {"dtype": dtype}
        if spec.attn_implementation:
            kwargs["attn_implementation"] = spec.attn_implementation
        base = load_base_model(spec.name_or_path, spec.gguf_file, **kwargs)
    else:
        base = None
    if spec.init_from is not None:
        armt = init_from_config(cfg)
        model = ARMTForCausalLM.from_pretrained(spec.init_from, base_model=base, is_trainable=True,
                                                options={k: getattr(armt, k) for k in RUN_OPTIONS})
        if base is not None:  # a base fine-tuned with the memory was saved with it: continue from it too
            load_saved_base(model, spec.init_from)
    else:
        if spec.lora:
            from peft import LoraConfig, get_peft_model

            base = get_peft_model(base, LoraConfig(**spec.lora))
        model = ARMTForCausalLM(base, dataclasses.replace(cfg.armt))
    if spec.freeze_base:
        model.freeze_base()
    return model


def init_from_config(cfg: RunConfig) -> ARMTConfig:
    """The ARMT config of a run that continues ``model.init_from``: the saved one, with the
    run-time options (:data:`armt.config.RUN_OPTIONS`) the run's ``armt`` section sets. Any
    other key it sets must equal the saved value, so that the data (cut by ``segment_size``) and
    the model agree and no option is silently dropped."""
    saved = saved_config(cfg.model.init_from)
    given = cfg.armt_keys
    if given is None:  # built in Python, not from a file: what differs from the defaults was set
        defaults = ARMTConfig()
        given = {k for k, v in cfg.armt.to_dict().items() if getattr(defaults, k) != v}
    clash = sorted(k for k in given if k not in RUN_OPTIONS and getattr(cfg.armt, k) != getattr(saved, k))
    if clash:
        raise ValueError(
            f"model.init_from={cfg.model.init_from} was saved with "
            + ", ".join(f"{k}={getattr(saved, k)!r}" for k in clash) + "; the run sets "
            + ", ".join(f"armt.{k}={getattr(cfg.armt, k)!r}" for k in clash)
            + ". A continued model keeps its memory's layout: leave these keys out of the armt section (or set "
            f"them to the saved values), or drop model.init_from to train a new memory. Only "
            f"{', '.join(sorted(RUN_OPTIONS))} may change."
        )
    return with_run_options(saved, {k: getattr(cfg.armt, k) for k in given if k in RUN_OPTIONS})


def _vocab_size(model: ARMTForCausalLM) -> int:
    return model.cell.runner.get_input_embeddings().weight.shape[0]


def dataset_factory(cfg: RunConfig, model: ARMTForCausalLM, tokenizer=None) -> Callable[[int, str], Dataset]:
    """``make(num_segments, split)`` for the configured data kind."""
    data = cfg.data
    segment = cfg.armt.segment_size
    if data.kind == "associative_retrieval":
        from ..data.retrieval import RetrievalConfig, RetrievalDataset

        vocab = _vocab_size(model)
        _check_options(data.options, "associative_retrieval", RetrievalConfig,
                       set_by_run={"vocab_size", "segment_size", "num_segments", "num_samples", "seed"})

        def make(num_segments: int, split: str) -> Dataset:
            n = data.num_train if split == "train" else data.num_eval
            # a different seed stream for evaluation, so no eval sample is a training sample
            seed = data.seed if split == "train" else data.seed + 7919
            return RetrievalDataset(RetrievalConfig(vocab_size=vocab, segment_size=segment, num_segments=num_segments,
                                                    num_samples=n, seed=seed, **data.options))

        return make
    if data.kind == "capacity":
        return _capacity_factory(cfg, _vocab_size(model))
    if data.kind == "lm":
        from ..data.books import load_books
        from ..data.lm import LMWindowDataset, LMWindowsConfig, split_books

        options = dict(data.options)
        options.pop("tokenizer", None)
        options.pop("tokenizer_vocab", None)
        options.pop("tokenizer_train_chars", None)
        _check_options(options, "lm", LMWindowsConfig, set_by_run={"segment_size", "num_segments"},
                       extra={"source", "held_out_books"})
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


def _check_options(options: dict, kind: str, cls, *, set_by_run: set, extra: set = frozenset()) -> None:
    known = ({f.name for f in dataclasses.fields(cls)} - set_by_run) | set(extra)
    unknown = sorted(set(options) - known)
    if unknown:
        raise ValueError(f"unknown key data.options.{unknown[0]} for {kind} (known: {', '.join(sorted(known))}).")


def _capacity_factory(cfg: RunConfig, vocab: int) -> Callable[[int, str], Dataset]:
    from ..data.capacity import CapacityConfig, CapacityDataset

    data = cfg.data
    options = dict(data.options)
    known = {"variant", "num_symbols", "key_len", "value_len"}
    if set(options) - known:
        raise ValueError(f"unknown key data.options.{sorted(set(options) - known)[0]} for capacity "
                         f"(known: {', '.join(sorted(known))}).")
    probe = CapacityConfig(num_pairs=1, **options)
    if cfg.armt.segment_size != probe.segment_size:
        raise ValueError(f"data.kind=capacity puts one pair of {probe.segment_size} tokens in each segment; "
                         f"set armt.segment_size to {probe.segment_size} (it is {cfg.armt.segment_size}).")
    if vocab < probe.vocab_size:
        raise ValueError(f"data.kind=capacity needs a vocabulary of {probe.vocab_size} tokens; the model has "
                         f"{vocab}. Set model.tiny.vocab to {probe.vocab_size}.")

    def make(num_segments: int, split: str) -> Dataset:
        if num_segments < 2:
            raise ValueError("data.kind=capacity needs num_segments >= 2 (N pairs then the query: N + 1 segments).")
        n = data.num_train if split == "train" else data.num_eval
        seed = data.seed if split == "train" else data.seed + 7919
        return CapacityDataset(CapacityConfig(num_pairs=num_segments - 1, num_samples=n, seed=seed, **options))

    return make


def babilong_factory(cfg, tokenizer) -> Callable[[int, str], Dataset]:
    """``make(num_segments, split)`` for ``data.kind: babilong``; ``data.options`` may set
    ``tasks`` (default qa1-qa5), ``babi`` (folder, ``builtin``), ``babi_variant`` (``en`` or
    ``en-10k``: the folder's 1,000 or 10,000 training questions per task), ``background`` (folder
    of books, dataset name, ``builtin``) and ``question_segment`` (``shared`` or ``alone``, see
    :class:`armt.data.babilong_training.BabilongTrainingSet`)."""
    from ..data.babilong_training import BabilongTrainingSet
    from ..data.babilong_sources import BUILTIN, is_hub_source, open_sources

    if tokenizer is None:
        raise ValueError("data.kind=babilong needs a tokenizer: set data.options.tokenizer or model.name_or_path.")
    options = dict(cfg.data.options)
    tasks = options.pop("tasks", ["qa1", "qa2", "qa3", "qa4", "qa5"])
    if isinstance(tasks, str):
        tasks = [t.strip() for t in tasks.split(",") if t.strip()]
    babi = options.pop("babi", "builtin")
    background = options.pop("background", None)
    question_segment = options.pop("question_segment", "shared")
    babi_variant = options.pop("babi_variant", "en")
    if babi_variant not in VARIANTS:
        raise ValueError(f"data.options.babi_variant={babi_variant!r} is unknown; use one of {VARIANTS}.")
    is_folder = isinstance(babi, (str, Path)) and str(babi) != BUILTIN and not is_hub_source(str(babi))
    if babi_variant != "en" and not is_folder:
        raise ValueError(f"data.options.babi_variant={babi_variant!r} needs data.options.babi to be a bAbI folder "
                         f"(holding en/ and en-10k/), not {babi!r}.")
    for key in ("tokenizer", "tokenizer_vocab", "tokenizer_train_chars"):
        options.pop(key, None)
    if options:
        raise ValueError(f"unknown key data.options.{sorted(options)[0]} for babilong "
                         "(known: tasks, babi, babi_variant, background, question_segment, tokenizer, tokenizer_vocab, "
                         "tokenizer_train_chars).")
    cache: dict = {}

    def make(num_segments: int, split: str) -> Dataset:
        key = (num_segments, split)
        if key not in cache:
            sources = open_sources(babi, background, seed=cfg.data.seed, split="train" if split == "train" else "test")
            n = cfg.data.num_train if split == "train" else cfg.data.num_eval
            per_task = max(1, n // len(tasks))
            cache[key] = BabilongTrainingSet(tokenizer, tasks, per_task, num_segments, cfg.armt.segment_size,
                                             sources.background, sources.babi, split="train" if split == "train"
                                             else "test", seed=cfg.data.seed + (0 if split == "train" else 1),
                                             question_segment=question_segment, babi_variant=babi_variant)
        return cache[key]

    return make


def resolve_tokenizer(cfg: RunConfig, save_dir: Path):
    """The tokenizer a run needs (``None`` for associative retrieval): ``data.options.tokenizer``
    or the base model's, loaded by name; offline, a byte-level BPE trained on the training
    books (``data.options.tokenizer_vocab`` entries) and saved in the run. Returns
    ``(tokenizer, description)``."""
    if cfg.data.kind in ("associative_retrieval", "capacity"):
        return None, f"none ({cfg.data.kind} uses token ids directly)"
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


_CHECKPOINT_FILES = ("trainer_state.json", "armt_config.json", "armt_model.safetensors")


def _latest_checkpoint(directory: Path) -> str | None:
    """The newest complete checkpoint of a stage (a kill while one was written leaves it
    incomplete: it is skipped, with a warning)."""
    found = sorted(((int(m.group(1)), p) for p in directory.glob("checkpoint-*")
                    if p.is_dir() and (m := re.fullmatch(r"checkpoint-(\d+)", p.name))), reverse=True)
    for _, path in found:
        missing = [f for f in _CHECKPOINT_FILES if not (path / f).is_file()]
        if not missing:
            try:
                json.loads((path / "trainer_state.json").read_text())
                return str(path)
            except (ValueError, OSError) as err:
                missing = [f"a readable trainer_state.json ({err})"]
        logger.warning("skipping the incomplete checkpoint %s (no %s); resuming from an older one", path,
                       ", ".join(missing))
    return None


def _finished_checkpoint(checkpoint: str | None, max_steps: int) -> dict | None:
    """The trainer state of ``checkpoint`` if it already reached ``max_steps``."""
    if checkpoint is None:
        return None
    state = json.loads((Path(checkpoint) / "trainer_state.json").read_text())
    return state if state.get("global_step", 0) >= max_steps else None


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

    import yaml

    out = Path(os.path.expanduser(str(cfg.training["output_dir"])))
    cfg = dataclasses.replace(cfg, training={**cfg.training, "output_dir": str(out)})
    # under torchrun/accelerate every process runs this; only the first touches the run directory
    main_process = int(os.environ.get("RANK", "0")) == 0
    if not main_process:
        cfg, tokenizer, _ = _resolve(cfg, tokenizer)
        return _train_stages(cfg, out, resume=resume, tokenizer=tokenizer, metric_fns=metric_fns,
                             callbacks=callbacks, main_process=False)
    _check_output_dir(out, resume=resume, overwrite=overwrite)
    # everything is checked (the model built, the data and the Trainer's arguments made) before
    # anything is written, so that a config error leaves no half-made run behind
    cfg, tokenizer, trained_tokenizer = _resolve(cfg, tokenizer)
    prepared = _prepare(cfg, tokenizer, metric_fns, out)
    resolved = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    if resume and (out / RUN_CONFIG_NAME).exists() and (out / RUN_CONFIG_NAME).read_text() != resolved:
        saved = yaml.safe_load((out / RUN_CONFIG_NAME).read_text())
        try:  # a run written by an earlier version spells some keys differently (use_memory)
            saved = RunConfig.from_dict(saved).to_dict()
        except (ValueError, TypeError):
            pass
        differ = _differing_keys(saved, cfg.to_dict())
    else:
        differ = []
    if differ:
        raise ValueError(f"--resume: this config differs from the run's {out / RUN_CONFIG_NAME} at "
                         f"{', '.join(differ[:6]) or 'its layout'}; resume with the same config (or start a new run).")
    if overwrite and not resume and out.exists():
        import shutil

        _check_removable(out)
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)
    if trained_tokenizer and not (resume and (out / "tokenizer").is_dir()):
        tokenizer.save_pretrained(str(out / "tokenizer"))
    (out / RUN_CONFIG_NAME).write_text(resolved)
    _record_files(out)
    return _train_stages(cfg, out, resume=resume, tokenizer=tokenizer, metric_fns=metric_fns,
                         callbacks=callbacks, main_process=True, prepared=prepared)


def _check_output_dir(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Refuse an output folder that cannot take this run, before anything is written."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"training.output_dir {out} is a file, not a folder; choose a folder for the run.")
    if overwrite and not resume and out.is_symlink():
        raise ValueError(f"training.output_dir {out} is a symbolic link (to {out.resolve()}); --overwrite deletes "
                         "only real folders. Pass the folder it points to.")
    nonempty = out.is_dir() and any(out.iterdir())
    if resume and not _is_run_dir(out):
        what = "is not an armt run (no run_config.yaml)" if nonempty else "holds no run"
        raise FileNotFoundError(f"--resume: {out} {what}; there is nothing to continue. Drop --resume to start a "
                                "new run (in an empty or new folder).")
    if nonempty and not (resume or overwrite):
        what = "already holds a run" if _is_run_dir(out) else "is not empty and is not an armt run"
        raise FileExistsError(
            f"{out} {what}; pass --resume to continue a run or --overwrite to start it again "
            "(or choose another training.output_dir)."
        )
    if overwrite and not resume and out.exists():
        _check_removable(out)


def _resolve(cfg: RunConfig, tokenizer) -> tuple[RunConfig, object, bool]:
    """The run's tokenizer (resolved if not given), a config with what it implies filled in
    (a tiny model's vocabulary from the tokenizer; ``cfg`` itself is left as it was), and
    whether the tokenizer was trained here (the run then saves it)."""
    if cfg.model.init_from is not None:  # the saved model's config, so that run_config.yaml says what runs
        cfg = dataclasses.replace(cfg, armt=init_from_config(cfg))
    trained = False
    if tokenizer is None:
        tokenizer, described = resolve_tokenizer(cfg, None)
        trained = described.startswith(("trained", "could not load"))
        logger.warning("tokenizer: %s", described)
    if tokenizer is not None and cfg.model.tiny is not None:
        vocab = cfg.model.tiny.get("vocab")
        if vocab is None:
            tiny = dict(cfg.model.tiny, vocab=len(tokenizer))
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, tiny=tiny))
        elif vocab < len(tokenizer):
            raise ValueError(f"model.tiny.vocab={vocab} is smaller than the tokenizer ({len(tokenizer)} tokens); "
                             "leave it out to use the tokenizer's size.")
    return cfg, tokenizer, trained


def _differing_keys(old, new, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new), key=str):
            out += _differing_keys(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if old == new else [prefix.rstrip(".")]


_STAGE_DIR = re.compile(r"stage\d+-\d+seg")


def _is_run_dir(out: Path) -> bool:
    return (out / RUN_CONFIG_NAME).is_file() or (out / STATE_NAME).is_file()


FILES_NAME = "armt_files.json"
# what the Trainer writes inside a stage while it runs (checkpoints, TensorBoard logs)
_TRAINER_FILES = re.compile(r"stage\d+-\d+seg/(checkpoint-\d+|runs)/.+")


def _record_files(out: Path) -> None:
    """Add every file now under ``out`` to the run's list of files armt wrote (``armt_files.json``):
    ``--overwrite`` deletes a run only if it holds nothing else."""
    path = out / FILES_NAME
    known = set(json.loads(path.read_text())) if path.is_file() else set()
    known |= {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() or p.is_symlink()}
    known.add(FILES_NAME)
    tmp = out / (FILES_NAME + ".tmp")
    tmp.write_text(json.dumps(sorted(known), indent=0))
    tmp.replace(path)


def _check_removable(out: Path) -> None:
    """``--overwrite`` deletes a folder only if it is recognisably an armt run and holds nothing
    else, at any depth: never the working directory, one of its parents, the home directory or a
    file armt did not write."""
    resolved = out.resolve()
    cwd = Path.cwd().resolve()
    if resolved == cwd or resolved in cwd.parents or resolved == Path.home().resolve():
        raise ValueError(f"--overwrite would delete {out} ({resolved}): the working directory, one of its parents "
                         "or the home directory. Set training.output_dir to a folder of its own, e.g. runs/my-run.")
    if not _is_run_dir(out):
        raise ValueError(f"{out} is not an armt run (no {RUN_CONFIG_NAME}); --overwrite deletes only armt runs. "
                         "Choose another training.output_dir, or empty the folder yourself.")
    try:
        known = set(json.loads((out / FILES_NAME).read_text())) if (out / FILES_NAME).is_file() else set()
    except ValueError:
        known = set()
    known |= {RUN_CONFIG_NAME, STATE_NAME, FILES_NAME, FILES_NAME + ".tmp"}
    foreign = sorted(rel for p in out.rglob("*") if p.is_file() or p.is_symlink()
                     if (rel := str(p.relative_to(out))) not in known and not _TRAINER_FILES.fullmatch(rel))
    if foreign:
        raise ValueError(f"{out} holds files that armt did not write ({', '.join(foreign[:5])}"
                         f"{', ...' if len(foreign) > 5 else ''}); --overwrite refuses to delete them. Move them "
                         "away (or delete the run yourself) or choose another training.output_dir.")


def _check_fsdp(trainer, say: bool = True) -> None:
    """Refuse FSDP where it would run, and say so where the launcher quietly replaced it by DDP.

    On the CPU accelerate enables FSDP only for accelerator devices (accelerate/state.py), so an
    FSDP config runs as MULTI_CPU, i.e. DDP: the same numbers, every parameter on every process.
    On GPUs FSDP would shard the parameters, and armt's checkpoints are written from the module's
    own parameters, which would then be shards: refused until saving gathers them (and a GPU
    has shown it)."""
    asked = bool(trainer.args.fsdp) or os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"
    kind = trainer.accelerator.distributed_type.value
    if kind == "FSDP":
        raise ValueError("FSDP is not supported by armt train yet: checkpoints would be saved from sharded "
                         "parameters. Train with DDP (torchrun or accelerate launch without FSDP; see "
                         "configs/accelerate/ddp.yaml) or on one process.")
    if asked and say:
        logger.warning("FSDP was asked for, but accelerate runs it as %s (plain data parallelism: every process "
                       "holds every parameter); it enables FSDP only on GPUs and similar devices", kind)


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


@dataclass
class _Prepared:
    """What a run builds before it writes anything: the model, the data, the Trainer's arguments."""

    model: ARMTForCausalLM
    make: Callable[[int, str], Dataset]
    transforms: list
    fns: tuple
    metric: str | None
    stage_args: list[dict]


def _prepare(cfg: RunConfig, tokenizer, metric_fns, out: Path) -> _Prepared:
    """Build everything the stages need; every config error surfaces here."""
    from transformers import TrainingArguments

    model = build_model(cfg)
    make = dataset_factory(cfg, model, tokenizer)
    transforms = [import_object(s) for s in cfg.batch_transforms]
    fns = tuple(metric_fns) + tuple(import_object(s) for s in cfg.custom_metrics)
    training = dict(cfg.training)
    metric = training.get("metric_for_best_model")
    if metric and not metric.startswith("eval_"):
        metric = training["metric_for_best_model"] = "eval_" + metric
    if cfg.early_stopping_patience is not None and not metric:
        raise ValueError("early_stopping_patience needs training.metric_for_best_model.")
    stage_args = []
    for i, stage in enumerate(cfg.stages):
        args = dict(training)
        args.update(output_dir=str(out / f"stage{i + 1}-{stage.num_segments}seg"), max_steps=stage.max_steps,
                    load_best_model_at_end=bool(metric), remove_unused_columns=False)
        args.setdefault("dataloader_pin_memory", torch.cuda.is_available())
        if stage.batch_size is not None:
            args["per_device_train_batch_size"] = stage.batch_size
        if stage.learning_rate is not None:
            args["learning_rate"] = stage.learning_rate
        TrainingArguments(**args)  # its own checks, now rather than after the run folder is made
        stage_args.append(args)
    return _Prepared(model, make, transforms, fns, metric, stage_args)


def _train_stages(cfg: RunConfig, out: Path, *, resume: bool, tokenizer, metric_fns, callbacks,
                  main_process: bool, prepared: _Prepared | None = None) -> list[StageResult]:
    from transformers import EarlyStoppingCallback, TrainingArguments

    state_file = out / STATE_NAME
    state = json.loads(state_file.read_text()) if resume and state_file.exists() else {"finished": []}

    prepared = prepared or _prepare(cfg, tokenizer, metric_fns, out)
    model, make, transforms, fns, metric = (prepared.model, prepared.make, prepared.transforms, prepared.fns,
                                            prepared.metric)
    pad = getattr(tokenizer, "pad_token_id", None) or 0
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
            load_into(model, previous_best)  # each stage starts from the best of the last
        train_ds = _stage_dataset(make, stage, cfg.data.seed)
        eval_ds = make(stage.eval_segments or stage.num_segments, "eval")
        args = prepared.stage_args[i]
        stage_callbacks = list(callbacks)
        goal = None
        if stage.stop_metric is not None:
            lower = any(word in stage.stop_metric for word in ("loss", "perplexity", "ppl"))
            goal = StopAtMetric(stage.stop_metric, stage.stop_value, greater_is_better=not lower)
            stage_callbacks.append(goal)
        if cfg.early_stopping_patience is not None:
            stage_callbacks.append(EarlyStoppingCallback(early_stopping_patience=cfg.early_stopping_patience))
        trainer = ARMTTrainer(
            model=model, args=TrainingArguments(**args), train_dataset=train_ds, eval_dataset=eval_ds,
            data_collator=SegmentCollator(pad_token_id=pad, transforms=transforms), tokenizer=tokenizer,
            callbacks=stage_callbacks, metrics=cfg.metrics, metric_fns=fns, num_segments=stage.num_segments,
            save_base=not cfg.model.freeze_base or cfg.model.tiny is not None,
            generation_kwargs=generation_defaults(tokenizer),
            write_penalty=WritePenalty.for_model(model, cfg.write_penalty, cfg.write_margin,
                                                 shape=cfg.write_penalty_shape),
        )
        if i == 0 and main_process and trainer.accelerator.num_processes > 1:
            # say which parallelism the launcher and the config chose (DDP, FSDP, DeepSpeed)
            logger.warning("distributed: %s over %d processes", trainer.accelerator.distributed_type.value,
                           trainer.accelerator.num_processes)
        if i == 0:
            _check_fsdp(trainer, say=main_process)
        checkpoint = _latest_checkpoint(stage_dir) if resume else None
        finished = _finished_checkpoint(checkpoint, stage.max_steps)
        if finished is not None:
            # the stage ran to its end before the run stopped: take its result, train no more
            best = finished.get("best_model_checkpoint") if metric else None
            load_into(model, best if best and Path(best).is_dir() else checkpoint)
            trainer.state.best_metric = finished.get("best_metric")
            trainer.state.global_step = finished["global_step"]
            logger.warning("stage %d had finished (%s); not training it again", i + 1, checkpoint)
        else:
            trainer.train(resume_from_checkpoint=checkpoint)
        best_dir = stage_dir / "best"
        if main_process:
            model.save_pretrained(best_dir, save_base=not has_adapters(model.base_model), overwrite=True)
            if tokenizer is not None:
                tokenizer.save_pretrained(best_dir)
        record = StageResult(stage=i + 1, num_segments=stage.num_segments, best_dir=str(best_dir),
                             best_metric=trainer.state.best_metric, steps=trainer.state.global_step,
                             stopped_at_goal=bool(goal and goal.reached))
        results.append(record)
        state["finished"].append(dataclasses.asdict(record))
        if main_process:
            state_file.write_text(json.dumps(state, indent=2))
            _record_files(out)
        _barrier()  # the next stage (on every process) starts from the best just written
        previous_best = str(best_dir)
    if main_process and previous_best is not None and results and Path(previous_best).exists():
        load_into(model, previous_best)
        final = out / "best"
        model.save_pretrained(final, save_base=not has_adapters(model.base_model), overwrite=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(final)
        _record_files(out)
    return results


def _stage_dataset(make, stage: Stage, seed: int) -> Dataset:
    if not stage.sample_segments and stage.segment_choices is None:
        return make(stage.num_segments, "train")
    return MixedSegments(lambda k: make(k, "train"), stage.num_segments, seed=seed,
                         choices=stage.segment_choices)
