"""Save and load ARMT models as directories: the ARMT config and weights, and optionally the
base model next to them (Hugging Face format)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from torch import nn

from .bases import load_base_model
from .adapters import has_adapters, unwrap_adapters
from .config import ARMTConfig, with_run_options
from .files import give_umask_modes

CONFIG_NAME = "armt_config.json"
WEIGHTS_NAME = "armt_model.safetensors"
ADAPTER_DIR = "adapter"
_FORMAT = "armt.v1"
# config entries that do not change what the weights mean
_VOLATILE = {"_name_or_path", "transformers_version", "torch_dtype", "dtype", "architectures",
             "_attn_implementation", "_attn_implementation_autoset", "attn_implementation", "use_cache",
             "_commit_hash", "output_attentions", "output_hidden_states", "return_dict", "tie_word_embeddings"}


def base_config_hash(config) -> str | None:
    """A short hash of a base model's architecture config (names, dtypes, attention
    implementation and other run-time settings left out)."""
    if config is None or not hasattr(config, "to_dict"):
        return None
    values = {k: v for k, v in config.to_dict().items() if k not in _VOLATILE and not k.startswith("_")}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def model_signature(model, samples: int = 64) -> dict:
    """What a saved memory state records about the model that wrote it: hashes of the ARMT
    config (run-time options left out) and of the base's architecture, and a few weights
    (every ARMT tensor and ``samples`` base tensors, one value each, at a fixed position).
    The values survive a change of dtype, so :func:`signatures_match` compares them loosely.

    Example:
        ``state.save("mem.safetensors", model=model)`` records it; ``MemoryState.load(...,
        model=other)`` refuses a state whose signature is not ``other``'s.
    """
    from .config import RUN_OPTIONS

    armt = {k: v for k, v in model.config.to_dict().items() if k not in RUN_OPTIONS}
    tensors = sorted(model.cell.armt_state_dict().items())
    base = sorted((k, p) for k, p in unwrap_adapters(model.base_model).named_parameters() if p.numel())
    step = max(1, len(base) // samples)
    values = []
    for _, t in tensors + base[::step][:samples]:
        flat = t.detach().reshape(-1)
        values.append(round(float(flat[(flat.numel() * 7) // 11]), 6))
    return {"config": hashlib.sha256(json.dumps(armt, sort_keys=True, default=str).encode()).hexdigest()[:16],
            "base": base_config_hash(getattr(unwrap_adapters(model.base_model), "config", None)),
            "weights": values}


def _resolvable(name: str) -> str:
    """A local path made absolute (loading later must not depend on the working directory); a
    Hub name as it is."""
    return os.path.abspath(name) if name and os.path.isdir(name) else name


def _base_record(model) -> dict:
    base = unwrap_adapters(model.base_model)
    cfg = getattr(base, "config", None)
    return {
        "class": type(base).__name__,
        "name_or_path": _resolvable(getattr(cfg, "_name_or_path", "") or ""),
        "model_type": getattr(cfg, "model_type", None),
        "hidden_size": model.cell.d_model,
        "num_layers": model.cell.num_layers,
        "vocab_size": getattr(cfg, "vocab_size", None),
        "config_hash": base_config_hash(cfg),
    }


def save_pretrained(model, save_directory: str | os.PathLike, *, save_base: bool = False,
                    overwrite: bool = False) -> None:
    """Write ``armt_config.json`` and ``armt_model.safetensors`` (ARMT weights only); with
    ``save_base`` also the base model via its own ``save_pretrained``. A peft-wrapped base
    also gets its adapter weights in ``adapter/``. An existing ARMT directory is replaced only
    with ``overwrite=True``.

    Everything is written into a hidden folder beside ``save_directory`` first. A new directory
    then appears whole (one rename). An existing one loses its ``armt_config.json`` first (so
    a save cut short by a kill leaves a folder that refuses to load instead of mixing old and
    new weights), then the files an earlier save recorded and this one does not write (e.g. a
    base saved before and not now), and gets the new files, the config last. Files armt did
    not write stay. Files get the permissions of the user's umask, like any file they write.
    """
    from safetensors.torch import save_file

    out = Path(save_directory).expanduser()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a folder; choose a folder for the model.")
    if (out / CONFIG_NAME).exists() and not overwrite:
        raise FileExistsError(f"{out} already holds an ARMT model; pass overwrite=True to replace it.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        # e.g. a Hugging Face model folder: save_base would replace its config.json and weights
        raise FileExistsError(f"{out} is not empty ({', '.join(sorted(p.name for p in out.iterdir())[:4])}, ...); "
                              "pass overwrite=True to write into it, or choose an empty folder.")
    adapters = has_adapters(model.base_model)
    if adapters and save_base:
        raise ValueError(
            "save_base=True with a peft-wrapped base would write adapter-injected weights that no "
            "plain model loads; merge the adapters first (base.merge_and_unload()) or save without "
            "save_base (the adapters are saved either way)."
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.saving-", dir=out.parent))
    try:
        weights = {k: v.contiguous() for k, v in model.cell.armt_state_dict().items()}
        save_file(weights, str(staging / WEIGHTS_NAME), metadata={"format": _FORMAT})
        if adapters:
            model.base_model.save_pretrained(str(staging / ADAPTER_DIR))
        if save_base:
            unwrap_adapters(model.base_model).save_pretrained(str(staging))
        # the config as the model runs now (the Trainer may have switched checkpointing on)
        armt = replace(model.config, gradient_checkpointing=model.gradient_checkpointing)
        files = sorted(str(p.relative_to(staging)) for p in staging.rglob("*") if p.is_file())
        record = {"format": _FORMAT, "armt": armt.to_dict(), "base": _base_record(model),
                  "base_saved": save_base, "adapter": ADAPTER_DIR if adapters else None,
                  "files": files + [CONFIG_NAME]}
        (staging / CONFIG_NAME).write_text(json.dumps(record, indent=2, sort_keys=True))
        give_umask_modes(staging)
        if not out.exists():
            os.replace(staging, out)
        else:
            _replace_files(staging, out, record["files"])
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


# what a save_base=True of an earlier version wrote beside the ARMT files (it recorded no list)
_BASE_FILES = re.compile(r"config\.json|generation_config\.json|model\.safetensors(\.index\.json)?|"
                         r"model-\d+-of-\d+\.safetensors")


def _written_before(out: Path) -> set[str]:
    """The files the save already in ``out`` wrote (relative paths)."""
    try:
        record = json.loads((out / CONFIG_NAME).read_text())
    except (OSError, ValueError):
        return set()
    if isinstance(record.get("files"), list):
        return {str(f) for f in record["files"]}
    old = {WEIGHTS_NAME}
    if record.get("base_saved"):
        old |= {p.name for p in out.iterdir() if p.is_file() and _BASE_FILES.fullmatch(p.name)}
    if record.get("adapter"):
        old |= {str(p.relative_to(out)) for p in (out / record["adapter"]).rglob("*") if p.is_file()}
    return old


def _replace_files(staging: Path, out: Path, files: list[str]) -> None:
    stale = _written_before(out) - set(files)
    (out / CONFIG_NAME).unlink(missing_ok=True)  # from here until the end, out does not load
    for name in sorted(stale):
        path = out / name
        if path.is_file() and not path.is_symlink() and out.resolve() in path.resolve().parents:
            path.unlink()
            if path.parent != out and not any(path.parent.iterdir()):
                path.parent.rmdir()
    for name in files:
        if name != CONFIG_NAME:
            (out / name).parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, out / name)
    os.replace(staging / CONFIG_NAME, out / CONFIG_NAME)


def saved_base_source(directory: str | os.PathLike, record: dict | None = None) -> str:
    """Where the base model of a :func:`save_pretrained` directory loads from: the directory
    itself when the base was saved in it, else the base name it records."""
    directory = Path(directory)
    if record is None:
        record = json.loads((directory / CONFIG_NAME).read_text())
    source = str(directory) if record.get("base_saved") else record["base"].get("name_or_path")
    if not source:
        raise ValueError(f"{directory} holds no base model and records no base name; pass base_model=.")
    return source


def _read_record(directory: Path) -> dict:
    if not (directory / CONFIG_NAME).is_file():
        hint = "save the model with save_pretrained first"
        if directory.is_dir() and (directory / WEIGHTS_NAME).exists():
            hint = ("it holds ARMT weights without their config: a save was cut short (e.g. killed); "
                    "save the model again")
        raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}; {hint}.")
    record = json.loads((directory / CONFIG_NAME).read_text())
    if record.get("format") != _FORMAT:
        raise ValueError(f"{directory / CONFIG_NAME} has format {record.get('format')!r}, expected {_FORMAT!r}.")
    return record


def saved_config(directory: str | os.PathLike) -> ARMTConfig:
    """The ARMT config a :func:`save_pretrained` directory holds, read without loading a model."""
    return ARMTConfig.from_dict(_read_record(Path(directory))["armt"])


def from_pretrained(cls, directory: str | os.PathLike, base_model: nn.Module | str | None = None,
                    *, check_base: bool = True, is_trainable: bool = False, options: dict | None = None,
                    **base_kwargs):
    """Restore a model written by :func:`save_pretrained` onto ``base_model`` (a module, a
    local path or a Hub name; ``None`` uses the saved base, or the recorded name). Saved peft
    adapters are put back onto the base (trainable with ``is_trainable``). ``check_base=False``
    skips the comparison of the base's architecture config with the recorded one (shapes are
    always checked). ``options`` replaces run-time settings of the saved config (e.g.
    ``{"bptt_segments": 4}``; see :func:`armt.config.with_run_options`)."""
    directory = Path(directory)
    record = _read_record(directory)
    expected = record["base"]
    if base_model is None:
        base_model = saved_base_source(directory, record)
    if isinstance(base_model, (str, os.PathLike)):
        base_model = load_base_model(str(base_model), **base_kwargs)
    if record.get("adapter") and not has_adapters(base_model):
        from peft import PeftModel

        base_model = PeftModel.from_pretrained(base_model, str(directory / record["adapter"]),
                                               is_trainable=is_trainable)
    model = cls(base_model, with_run_options(ARMTConfig.from_dict(record["armt"]), options or {}))
    got = _base_record(model)
    keys = ["class", "hidden_size", "num_layers", "vocab_size"] + (["config_hash"] if check_base else [])
    clash = {k: (expected[k], got[k]) for k in keys
             if expected.get(k) is not None and expected[k] != got[k]}
    if clash:
        raise ValueError(
            f"{directory} was saved for a different base model ({expected['class']}"
            f"{' ' + repr(expected['name_or_path']) if expected['name_or_path'] else ''}, hidden size "
            f"{expected['hidden_size']}, {expected['num_layers']} layers); got "
            + ", ".join(f"{k}={g!r} instead of {e!r}" for k, (e, g) in clash.items())
            + ". Pass the base it was trained on" + (" (or check_base=False if only run-time settings "
                                                      "differ)." if list(clash) == ["config_hash"] else ".")
        )
    _load_armt_weights(model, directory)
    return model


def _load_armt_weights(model, directory: Path) -> None:
    """Load the directory's ARMT weights into ``model``, refusing unreadable or non-finite files."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = directory / WEIGHTS_NAME
    try:
        weights = load_file(str(path))
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err}); it may be "
                         "truncated. Save the model again.") from err
    bad = sorted(k for k, v in weights.items() if v.is_floating_point() and not bool(torch.isfinite(v).all()))
    if bad:
        raise ValueError(f"{path} holds NaN or infinite values in {bad[:4]}; it is not loaded.")
    model.cell.load_armt_state_dict(weights, str(path))


def load_into(model, directory: str | os.PathLike) -> None:
    """Load the weights of a :func:`save_pretrained` directory into ``model`` in place (ARMT
    weights, the saved base weights if any, peft adapters if any): how a training run moves
    from checkpoint to checkpoint without building a new model.

    Example:
        ``model.save_pretrained("ckpt"); ...; load_into(model, "ckpt")``
    """
    from safetensors.torch import load_file

    directory = Path(directory)
    _load_armt_weights(model, directory)
    load_saved_base(model, directory)
    adapter = directory / ADAPTER_DIR / "adapter_model.safetensors"
    if adapter.exists() and has_adapters(model.base_model):
        from peft import set_peft_model_state_dict

        set_peft_model_state_dict(model.base_model, load_file(str(adapter)))


def load_saved_base(model, directory: str | os.PathLike) -> None:
    """Load the base weights a :func:`save_pretrained` directory holds (``save_base=True``; a
    base without peft adapters) into ``model``'s base in place; nothing when it holds none."""
    from safetensors.torch import load_file

    directory = Path(directory)
    base_file = directory / "model.safetensors"
    runner = unwrap_adapters(model.base_model)
    if base_file.exists() and not has_adapters(model.base_model):
        missing, unexpected = runner.load_state_dict(load_file(str(base_file)), strict=False)
        tied = set(getattr(runner, "_tied_weights_keys", None) or {})
        missing = [k for k in missing if k not in tied and not k.endswith("lm_head.weight")]
        if unexpected:
            # transformers saves some weights under their checkpoint names (GPT-NeoX's head is
            # "embed_out"): let its own loader map them, then copy every weight
            try:
                saved = type(runner).from_pretrained(directory, config=runner.config,
                                                     dtype=next(runner.parameters()).dtype)
            except Exception as err:
                raise ValueError(f"{base_file} does not fit the base model ({err}).") from err
            runner.load_state_dict(saved.state_dict())
        elif missing:
            raise ValueError(f"{base_file} does not fit the base model: missing {missing[:5]}, unexpected {unexpected[:5]}.")


def push_to_hub(model, repo_id: str, *, save_base: bool = False, private: bool | None = None,
                token: str | None = None, commit_message: str = "Upload ARMT model", api=None) -> str:
    """Save the model to a temporary directory and upload it with ``huggingface_hub``; returns
    the commit URL (or whatever ``api.upload_folder`` returns). ``api`` defaults to
    ``huggingface_hub.HfApi(token=token)``."""
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp, save_base=save_base)
        return api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)


def saved_tokenizer(directory: str | os.PathLike, tokenizer: str | None = None):
    """The tokenizer for a saved ARMT model: ``tokenizer`` (a name or path) if given, else the
    one saved in ``directory``, else the recorded base model's."""
    from transformers import AutoTokenizer

    directory = Path(directory)
    if tokenizer is None:
        if (directory / "tokenizer_config.json").exists() or (directory / "tokenizer.json").exists():
            tokenizer = str(directory)
        else:
            record = json.loads((directory / CONFIG_NAME).read_text()) if (directory / CONFIG_NAME).exists() else {}
            tokenizer = record.get("base", {}).get("name_or_path") or None
    if not tokenizer:
        raise ValueError(
            f"{directory} holds no tokenizer and records no base name; pass --tokenizer NAME_OR_PATH "
            "(or save one with tokenizer.save_pretrained into the model directory)."
        )
    return AutoTokenizer.from_pretrained(tokenizer)
