"""The run configuration of ``armt train``: one YAML file whose keys are dataclass fields.

Top-level sections: ``model`` (:class:`ModelSpec`), ``armt`` (:class:`armt.ARMTConfig`),
``data`` (:class:`DataSpec`), ``curriculum`` (a list of :class:`Stage`), ``training`` (any
``transformers.TrainingArguments`` field), plus ``metrics`` and ``early_stopping_patience``.
Unknown keys anywhere are an error naming the key; command-line ``--section.key value``
flags override the file.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import ARMTConfig, legacy_keys
from .. import families
from ..tiny import TINY_FAMILIES

DATA_KINDS = ("associative_retrieval", "capacity", "lm", "babilong")
METRICS = ("exact_match",)


def _check_keys(cls, values: dict, where: str) -> None:
    if not isinstance(values, dict):
        raise ValueError(f"{where} must be a mapping of keys to values, got {type(values).__name__}.")
    known = {f.name for f in dataclasses.fields(cls) if not f.metadata.get("internal")}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown key {where}.{unknown[0]} (known keys of {where}: {', '.join(sorted(known))}).")


@dataclass
class ModelSpec:
    """Which base model to wrap.

    Args:
        name_or_path: Hugging Face Hub name or local directory of a causal LM.
        gguf_file: a GGUF file inside ``name_or_path`` (or its path), de-quantised on loading
            (``pip install "armt[gguf]"``); export it once with ``armt export-base`` to load faster.
        tiny: instead, a random tiny model: ``{family: gpt2|llama, layers, hidden, vocab,
            dropout}`` (see :func:`armt.tiny.tiny_base_model`).
        init_from: an ARMT directory (``save_pretrained`` output) to start from. Its ARMT
            config is the run's: the ``armt`` section may change only run-time options
            (``bptt_segments``, ``gradient_checkpointing``, ``last_segment_loss_only``,
            ``wavefront``); another key that differs from the saved value is an error.
        dtype: ``float32``, ``bfloat16`` or ``float16`` for the weights.
        attn_implementation: ``sdpa`` or ``eager`` (None: the model's default).
        freeze_base: train only the memory parameters (and LoRA adapters, if any).
        lora: ``peft.LoraConfig`` fields (e.g. ``{r: 8, target_modules: [q_proj, v_proj]}``).
    """

    name_or_path: str | None = None
    gguf_file: str | None = None
    tiny: dict | None = None
    init_from: str | None = None
    dtype: str = "float32"
    attn_implementation: str | None = None
    freeze_base: bool = False
    lora: dict | None = None

    def __post_init__(self) -> None:
        if (self.name_or_path is None) == (self.tiny is None) and self.init_from is None:
            raise ValueError("model: give exactly one of model.name_or_path and model.tiny (or model.init_from).")
        if self.gguf_file is not None and self.name_or_path is None:
            raise ValueError("model.gguf_file needs model.name_or_path: the folder that holds the file.")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"model.dtype={self.dtype!r} is unknown; use float32, bfloat16 or float16.")
        if self.tiny is not None:
            allowed = {"family", "layers", "hidden", "vocab", "max_positions", "seed", "dropout"}
            extra = sorted(set(self.tiny) - allowed)
            if extra:
                raise ValueError(f"unknown key model.tiny.{extra[0]} (known: {', '.join(sorted(allowed))}).")
            for key in ("layers", "hidden", "vocab", "max_positions"):
                value = self.tiny.get(key)
                if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                    raise ValueError(f"model.tiny.{key} must be a positive integer, got {value!r}.")
            family = self.tiny.get("family", families.DEFAULT_TINY)
            if family not in TINY_FAMILIES:
                raise ValueError(f"model.tiny.family={family!r} is not a tiny family; use one of {TINY_FAMILIES}.")
            dropout = self.tiny.get("dropout")
            if dropout is not None and (isinstance(dropout, bool) or not isinstance(dropout, (int, float))
                                        or not 0 <= dropout < 1):
                raise ValueError(f"model.tiny.dropout must be a number in [0, 1), got {dropout!r}.")


@dataclass
class DataSpec:
    """Training and evaluation data.

    Args:
        kind: ``associative_retrieval`` (built in, no files), ``capacity`` (the ARMT paper's
            capacity task, :mod:`armt.data.capacity`: one pair per segment, so ``num_segments``
            segments hold ``num_segments - 1`` pairs and the query; needs ``segment_size`` 4),
            ``lm`` (books cut into windows of ``num_segments`` segments) or ``babilong``.
        num_segments: segments per sample when there is no curriculum.
        num_train, num_eval: samples (``associative_retrieval``, ``capacity`` and ``babilong``).
        seed: data seed (the training seed is ``training.seed``).
        options: kind-specific settings, e.g. ``key_len``/``value_len`` for retrieval,
            ``source``/``tokenizer``/``held_out_books`` for ``lm``, ``tasks``/``babi``/
            ``background`` for ``babilong``.
    """

    kind: str = "associative_retrieval"
    num_segments: int = 2
    num_train: int = 2000
    num_eval: int = 100
    seed: int = 0
    options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in DATA_KINDS:
            raise ValueError(f"data.kind={self.kind!r} is unknown; use one of {', '.join(DATA_KINDS)}.")
        for name in ("num_segments", "num_train", "num_eval"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"data.{name} must be a positive int, got {value!r}.")


@dataclass
class Stage:
    """One curriculum stage; it starts from the best model of the stage before.

    Args:
        num_segments: segments per training sample (the maximum with ``sample_segments``).
        max_steps: optimizer steps of this stage.
        eval_segments: segments per evaluation sample (default: ``num_segments``).
        batch_size: per-device training batch size (default: ``training.per_device_train_batch_size``).
        sample_segments: draw each sample's number of segments from ``1 .. num_segments``.
        segment_choices: draw each sample's number of segments from this list instead (a value
            listed twice is drawn twice as often), e.g. ``[1, 2, 33]`` to keep short layouts
            while training long ones; its largest value must be ``num_segments``.
        stop_metric, stop_value: end the stage once this evaluation metric (e.g.
            ``eval_exact_match``) reaches the value (at or below it for losses and
            perplexities, at or above it otherwise).
        learning_rate: this stage's peak learning rate (default: ``training.learning_rate``),
            e.g. lower once the memory starts to carry information across segments.
    """

    num_segments: int
    max_steps: int
    eval_segments: int | None = None
    batch_size: int | None = None
    sample_segments: bool = False
    segment_choices: list[int] | None = None
    stop_metric: str | None = None
    stop_value: float | None = None
    learning_rate: float | None = None

    def __post_init__(self) -> None:
        if self.learning_rate is not None and (isinstance(self.learning_rate, bool)
                                               or not isinstance(self.learning_rate, (int, float))
                                               or not self.learning_rate > 0):
            raise ValueError(f"curriculum stage: learning_rate must be a positive number, got {self.learning_rate!r}.")
        for name in ("num_segments", "max_steps", "eval_segments", "batch_size"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise ValueError(f"curriculum stage: {name} must be a positive int, got {value!r}.")
        if self.segment_choices is not None:
            choices = self.segment_choices
            if (not isinstance(choices, (list, tuple)) or not choices
                    or any(isinstance(k, bool) or not isinstance(k, int) or k < 1 for k in choices)):
                raise ValueError("curriculum stage: segment_choices must be a non-empty list of positive ints, "
                                 f"got {choices!r}.")
            if self.sample_segments:
                raise ValueError("curriculum stage: give sample_segments or segment_choices, not both.")
            if max(choices) != self.num_segments:
                raise ValueError(f"curriculum stage: the largest of segment_choices ({max(choices)}) must equal "
                                 f"num_segments ({self.num_segments}); set num_segments: {max(choices)}.")
            self.segment_choices = list(choices)
        if (self.stop_metric is None) != (self.stop_value is None):
            raise ValueError("curriculum stage: give both stop_metric and stop_value, or neither.")
        if self.stop_metric is not None and not self.stop_metric.startswith("eval_"):
            self.stop_metric = "eval_" + self.stop_metric


@dataclass
class RunConfig:
    """Everything ``armt train`` needs. Build it with :func:`load_run_config`.

    Example:
        >>> cfg = RunConfig.from_dict({
        ...     "model": {"tiny": {"family": "gpt2", "layers": 2, "hidden": 32, "vocab": 64}},
        ...     "armt": {"num_mem_tokens": 2, "d_mem": 8, "segment_size": 16},
        ...     "training": {"output_dir": "runs/x", "learning_rate": 1e-3},
        ... })
        >>> [s.num_segments for s in cfg.stages], cfg.training["learning_rate"]
        ([2], 0.001)

    ``write_penalty`` adds that times the memory's mean write strength to the training loss, and
    ``write_margin`` (with ``armt.write_gate: hard``) keeps penalised gates that far from the
    edge; ``write_penalty_shape: linear`` keeps the penalty rising past the fully open point, so a
    gate stuck open is pulled back: :class:`armt.training.write_penalty.WritePenalty`, the recipe
    that keeps a memory right far beyond its training length (docs/results/length.md).
    """

    model: ModelSpec
    armt: ARMTConfig
    data: DataSpec = field(default_factory=DataSpec)
    curriculum: list[Stage] = field(default_factory=list)
    training: dict = field(default_factory=dict)
    metrics: list[str] = field(default_factory=list)
    early_stopping_patience: int | None = None
    custom_metrics: list[str] = field(default_factory=list)
    batch_transforms: list[str] = field(default_factory=list)
    write_penalty: float = 0.0
    write_margin: float = 0.0
    write_penalty_shape: str = "clipped"
    # the armt keys the config gave (from_dict records them); with model.init_from these, and
    # only these, are checked against the saved model's config (None: those that differ from
    # ARMTConfig's defaults)
    armt_keys: frozenset[str] | None = field(default=None, repr=False, compare=False, metadata={"internal": True})

    def __post_init__(self) -> None:
        from transformers import TrainingArguments

        known = {f.name for f in dataclasses.fields(TrainingArguments)}
        unknown = sorted(set(self.training) - known)
        if unknown:
            raise ValueError(
                f"unknown key training.{unknown[0]}: training takes transformers.TrainingArguments fields "
                f"(e.g. learning_rate, per_device_train_batch_size, eval_steps)."
            )
        fields = {f.name: f.type for f in dataclasses.fields(TrainingArguments)}
        for key, value in self.training.items():
            want = fields[key]
            if want in (int, float) and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"training.{key} must be a number, got {value!r}.")
            if want is bool and not isinstance(value, bool):
                raise ValueError(f"training.{key} must be true or false, got {value!r}.")
        for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
                    "eval_steps", "save_steps", "logging_steps"):
            value = self.training.get(key)
            if value is not None and not value > 0:
                raise ValueError(f"training.{key} must be > 0, got {value!r}.")
        if "output_dir" not in self.training:
            raise ValueError("training.output_dir is required: where the run writes checkpoints and logs.")
        for key in ("max_steps", "num_train_epochs"):
            if key in self.training and self.curriculum:
                raise ValueError(f"training.{key} conflicts with the curriculum; set max_steps per stage instead "
                    f"(on the command line, --training.{key} null removes it).")
        for key in ("write_penalty", "write_margin"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
                raise ValueError(f"{key} must be a number >= 0, got {value!r}.")
        if self.write_penalty and self.armt.memory != "associative":
            raise ValueError("write_penalty penalises the associative memory's writes; this model has none "
                             "(set armt.memory: associative, or write_penalty: 0).")
        from .write_penalty import check_write_penalty

        check_write_penalty(self.armt, self.write_penalty, self.write_margin, self.write_penalty_shape)
        bad = sorted(set(self.metrics) - set(METRICS))
        if bad:
            raise ValueError(f"metrics: {bad[0]!r} is unknown; built-in metrics are {METRICS} "
                             "(add your own with custom_metrics: ['module:function']).")
        for spec in self.custom_metrics + self.batch_transforms:
            if ":" not in spec:
                raise ValueError(f"{spec!r} is not an import path; write it as 'package.module:function'.")

    @property
    def stages(self) -> list[Stage]:
        if self.curriculum:
            return self.curriculum
        steps = self.training.get("max_steps", 100)
        return [Stage(num_segments=self.data.num_segments, max_steps=int(steps))]

    @classmethod
    def from_dict(cls, values: dict) -> RunConfig:
        _check_keys(cls, values, "config")
        values = dict(values)
        if "model" not in values:
            raise ValueError("config: the model section is required (model.name_or_path or model.tiny).")
        model = values.pop("model")
        _check_keys(ModelSpec, model, "model")
        armt = values.pop("armt", {}) or {}
        if isinstance(armt, dict):
            armt = legacy_keys(armt)
        _check_keys(ARMTConfig, armt, "armt")
        data = values.pop("data", {}) or {}
        _check_keys(DataSpec, data, "data")
        stages = []
        if values.get("curriculum") and data.get("num_segments", DataSpec.num_segments) != DataSpec.num_segments:
            raise ValueError("data.num_segments is ignored beside a curriculum (each stage sets its own "
                             "num_segments); drop it, or set the stages' num_segments.")
        for i, stage in enumerate(values.pop("curriculum", []) or []):
            _check_keys(Stage, stage, f"curriculum[{i}]")
            stages.append(Stage(**stage))
        return cls(model=ModelSpec(**model), armt=ARMTConfig(**armt), data=DataSpec(**data),
                   curriculum=stages, armt_keys=frozenset(armt), **values)

    def to_dict(self) -> dict[str, Any]:
        # the penalty's keys only where set: a run saved before they existed resumes unchanged
        penalty = {k: getattr(self, k) for k in ("write_penalty", "write_margin") if getattr(self, k)}
        if self.write_penalty_shape != "clipped":
            penalty["write_penalty_shape"] = self.write_penalty_shape
        return {
            "model": dataclasses.asdict(self.model),
            "armt": self.armt.to_dict(),
            "data": dataclasses.asdict(self.data),
            "curriculum": [dataclasses.asdict(s) for s in self.curriculum],
            "training": dict(self.training),
            "metrics": list(self.metrics),
            "early_stopping_patience": self.early_stopping_patience,
            "custom_metrics": list(self.custom_metrics),
            "batch_transforms": list(self.batch_transforms),
            **penalty,
        }


_SCIENTIFIC = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _numbers(obj):
    """PyYAML reads ``1e-5`` (no dot) as a string; read such values as the floats they are."""
    if isinstance(obj, str) and _SCIENTIFIC.match(obj):
        return float(obj)
    if isinstance(obj, dict):
        return {k: _numbers(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_numbers(v) for v in obj]
    return obj


def apply_overrides(values: dict, overrides: list[str]) -> dict:
    """Apply ``["--training.learning_rate", "1e-4", "--armt.segment_size=64", ...]`` to a
    config dict; values are read as YAML (numbers, booleans, lists). ``--training.KEY null``
    removes KEY, leaving TrainingArguments' default."""
    import yaml

    values = json.loads(json.dumps(values))  # deep copy
    i = 0
    while i < len(overrides):
        flag = overrides[i]
        if not flag.startswith("--"):
            raise ValueError(f"expected a --section.key flag, got {flag!r}.")
        if "=" in flag:
            key, raw = flag[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(overrides):
                raise ValueError(f"{flag} needs a value.")
            key, raw = flag[2:], overrides[i + 1]
            i += 2
        parts = key.replace("-", "_").split(".")
        node = values
        for depth, part in enumerate(parts[:-1]):
            if part.isdigit() and isinstance(node, list) and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and isinstance(node.setdefault(part, {}), (dict, list)):
                node = node[part]
            elif isinstance(node, list):
                raise ValueError(f"{flag}: {'.'.join(parts[:depth]) or 'config'} is a list of {len(node)}; give an "
                                 f"index 0..{len(node) - 1}.")
            else:
                raise ValueError(f"{flag}: {'.'.join(parts[:depth + 1])} is not a section of the config.")
        last = parts[-1]
        if isinstance(node, list) and not (last.isdigit() and int(last) < len(node)):
            raise ValueError(f"{flag}: {'.'.join(parts[:-1])} is a list of {len(node)}; give an index 0..{len(node) - 1}.")
        value = _numbers(yaml.safe_load(raw))
        if value is None and parts[0] == "training" and len(parts) == 2:
            # null gives the key back to TrainingArguments' default, so that a curriculum can be
            # added to a config file that sets training.max_steps
            node.pop(last, None)
            continue
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return values


def load_run_config(path: str | Path | None, overrides: list[str] = (), defaults: dict | None = None) -> RunConfig:
    """Read a YAML run config (``None``: ``defaults``, else the built-in run) and apply overrides."""
    import yaml

    if path is None:
        values = defaults if defaults is not None else default_run_values()
    else:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file {path} does not exist.")
        try:
            values = _numbers(yaml.safe_load(path.read_text()) or {})
        except yaml.YAMLError as err:
            where = getattr(err, "problem_mark", None)
            at = f" at line {where.line + 1}, column {where.column + 1}" if where is not None else ""
            raise ValueError(f"config file {path} is not valid YAML{at}: {getattr(err, 'problem', err)}.") from err
        except UnicodeDecodeError as err:
            raise ValueError(f"config file {path} is not UTF-8 text.") from err
    return RunConfig.from_dict(apply_overrides(values, list(overrides)))


def default_run_values() -> dict:
    """The built-in run: a tiny GPT-2 learns associative retrieval across 1 -> 2 -> 4 segments
    on the CPU in a few minutes."""
    return {
        "model": {"tiny": {"family": families.DEFAULT_TINY, "layers": 2, "hidden": 64, "vocab": 16}},
        "armt": {"num_mem_tokens": 4, "d_mem": 16, "segment_size": 16},
        "data": {"kind": "associative_retrieval", "num_train": 20000, "num_eval": 64,
                 "options": {"key_len": 1, "value_len": 1, "num_pairs": 2}},
        "curriculum": [
            {"num_segments": 1, "max_steps": 400},
            {"num_segments": 2, "max_steps": 300},
            {"num_segments": 4, "max_steps": 300},
        ],
        "training": {"output_dir": "runs/default", "learning_rate": 2e-3, "per_device_train_batch_size": 32,
                     "eval_strategy": "steps", "eval_steps": 100, "save_steps": 100, "logging_steps": 20,
                     "warmup_steps": 0.05, "lr_scheduler_type": "linear", "max_grad_norm": 1.0,
                     "metric_for_best_model": "eval_exact_match", "greater_is_better": True,
                     "save_total_limit": 2, "report_to": ["tensorboard"], "seed": 0, "use_cpu": True},
        "metrics": ["exact_match"],
    }
