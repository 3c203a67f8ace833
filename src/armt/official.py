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
