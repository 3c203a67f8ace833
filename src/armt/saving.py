"""Save and load ARMT models as directories: the ARMT config and weights, and optionally the
base model next to them (Hugging Face format)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

from torch import nn

from .config import ARMTConfig

CONFIG_NAME = "armt_config.json"
WEIGHTS_NAME = "armt_model.safetensors"
_FORMAT = "armt.v1"


def _base_record(model) -> dict:
    base = model.base_model
    cfg = getattr(base, "config", None)
    return {
        "class": type(base).__name__,
        "name_or_path": getattr(cfg, "_name_or_path", "") or "",
        "model_type": getattr(cfg, "model_type", None),
        "hidden_size": model.cell.d_model,
        "num_layers": model.cell.num_layers,
        "vocab_size": getattr(cfg, "vocab_size", None),
    }


def save_pretrained(model, save_directory: Union[str, os.PathLike], *, save_base: bool = False,
                    overwrite: bool = False) -> None:
    """Write ``armt_config.json`` and ``armt_model.safetensors`` (ARMT weights only); with
    ``save_base`` also the base model via its own ``save_pretrained``. An existing ARMT
    directory is replaced only with ``overwrite=True``."""
    from safetensors.torch import save_file

    out = Path(save_directory)
    if (out / CONFIG_NAME).exists() and not overwrite:
        raise FileExistsError(f"{out} already holds an ARMT model; pass overwrite=True to replace it.")
    out.mkdir(parents=True, exist_ok=True)
    weights = {k: v.contiguous() for k, v in model.cell.armt_state_dict().items()}
    save_file(weights, str(out / WEIGHTS_NAME), metadata={"format": _FORMAT})
    if save_base:
        model.base_model.save_pretrained(str(out))
    record = {"format": _FORMAT, "armt": model.config.to_dict(), "base": _base_record(model),
              "base_saved": save_base}
    (out / CONFIG_NAME).write_text(json.dumps(record, indent=2, sort_keys=True))


def from_pretrained(cls, directory: Union[str, os.PathLike], base_model: Optional[Union[nn.Module, str]] = None,
                    **base_kwargs):
    """Restore a model written by :func:`save_pretrained` onto ``base_model`` (a module, a
    local path or a Hub name; ``None`` uses the saved base, or the recorded name)."""
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    directory = Path(directory)
    if not (directory / CONFIG_NAME).is_file():
        raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}; save the model with save_pretrained first.")
    record = json.loads((directory / CONFIG_NAME).read_text())
    if record.get("format") != _FORMAT:
        raise ValueError(f"{directory / CONFIG_NAME} has format {record.get('format')!r}, expected {_FORMAT!r}.")
    expected = record["base"]
    if base_model is None:
        source = str(directory) if record.get("base_saved") else expected["name_or_path"]
        if not source:
            raise ValueError(f"{directory} holds no base model and records no base name; pass base_model=.")
        base_model = source
    if isinstance(base_model, (str, os.PathLike)):
        base_model = AutoModelForCausalLM.from_pretrained(str(base_model), **base_kwargs)
    model = cls(base_model, ARMTConfig.from_dict(record["armt"]))
    got = _base_record(model)
    clash = {k: (expected[k], got[k]) for k in ("class", "hidden_size", "num_layers", "vocab_size")
             if expected.get(k) is not None and expected[k] != got[k]}
    if clash:
        raise ValueError(
            f"{directory} was saved for a different base model ({expected['class']}"
            f"{' ' + repr(expected['name_or_path']) if expected['name_or_path'] else ''}, hidden size "
            f"{expected['hidden_size']}, {expected['num_layers']} layers); got "
            + ", ".join(f"{k}={g!r} instead of {e!r}" for k, (e, g) in clash.items()) + "."
        )
    model.cell.load_armt_state_dict(load_file(str(directory / WEIGHTS_NAME)), str(directory / WEIGHTS_NAME))
    return model
