"""ARMTConfig: every option of the associative memory, validated at construction."""

from __future__ import annotations

import argparse
import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from .checks import InputTypeError, check_positive_int

ALIGNMENTS = ("left", "right", "center")
MEMORY_DTYPES = ("float32", "float64", "bfloat16", "float16")
MEMORY_KINDS = ("associative", "tokens", "none")
WRITE_GATES = ("sigmoid", "hard")


@dataclass
class ARMTConfig:
    """Options of an Associative Recurrent Memory Transformer.

    Args:
        num_mem_tokens: learned memory tokens appended at the end of every segment; their
            outputs are what each layer writes into its associative memory.
        d_mem: width of the memory keys before the DPFP feature map
            (the key dimension is ``2 * dpfp_nu * d_mem``).
        segment_size: real tokens per segment (memory and sink tokens come on top).
        n_heads: independent associative memories per layer; must divide ``d_mem`` and the
            model width.
        dpfp_nu: order of the DPFP feature map (the official code uses 3).
        correction: scale the normaliser update by the detached ``gamma`` (the delta-rule
            correction of the official code).
        use_denom: keep the normaliser ``z`` and divide reads by ``q . z``.
        gating: one write strength per value dimension instead of one per head.
        use_sink: prepend one learned attention-sink token to every segment.
        segment_alignment: where a short segment goes when the length is not a multiple of
            ``segment_size``: ``left`` (last segment short), ``right`` (first segment short)
            or ``center`` (equal segments, as ``torch.chunk``).
        layers_path: dotted attribute path of the decoder layers inside the base model, for
            example ``"model.layers"``; ``None`` detects it.
        bptt_segments: detach the memory every this many segments (truncated
            backpropagation through time); ``None`` backpropagates through all segments.
        gradient_checkpointing: recompute each segment in the backward pass instead of
            keeping its activations (the model's starting value; the config itself is frozen,
            ``model.gradient_checkpointing_enable()`` switches the model's flag).
        last_segment_loss_only: compute the loss on the pairs inside the last segment only
            (what the official code does when asked for the last segment's output).
        memory_dtype: dtype of the memory state (``A``, ``z``) and of the read/write maths,
            e.g. ``"float32"`` for a bf16 model over millions of tokens; ``None`` follows the
            base model's dtype, except float16, where the state is float32 (float16's range is
            passed within tens of thousands of tokens).
        sliding_window: every segment also attends to the keys and values of the previous
            segment's real tokens (kept detached in the memory state; not its memory tokens nor
            its sink): token ``i`` sees the window of ``segment_size`` tokens that ends right
            before it, memory tokens see the whole window. Positions stay bounded: the sink
            sits at 0, the window at ``sink .. sink + W - 1`` and the segment after it, so the
            base model needs ``sink + 2 * segment_size + num_mem_tokens`` positions. For RoPE
            models the window's keys are re-rotated so that every distance is the true one.
            Needs ``attn_implementation`` ``"sdpa"`` or ``"eager"`` and a GPT-2, GPT-NeoX,
            Llama, Qwen2 or Mistral base (see :mod:`armt.window`).
        memory: ``"associative"`` (ARMT), ``"tokens"`` or ``"none"``. ``"tokens"`` is the
            Recurrent Memory Transformer baseline (RMT, arXiv 2207.06881 / 2304.11062, decoder
            form) in the same model. RMT has no associative memory: each segment is ``[read
            memory, tokens, write memory]`` (``num_mem_tokens`` each); the read memory is the
            learned memory tokens in the first segment and the write tokens' final hidden states
            of the segment before afterwards (the write tokens enter as copies of the read memory,
            as in the RMT code); the state carries those ``(batch, num_mem_tokens, d_model)``
            states in ``MemoryState.tokens``. ``d_mem``, ``n_heads``, ``dpfp_nu``,
            ``correction``, ``use_denom``, ``gating``, ``memory_dtype`` and ``write_gate`` are
            then ignored; ``sliding_window`` is not supported with it. ``"none"`` is the
            no-memory baseline of the same model: no memory tokens, no associative read or write
            and no memory parameters, while the segmentation, the sliding window and the sink
            stay as configured. Each segment then sees only itself (and the window), so comparing
            it with ARMT measures what the memory adds; the memory's options are ignored and the
            state carries only the window (its ``A`` are empty ``(batch, 0)`` tensors). Configs
            saved with the earlier switch ``use_memory: false`` load as ``"none"``
            (:meth:`from_dict`); :attr:`use_memory` reads ``memory != "none"``.
        wavefront: run forward passes without gradients, reading and the context of
            ``generate`` along the diagonals (all layers at once, one segment apart;
            :mod:`armt.wavefront`): the same outputs in fewer, larger operations. Where it
            cannot apply, the segments run one by one as usual: in training mode with dropout,
            for padded batches, for ``segment_alignment`` other than ``left``, and for fewer
            than two full segments. Training through it is asked for per call
            (``model(..., wavefront=True)``): it pays only for small models.
            Needs the associative memory without the sliding window, a base family in
            ``armt.families.SUPPORTED_TYPES`` and no peft adapters (checked when the model
            is built). A call option overrides it (``model(..., wavefront=...)``,
            ``model.read(..., wavefront=...)``).
        write_gate: how the write strength ``beta`` comes from ``W_mb``: ``"sigmoid"`` (the
            official maths) or ``"hard"``: ``beta = clip(x / 4 + 1/2, 0, 1)`` (the sigmoid's slope
            at 0, but exactly 0 below -2 and 1 above 2) and the normaliser update weighted by
            ``beta`` too (``z += gamma beta k``), so a token the model chooses not to write leaves
            ``A`` and ``z`` exactly as they were, however many such tokens follow. What it is for
            (reading far beyond the training length) is measured in ``docs/results/length.md``.

    The options are frozen once built: derive a changed config with ``dataclasses.replace``.
    (Attributes that are not options may still be set: the Hugging Face Trainer records
    ``use_cache`` on every model's config; ARMT ignores them.)

    Example:
        >>> cfg = ARMTConfig(num_mem_tokens=16, d_mem=64, segment_size=512)
        >>> cfg.d_key
        384
        >>> dataclasses.replace(cfg, segment_size=256).segment_size
        256
    """

    num_mem_tokens: int = 16
    d_mem: int = 64
    segment_size: int = 512
    n_heads: int = 1
    dpfp_nu: int = 3
    correction: bool = True
    use_denom: bool = True
    gating: bool = False
    use_sink: bool = False
    segment_alignment: str = "left"
    layers_path: str | None = None
    bptt_segments: int | None = None
    gradient_checkpointing: bool = False
    last_segment_loss_only: bool = False
    memory_dtype: str | None = None
    sliding_window: bool = False
    memory: str = "associative"
    wavefront: bool = False
    write_gate: str = "sigmoid"

    def __post_init__(self) -> None:
        check_positive_int(self, "num_mem_tokens", "ARMT writes memory from memory tokens, so it needs at least one.")
        check_positive_int(self, "d_mem", "Use the key width of the memory, e.g. 64.")
        check_positive_int(self, "segment_size", "Use the number of real tokens per segment, e.g. 512.")
        check_positive_int(self, "n_heads", "Use 1 for a single memory per layer.")
        check_positive_int(self, "dpfp_nu", "The official code uses 3.")
        if self.d_mem % self.n_heads != 0:
            raise ValueError(
                f"d_mem={self.d_mem} is not divisible by n_heads={self.n_heads}; "
                "choose d_mem as a multiple of n_heads."
            )
        if self.segment_alignment not in ALIGNMENTS:
            raise ValueError(
                f"segment_alignment={self.segment_alignment!r} is unknown; use one of {ALIGNMENTS}."
            )
        if self.bptt_segments is not None:
            check_positive_int(self, "bptt_segments", "Use None to backpropagate through every segment.")
        if self.layers_path is not None and (not isinstance(self.layers_path, str) or not self.layers_path.strip(".")):
            raise ValueError(
                f"layers_path={self.layers_path!r} is not a dotted attribute path; "
                "use e.g. 'model.layers', or None to detect it."
            )
        if self.memory_dtype is not None and self.memory_dtype not in MEMORY_DTYPES:
            raise ValueError(
                f"memory_dtype={self.memory_dtype!r} is unknown; use one of {MEMORY_DTYPES} or None "
                "(the base model's dtype)."
            )
        if self.write_gate not in WRITE_GATES:
            raise ValueError(f"write_gate={self.write_gate!r} is unknown; use one of {WRITE_GATES} ('sigmoid' is "
                             "the official maths).")
        if self.memory not in MEMORY_KINDS:
            raise ValueError(
                f"memory={self.memory!r} is unknown; use 'associative' (ARMT), 'tokens' (the RMT baseline) or "
                "'none' (no memory)."
            )
        if self.memory == "tokens" and self.sliding_window:
            raise ValueError(
                "memory='tokens' (RMT) does not support sliding_window=True; use memory='associative' "
                "or sliding_window=False."
            )
        if self.wavefront is True and (self.sliding_window or self.memory != "associative"):
            raise ValueError(
                "wavefront=True needs the associative memory without the sliding window (memory='associative', "
                "sliding_window=False); set wavefront=False."
            )
        for name in ("correction", "use_denom", "gating", "use_sink", "gradient_checkpointing",
                     "last_segment_loss_only", "sliding_window", "wavefront"):
            if not isinstance(getattr(self, name), bool):
                raise InputTypeError(f"{name} must be True or False, got {getattr(self, name)!r}.")
        object.__setattr__(self, "_frozen", True)

    def __setattr__(self, name: str, value: Any) -> None:
        if self.__dict__.get("_frozen") and name in _OPTION_NAMES:
            raise dataclasses.FrozenInstanceError(
                f"cannot assign to ARMTConfig.{name}: the config is frozen once built; use "
                f"dataclasses.replace(config, {name}=...) and build a new model (weights move with "
                "model.cell.load_armt_state_dict)."
            )
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        if name in _OPTION_NAMES:
            raise dataclasses.FrozenInstanceError(f"cannot delete ARMTConfig.{name}: the config is frozen.")
        object.__delattr__(self, name)

    @property
    def use_memory(self) -> bool:
        """False for the no-memory baseline (``memory="none"``)."""
        return self.memory != "none"

    @property
    def token_memory(self) -> bool:
        """True for the RMT baseline (``memory="tokens"``)."""
        return self.memory == "tokens"

    @property
    def read_tokens_per_segment(self) -> int:
        """Memory tokens placed before a segment's tokens: ``num_mem_tokens`` for RMT, else 0."""
        return self.num_mem_tokens if self.token_memory else 0

    @property
    def memory_tokens_per_segment(self) -> int:
        """Memory tokens actually appended after a segment's tokens (the written ones):
        ``num_mem_tokens``, or 0 without memory.

        Example:
            >>> [ARMTConfig(memory=m).memory_tokens_per_segment for m in ("associative", "none")]
            [16, 0]
        """
        return self.num_mem_tokens if self.use_memory else 0

    @property
    def d_key(self) -> int:
        """Width of the memory keys after DPFP, summed over heads."""
        return 2 * self.dpfp_nu * self.d_mem

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def to_json_string(self, *args, **kwargs) -> str:
        """Hugging Face config spelling of :meth:`to_json` (TensorBoard logging calls it)."""
        return self.to_json()

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ARMTConfig:
        """Build a config from a dict, refusing keys this version does not know. The earlier
        switch ``use_memory`` is read too: ``false`` is ``memory="none"``.

        Example:
            >>> ARMTConfig.from_dict({"use_memory": False}).memory
            'none'
        """
        values = legacy_keys(values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"Unknown ARMTConfig keys {unknown}; known keys are {sorted(known)}.")
        return cls(**values)


_OPTION_NAMES = frozenset(f.name for f in dataclasses.fields(ARMTConfig))


def legacy_keys(values: dict[str, Any]) -> dict[str, Any]:
    """``values`` with the keys of earlier versions in today's spelling: ``use_memory: false``
    becomes ``memory: "none"`` (whatever ``memory`` said: no memory of any kind ran), and
    ``use_memory: true`` is dropped."""
    if "use_memory" not in values:
        return values
    values = dict(values)
    use = values.pop("use_memory")
    if not isinstance(use, bool):
        raise InputTypeError(f"use_memory must be true or false, got {use!r}; today's spelling is memory: none.")
    if not use:
        values["memory"] = "none"
    elif values.get("memory") == "none":
        raise ValueError("use_memory: true contradicts memory: none; give only memory.")
    return values

# how a model is run or trained, not what its weights mean: a saved model may continue with
# other values of these (armt.training.run, ``from_pretrained(options=...)``)
RUN_OPTIONS = frozenset({"bptt_segments", "gradient_checkpointing", "last_segment_loss_only", "wavefront"})


def with_run_options(config: ARMTConfig, options: dict[str, Any]) -> ARMTConfig:
    """``config`` with some of its :data:`RUN_OPTIONS` replaced; any other key is refused,
    since it would change what the saved weights mean.

    Example:
        >>> with_run_options(ARMTConfig(), {"bptt_segments": 4}).bptt_segments
        4
        >>> with_run_options(ARMTConfig(), {"d_mem": 32})
        Traceback (most recent call last):
        ...
        ValueError: d_mem is not a run-time option: it changes what a saved model's weights mean. Only bptt_segments, gradient_checkpointing, last_segment_loss_only, wavefront can differ from the saved config.
    """
    other = sorted(set(options) - RUN_OPTIONS)
    if other:
        raise ValueError(f"{', '.join(other)} {'is' if len(other) == 1 else 'are'} not a run-time option: it changes "
                         f"what a saved model's weights mean. Only {', '.join(sorted(RUN_OPTIONS))} can differ "
                         "from the saved config.")
    return dataclasses.replace(config, **options)


class OptionError(ValueError, argparse.ArgumentTypeError):
    """A bad ``NAME=VALUE`` option: a ``ValueError`` whose message argparse also shows as it is."""


def parse_option(text: str) -> tuple[str, Any]:
    """``"NAME=VALUE"`` -> ``(NAME, VALUE)`` for an :class:`ARMTConfig` field given on a command
    line; the value is read as JSON where it parses (numbers, true/false, null), else kept as text.

    Example:
        >>> parse_option("write_gate=hard"), parse_option("bptt_segments=4")
        (('write_gate', 'hard'), ('bptt_segments', 4))
    """
    name, sep, value = text.partition("=")
    if not sep or not name or name not in _OPTION_NAMES:
        raise OptionError(f"{text!r} is not NAME=VALUE with an ARMTConfig field as NAME, e.g. write_gate=hard; the "
                         f"fields are {sorted(_OPTION_NAMES)}.")
    try:
        return name, json.loads(value)
    except json.JSONDecodeError:
        return name, value
