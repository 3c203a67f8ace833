"""Load checkpoints saved by the official ARMT code
(``AssociativeRecurrentWrapper`` / ``AssociativeMemoryCell`` state dicts)."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch
from torch import Tensor, nn

from .config import ARMTConfig
from .model import ARMTForCausalLM

_MEMORY_PARAM = re.compile(r"^model\.(?P<path>.+)\.(?P<idx>\d+)\.(?P<name>W_mq|W_mk|W_mv|W_mb)\.(?P<p>weight|bias)$")
_WRAPPED_BASE = re.compile(r"^model\.(?P<path>.+)\.(?P<idx>\d+)\.layer\.(?P<rest>.+)$")


def read_state_dict(path: str | os.PathLike) -> dict[str, Tensor]:
    """Tensors of a checkpoint file: safetensors, or a PyTorch file opened with
    ``weights_only=True`` (no arbitrary unpickling)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint {path!r} does not exist.")
    if path.endswith(".safetensors"):
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(path)
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{path!r} is not a readable safetensors file ({err}); it may be truncated.") from None
    import pickle

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"{path!r} is not a PyTorch checkpoint that can be opened safely ({first}). Only plain tensors are "
            "read (weights_only=True); files that need code to load are refused. Convert it to safetensors "
            "where you trust it."
        ) from err
    if isinstance(state, Mapping) and "model_state_dict" in state:
        state = state["model_state_dict"]
    if not isinstance(state, Mapping):
        raise ValueError(f"{path!r} holds a {type(state).__name__}, not a state dict.")
    return dict(state)


def convert_official_state_dict(state_dict: Mapping[str, Tensor]) -> tuple[dict, dict, dict[str, Any]]:
    """Split an official ARMT state dict into this library's names.

    Returns:
        ``(base_state_dict, armt_state_dict, inferred)``: the Hugging Face parameters of the
        base model, the ARMT parameters as named in :class:`armt.ARMTCell`
        (``memory_tokens``, ``sink``, ``memory_layers.<i>.W_m*``), and what the weights tell
        about the config (``num_mem_tokens``, ``d_mem``, ``n_heads``, ``gating``,
        ``use_sink``, ``layers_path``).

    Example:
        >>> import torch
        >>> layer = "memory_cell.model.transformer.h.0."
        >>> sd = {"memory_cell.memory": torch.zeros(4, 8), layer + "layer.ln_1.weight": torch.ones(8),
        ...       layer + "W_mq.weight": torch.zeros(2, 8), layer + "W_mk.weight": torch.zeros(2, 8),
        ...       layer + "W_mv.weight": torch.zeros(8, 8), layer + "W_mb.weight": torch.zeros(1, 8),
        ...       layer + "W_mb.bias": torch.zeros(1)}
        >>> base, armt_sd, info = convert_official_state_dict(sd)
        >>> sorted(base), info["layers_path"], info["d_mem"], info["n_heads"]
        (['transformer.h.0.ln_1.weight'], 'transformer.h', 2, 1)
    """
    base: dict[str, Tensor] = {}
    armt: dict[str, Tensor] = {}
    paths: set[str] = set()
    unknown = []
    for raw_name, tensor in state_dict.items():
        name = raw_name
        for prefix in ("module.", "memory_cell."):
            name = name.removeprefix(prefix)
        if name == "memory":
            armt["memory_tokens"] = tensor
        elif name == "sink":
            armt["sink"] = tensor
        elif name.startswith("layers."):
            continue  # aliases of the per-layer tensors, same storage
        elif (m := _MEMORY_PARAM.match(name)) is not None:
            paths.add(m["path"])
            armt[f"memory_layers.{m['idx']}.{m['name']}.{m['p']}"] = tensor
        elif (m := _WRAPPED_BASE.match(name)) is not None:
            paths.add(m["path"])
            base[f"{m['path']}.{m['idx']}.{m['rest']}"] = tensor
        elif name.startswith("model."):
            base[name[len("model."):]] = tensor
        else:
            unknown.append(raw_name)
    if unknown:
        raise ValueError(
            f"Names not from an official ARMT checkpoint: {unknown[:5]}"
            f"{' ...' if len(unknown) > 5 else ''}. Expected memory_cell.memory, "
            "memory_cell.model.<layers>.<i>.W_m*, memory_cell.model.<hf name>."
        )
    if "memory_tokens" not in armt or not paths:
        raise ValueError("No memory tokens or memory layers found: this is not an ARMT checkpoint.")
    layer_ids = sorted({int(k.split(".")[1]) for k in armt if k.startswith("memory_layers.")})
    required = ("W_mq.weight", "W_mk.weight", "W_mv.weight", "W_mb.weight", "W_mb.bias")
    lacking = [f"memory_layers.{i}.{w}" for i in layer_ids for w in required
               if f"memory_layers.{i}.{w}" not in armt]
    if lacking:
        raise ValueError(f"The checkpoint lacks ARMT weights {lacking[:5]}; it is incomplete or not from ARMT.")
    if len(paths) > 1:
        raise ValueError(f"Memory layers under several paths {sorted(paths)}; cannot tell the decoder layers.")
    num_mem_tokens, d_model = armt["memory_tokens"].shape
    d_mem = armt["memory_layers.0.W_mq.weight"].shape[0]
    n_beta = armt["memory_layers.0.W_mb.weight"].shape[0]
    gating = n_beta == d_model and d_model > 1
    inferred = dict(
        num_mem_tokens=int(num_mem_tokens),
        d_mem=int(d_mem),
        gating=bool(gating),
        use_sink="sink" in armt,
        layers_path=paths.pop(),
    )
    if not gating:
        inferred["n_heads"] = int(n_beta)
    return base, armt, inferred


def load_official_checkpoint(
    base_model: nn.Module,
    checkpoint: str | os.PathLike | Mapping[str, Tensor],
    config: ARMTConfig | None = None,
) -> ARMTForCausalLM:
    """Build an :class:`ARMTForCausalLM` from an official ARMT checkpoint.

    Args:
        base_model: a model of the same architecture as the one the checkpoint was trained
            from (its weights are replaced by the checkpoint's).
        checkpoint: a path (``.safetensors``, ``.bin``, ``.pt``) or a state dict.
        config: the options the weights cannot tell (``segment_size``, ``n_heads`` with
            gating, ``use_denom``, ``correction``, ...). Fields the weights tell are filled
            in where the config leaves them at their defaults; a contradiction is an error.

    Example:
        ``model = load_official_checkpoint(AutoModelForCausalLM.from_config(cfg), "model_best/pytorch_model.bin",
        ARMTConfig(segment_size=512))``
    """
    state = checkpoint if isinstance(checkpoint, Mapping) else read_state_dict(checkpoint)
    base_sd, armt_sd, inferred = convert_official_state_dict(state)
    if config is None:
        config = ARMTConfig(**inferred)
    else:
        # fields left at their defaults are filled from the weights; fields set otherwise must agree
        defaults = ARMTConfig()
        given = {k: getattr(config, k) for k in inferred if getattr(config, k) != getattr(defaults, k)}
        clash = {k: (v, inferred[k]) for k, v in given.items() if v != inferred[k]}
        if clash:
            raise ValueError(
                "The checkpoint contradicts the config: "
                + ", ".join(f"{k}={v!r} but the weights say {w!r}" for k, (v, w) in clash.items())
                + ". Drop these fields from the config or fix them."
            )
        config = replace(config, **inferred)
    model = ARMTForCausalLM(base_model, config)
    base_sd = _rename_heads(base_sd, set(base_model.state_dict()))
    try:
        missing, unexpected = base_model.load_state_dict(base_sd, strict=False)
    except RuntimeError as err:  # shape mismatches
        raise ValueError(
            f"The checkpoint's weights do not fit {type(base_model).__name__}: {err}. Build the base "
            "model from the config the checkpoint was trained with."
        ) from None
    tied = _tied_names(base_model)
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(
            f"The checkpoint's base weights do not fit {type(base_model).__name__}: "
            f"missing {missing[:5]}, unexpected {unexpected[:5]}. Build the base model from the "
            "config the checkpoint was trained with."
        )
    model.cell.load_armt_state_dict(armt_sd, "The checkpoint's ARMT weights")
    return model


# the same output head under the names of different transformers versions (GPT-NeoX: 4.x
# "embed_out", 5.x "lm_head")
_HEAD_NAMES = (("embed_out.weight", "lm_head.weight"),)


def _rename_heads(state: dict[str, Tensor], wanted: set[str]) -> dict[str, Tensor]:
    """``state`` with each head weight renamed to the name ``wanted`` (the model's) uses."""
    state = dict(state)
    for a, b in _HEAD_NAMES:
        for old, new in ((a, b), (b, a)):
            if old in state and old not in wanted and new in wanted and new not in state:
                state[new] = state.pop(old)
    return state


def _tied_names(model: nn.Module) -> set[str]:
    """Parameter names that share storage with another parameter (e.g. a tied lm_head)."""
    seen: dict[int, str] = {}
    tied = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
            tied.add(seen[id(p)])
        else:
            seen[id(p)] = name
    return tied


# --- the official code's Hugging Face folders (modeling_amt/model.py: config.json + weights) ---

# official ARMTConfig field -> armt's ARMTConfig field
OFFICIAL_FIELDS = {"num_mem_tokens": "num_mem_tokens", "d_mem": "d_mem", "segment_size": "segment_size",
                   "segment_alignment": "segment_alignment", "sliding_window": "sliding_window",
                   "use_sink": "use_sink", "layers_attr": "layers_path", "correction": "correction",
                   "n_heads": "n_heads", "use_denom": "use_denom", "gating": "gating"}
# official options armt does not have, accepted only at the value that switches them off
OFFICIAL_OFF = {"wrap_pos": False, "act_on": False, "attend_to_previous_input": False}
# settings that change nothing once the options above are off (or only training)
OFFICIAL_INERT = {"freeze_mem", "max_hop", "act_type", "act_format", "noisy_halting", "constant_depth",
                  "time_penalty", "base_model_name", "base_model_config"}
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def _official_folder_weights(folder) -> dict[str, Tensor]:
    """Every tensor of a saved folder (single or sharded, safetensors or weights-only .bin)."""
    import json
    from pathlib import Path

    folder = Path(folder)
    for name in WEIGHT_FILES:
        path = folder / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
            state: dict[str, Tensor] = {}
            for shard in shards:
                state.update(read_state_dict(folder / shard))
            return state
        return read_state_dict(path)
    raise FileNotFoundError(f"{folder} holds none of {', '.join(WEIGHT_FILES)}: no weights to convert.")


def official_folder_config(config: Mapping[str, Any]) -> dict[str, Any]:
    """armt's :class:`ARMTConfig` fields from an official ``config.json`` (``model_type: armt``),
    refusing what armt cannot reproduce.

    Example:
        >>> official_folder_config({"model_type": "armt", "architectures": ["ARMTForCausalLM"], "d_mem": 32,
        ...                         "segment_size": 128, "layers_attr": "transformer.h", "wrap_pos": False})
        {'d_mem': 32, 'segment_size': 128, 'layers_path': 'transformer.h'}
    """
    from transformers import PretrainedConfig

    if config.get("model_type") != "armt":
        raise ValueError(f"model_type={config.get('model_type')!r}: not a folder of the official ARMT code "
                         "(config.json with model_type 'armt'); for a bare state dict pass the file instead.")
    classes = config.get("architectures") or ["ARMTForCausalLM"]
    if any("InnerLoop" in c for c in classes):
        raise ValueError(
            f"architectures={classes}: the official inner-loop model runs every layer over the whole input with "
            "positions that continue across segments (memory tokens included) and keeps the first token "
            "outside the segments; armt computes the outer-loop ARMT (positions restart in every segment), "
            "so its outputs would differ. Only ARMTForCausalLM folders convert.")
    unknown_class = [c for c in classes if c != "ARMTForCausalLM"]
    if unknown_class:
        raise ValueError(f"architectures={classes}: only the official ARMTForCausalLM converts (the thinking and "
                         "other variants have no armt counterpart).")
    for name, off in OFFICIAL_OFF.items():
        if config.get(name, off) != off:
            raise ValueError(f"{name}={config[name]!r}: armt has no {name} (ACT, position wrapping and attending to "
                             f"the previous input are not implemented); only checkpoints with {name}={off!r} convert.")
    generic = set(PretrainedConfig().to_dict()) | {"transformers_version", "architectures", "model_type", "dtype",
                                                   "torch_dtype", "_name_or_path", "auto_map"}
    unknown = sorted(k for k in config if k not in OFFICIAL_FIELDS and k not in OFFICIAL_OFF
                     and k not in OFFICIAL_INERT and k not in generic)
    if unknown:
        raise ValueError(f"config.json sets {unknown}, which armt does not know; this folder comes from a newer or "
                         "another variant of the official code and cannot be converted faithfully.")
    return {ours: config[theirs] for theirs, ours in OFFICIAL_FIELDS.items() if theirs in config}


def load_official_folder(folder: str | os.PathLike, base: str | os.PathLike | None = None) -> ARMTForCausalLM:
    """Build an :class:`ARMTForCausalLM` from a folder that the official code's
    ``ARMTForCausalLM.save_pretrained`` wrote (``config.json`` with ``model_type: armt``, weights
    under ``armt.memory_cell.*``), as published on the Hub. The folder is read as data: no code
    of it runs (no ``trust_remote_code``), ``.bin`` files open weights-only.

    Args:
        folder: the folder (download a Hub repository first, e.g. ``huggingface_hub.snapshot_download``).
        base: where the base model's config comes from when the folder names it by
            ``base_model_name`` only (a local folder or a Hub name; default that name). Its
            weights are not needed: the folder holds them.

    Example:
        ``model = load_official_folder("armt_babilong_qa1")``
    """
    import json
    from pathlib import Path

    from transformers import AutoConfig, AutoModelForCausalLM

    folder = Path(folder)
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; pass the folder the official code saved (config.json and "
                                "weights), or a state-dict file with --base.")
    config = json.loads(path.read_text())
    fields = official_folder_config(config)
    base_config = config.get("base_model_config")
    name = base or config.get("base_model_name")
    if isinstance(base_config, Mapping):
        if "model_type" not in base_config:
            raise ValueError("base_model_config has no model_type; the folder is incomplete.")
        # what the saving library records about itself is not the model's config
        values = {k: v for k, v in base_config.items() if k not in ("transformers_version", "_name_or_path")}
        resolved = AutoConfig.for_model(values.pop("model_type"), **values)
    elif isinstance(base_config, str) or name:
        source = str(base) if base is not None else (base_config if isinstance(base_config, str) else name)
        try:
            resolved = AutoConfig.from_pretrained(source)
        except OSError as err:
            raise ValueError(f"the base model's config {source!r} could not be read ({err}); pass base= a local "
                             "folder holding it (its config.json is enough).") from None
    else:
        raise ValueError("config.json names no base model (base_model_config or base_model_name).")
    torch.manual_seed(0)  # every weight is overwritten by the folder's
    base_model = AutoModelForCausalLM.from_config(resolved)
    state = _official_folder_weights(folder)
    stray = [k for k in state if not k.startswith("armt.")]
    if stray:
        raise ValueError(f"weights outside armt.* ({stray[:3]}): not the official ARMTForCausalLM's folder.")
    state = {k[len("armt."):]: v for k, v in state.items()}
    # every field of config.json was written by the official code: each must agree with the weights
    # (load_official_checkpoint can only check fields set away from armt's defaults)
    inferred = convert_official_state_dict(state)[2]
    clash = {k: (fields[k], v) for k, v in inferred.items() if k in fields and fields[k] != v}
    if clash:
        raise ValueError("config.json contradicts the weights: " + ", ".join(
            f"{k}={given!r} but the weights say {told!r}" for k, (given, told) in clash.items())
            + "; the folder is inconsistent.")
    return load_official_checkpoint(base_model, state, ARMTConfig(**fields))
