"""Finding the decoder layers of a causal LM (the known paths are in :mod:`armt.families`)."""

from __future__ import annotations

from torch import nn

from . import families


def _resolve(model: nn.Module, path: str) -> nn.Module:
    obj = model
    walked = []
    for attr in path.split("."):
        if not hasattr(obj, attr):
            where = ".".join(walked) or type(model).__name__
            raise ValueError(
                f"layers_path={path!r} does not exist on {type(model).__name__}: "
                f"{where} has no attribute {attr!r}. Candidates found in this model: "
                f"{_candidates(model) or 'none'}."
            )
        obj = getattr(obj, attr)
        walked.append(attr)
    return obj


def _num_layers(model: nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for name in ("num_hidden_layers", "n_layer", "num_layers"):
        value = getattr(config, name, None)
        if isinstance(value, int):
            return value
    return None


def _candidates(model: nn.Module) -> list[str]:
    n = _num_layers(model)
    return [
        name
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0 and (n is None or len(module) == n)
    ]


def find_decoder_layers(model: nn.Module, layers_path: str | None = None) -> tuple[str, nn.ModuleList]:
    """Return ``(path, layers)``: the ``nn.ModuleList`` of decoder layers of a causal LM.

    Args:
        model: a Hugging Face causal language model (possibly wrapped, e.g. by peft).
        layers_path: explicit dotted path; ``None`` uses the model family's known path, then
            looks for the one module list with ``config.num_hidden_layers`` entries.

    Example:
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> m = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=99))
        >>> find_decoder_layers(m)[0]
        'transformer.h'
    """
    if layers_path is not None:
        layers = _resolve(model, layers_path)
        if not isinstance(layers, nn.ModuleList) or len(layers) == 0:
            raise ValueError(
                f"layers_path={layers_path!r} points to a {type(layers).__name__} on "
                f"{type(model).__name__}, not a non-empty nn.ModuleList of decoder layers. "
                f"Candidates: {_candidates(model) or 'none'}."
            )
        return layers_path, layers

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    known = families.layers_path(model_type)
    if known is not None:
        try:
            return known, _resolve(model, known)
        except ValueError:
            pass  # wrapped models (peft) keep the layers deeper; search below
    found = _candidates(model)
    if len(found) == 1:
        return found[0], _resolve(model, found[0])
    raise ValueError(
        f"Cannot find the decoder layers of {type(model).__name__} "
        f"(model_type={model_type!r}); "
        + (f"several candidates {found}" if found else "no nn.ModuleList with one entry per layer")
        + ". Pass ARMTConfig(layers_path='dotted.path.to.layers')."
    )
