"""One segment of ARMT: ``[sink?, tokens, memory tokens]`` through the base model, with every
layer reading and writing its associative memory, giving logits and the new memory state.
For the RMT baseline (``memory="tokens"``) the segment is ``[sink?, read memory, tokens, write
memory]`` and the write tokens' final hidden states are the new state."""

from __future__ import annotations

import inspect
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager

import torch
from torch import Tensor, nn

from . import families
from . import window as sliding
from .adapters import unwrap_adapters
from .config import ARMTConfig
from .layers import AssociativeMemory
from .state import LayerMemory, MemoryState
from .targets import find_decoder_layers
from .checks import InputTypeError


def _segment_inputs(embeds: Tensor, token_mask: Tensor | None, offset: int, T: int) -> dict:
    """Keyword arguments of the base model for one segment ``embeds`` whose tokens sit at
    ``offset .. offset + T``: the mask over the whole segment (``token_mask`` there, 1 for the
    sink and memory tokens) and, when something is padded, position ids that skip the padding,
    so that the memory tokens after a row's last real token sit where they sit when the row
    runs alone."""
    kwargs = dict(inputs_embeds=embeds, attention_mask=None, use_cache=False, return_dict=True)
    if token_mask is None:
        return kwargs
    full = torch.ones(embeds.shape[:2], dtype=token_mask.dtype, device=token_mask.device)
    full[:, offset:offset + T] = token_mask
    kwargs["attention_mask"] = full
    if not bool(full.all()):
        kwargs["position_ids"] = (full.long().cumsum(1) - 1).clamp(min=0)
    return kwargs


class ARMTCell(nn.Module):
    """The memory parameters of ARMT and one segment's forward pass.

    Holds the base model (its decoder layers get hooks while a segment runs, nothing is replaced), the memory
    tokens (``randn * std(input embeddings)``, as the official code), the optional sink token
    and one :class:`AssociativeMemory` per decoder layer. With ``memory="none"`` there are
    no memory tokens, memories or hooks: the segment runs through the plain base model (with
    the sink and the window, if configured).

    Example:
        >>> import torch
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> base = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=99))
        >>> cell = ARMTCell(base, ARMTConfig(num_mem_tokens=4, d_mem=8, segment_size=16))
        >>> logits, state = cell(base.get_input_embeddings()(torch.randint(99, (1, 16))), None, None)
        >>> logits.shape, len(state.layers)
        (torch.Size([1, 16, 99]), 2)
    """

    def __init__(self, base_model: nn.Module, config: ARMTConfig):
        super().__init__()
        self.config = config
        self.base_model = base_model
        self.layers_path, layers = find_decoder_layers(unwrap_adapters(base_model), config.layers_path)
        # a plain list: the layers belong to the base model, not to the cell's own parameters
        self.decoder_layers = list(layers)
        embeddings = base_model.get_input_embeddings()
        if embeddings is None or not hasattr(embeddings, "weight"):
            raise InputTypeError(
                f"{type(base_model).__name__} has no input embeddings; ARMT needs a causal LM "
                "with get_input_embeddings()."
            )
        weight = embeddings.weight
        if weight.is_meta:
            raise ValueError(
                f"{type(base_model).__name__} is on the meta device (its weights were never loaded); load it with "
                "from_pretrained(...) or call to_empty(device=...) and initialise it before wrapping."
            )
        self.d_model = weight.shape[-1]
        kw = dict(device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            scale = weight.float().std().to(weight.dtype)
        self.num_mem_tokens = config.memory_tokens_per_segment
        self._num_layers = len(layers)
        if config.use_memory:
            self.memory_tokens = nn.Parameter(torch.randn(self.num_mem_tokens, self.d_model, **kw) * scale)
        else:
            # no parameter, but the same (0, d_model) shape, dtype and device for the code that
            # appends memory tokens or asks where the model lives
            self.register_buffer("memory_tokens", torch.zeros(0, self.d_model, **kw), persistent=False)
        self.sink = nn.Parameter(torch.randn(1, self.d_model, **kw)) if config.use_sink else None
        self.token_memory = config.token_memory
        self.num_read_tokens = config.read_tokens_per_segment
        associative = config.use_memory and not self.token_memory
        self.memory_layers = nn.ModuleList(AssociativeMemory(self.d_model, config, **kw)
                                           for _ in (layers if associative else ()))
        self._logits_to_keep = "logits_to_keep" in inspect.signature(self.runner.forward).parameters
        positions = int(config.use_sink) + config.read_tokens_per_segment + config.segment_size + self.num_mem_tokens
        limit = families.position_table(getattr(self.runner, "config", None))
        if not config.sliding_window and limit is not None and positions > limit:
            raise ValueError(
                f"a segment takes {positions} positions (sink + memory tokens + segment_size={config.segment_size}), "
                f"but {type(self.runner).__name__} has a position table of {limit}; use segment_size <= "
                f"{limit - positions + config.segment_size}."
            )
        if config.sliding_window:  # refuse unsupported bases now, not at the first call
            sliding.rotary_module(self.runner)
            sliding.check_positions(self.runner, int(config.use_sink) + 2 * config.segment_size
                                    + self.num_mem_tokens, config.segment_size)

    def prefix_embeds(self, memory: MemoryState | None, batch_size: int) -> Tensor | None:
        """What precedes a segment's tokens: the sink and, for RMT, the read memory
        (``(B, P, d_model)``), or ``None`` when nothing does."""
        parts = []
        if self.sink is not None:
            parts.append(self.sink.unsqueeze(0).expand(batch_size, -1, -1))
        if self.token_memory:
            parts.append(self._read_tokens(memory, batch_size))
        return torch.cat(parts, dim=1) if parts else None

    def _read_tokens(self, memory: MemoryState | None, batch_size: int) -> Tensor:
        if memory is None:
            return self.memory_tokens.unsqueeze(0).expand(batch_size, -1, -1)
        return memory.tokens.to(self.memory_tokens.dtype)

    @property
    def runner(self) -> nn.Module:
        """The module called for a segment (the base model, or the model inside a peft wrapper)."""
        return unwrap_adapters(self.base_model)

    @property
    def _backbone(self) -> nn.Module | None:
        """The base model without its language-model head, for segments whose logits nobody
        needs (``None`` when the model does not expose one)."""
        backbone = getattr(self.runner, "base_model", None)
        return backbone if isinstance(backbone, nn.Module) and backbone is not self.runner else None

    @property
    def head(self) -> nn.Module | None:
        """The language-model head when the logits are exactly ``head(hidden)`` of the base
        model's last hidden states (the fully supported families; ``None`` otherwise, e.g. for
        models that scale or cap their logits). ``forward(..., return_hidden=True)`` then gives
        those hidden states, and a loss can recompute the logits in the backward pass instead of
        keeping them (:func:`armt.loss.head_pair_nll`)."""
        if self._backbone is None or families.family_of(getattr(self.runner, "config", None)) is None:
            return None
        return self.runner.get_output_embeddings()

    @property
    def vocab_size(self) -> int:
        """Rows of the input embedding: token ids must lie in ``0 .. vocab_size - 1``."""
        return self.base_model.get_input_embeddings().weight.shape[0]

    @property
    def num_layers(self) -> int:
        """Decoder layers of the base model (each has a memory, unless ``memory="none"``)."""
        return self._num_layers

    def armt_state_dict(self) -> dict[str, Tensor]:
        """The ARMT weights only (memory tokens, sink, per-layer projections), no base weights."""
        out = {"memory_tokens": self.memory_tokens.detach()} if self.config.use_memory else {}
        if self.sink is not None:
            out["sink"] = self.sink.detach()
        out.update({f"memory_layers.{k}": v for k, v in self.memory_layers.state_dict().items()})
        return out

    def load_armt_state_dict(self, weights: Mapping[str, Tensor], source: str) -> None:
        """Load exactly the ARMT weights; anything missing, extra or misshapen is an error
        naming ``source``."""
        expected = self.armt_state_dict()
        missing = sorted(set(expected) - set(weights))
        unexpected = sorted(set(weights) - set(expected))
        wrong = [f"{k} {tuple(weights[k].shape)} != {tuple(v.shape)}" for k, v in expected.items()
                 if k in weights and weights[k].shape != v.shape]
        if missing or unexpected or wrong:
            raise ValueError(
                f"{source} does not fit this ARMT model: missing {missing[:5]}, unexpected "
                f"{unexpected[:5]}, wrong shapes {wrong[:5]}. It was made with another ARMTConfig or base."
            )
        with torch.no_grad():
            for name, tensor in expected.items():
                tensor.copy_(weights[name])

    def check_memory(self, memory: MemoryState | None, batch_size: int) -> None:
        """Raise if ``memory`` was not made by a model of this config for this batch size."""
        if memory is None:
            return
        if not isinstance(memory, MemoryState):
            raise InputTypeError(f"memory must be a MemoryState or None, got {type(memory).__name__}.")
        if len(memory.layers) != self.num_layers:
            raise ValueError(
                f"memory has {len(memory.layers)} layers but this model has {self.num_layers}; "
                "it was made by another model."
            )
        associative = self.config.use_memory and not self.token_memory
        if self.token_memory and memory.tokens is None:
            raise ValueError("memory holds no RMT memory tokens but this model has memory='tokens': the state comes "
                             "from an ARMT (associative) model or another config. Pass memory=None to start afresh.")
        if not self.token_memory and memory.tokens is not None:
            raise ValueError("memory holds RMT memory tokens but this model has memory="
                             f"{self.config.memory!r}: the state comes "
                             "from another config.")
        want_dtype = self.memory_layers[0].state_dtype if associative else None
        want_dtype = want_dtype or self.memory_tokens.dtype
        tensors = [m.A for m in memory.layers if associative] + ([memory.tokens] if self.token_memory else [])
        if any(t.dtype != want_dtype for t in tensors):
            raise ValueError(
                f"memory holds {tensors[0].dtype} tensors but this model keeps its memory in {want_dtype}; "
                f"convert it first with memory.to({want_dtype})."
            )
        if self.token_memory:
            want = (batch_size, self.num_mem_tokens, self.d_model)
            if tuple(memory.tokens.shape) != want:
                raise ValueError(
                    f"memory.tokens has shape {tuple(memory.tokens.shape)}, expected {want} (memory='tokens'): the "
                    "state comes from another config or batch size. Pass memory=None to start afresh."
                )
        use_memory = associative
        expected = self.memory_layers[0].empty_shape(batch_size, self.d_model) if use_memory else (batch_size, 0)
        for i, m in enumerate(memory.layers):
            if tuple(m.A.shape) != expected:
                what = ("batch size" if tuple(m.A.shape[1:]) == expected[1:] else "config")
                raise ValueError(
                    f"memory.layers[{i}].A has shape {tuple(m.A.shape)}, expected {expected}: "
                    f"the state comes from another {what}. Pass memory=None to start afresh."
                )
            if not use_memory:
                if m.z is not None:
                    raise ValueError(f"memory.layers[{i}].z is present but this model has no associative "
                                     "memory: the state comes from another config.")
            elif (m.z is None) == self.config.use_denom:
                raise ValueError(
                    f"memory.layers[{i}].z is {'missing' if m.z is None else 'present'} but "
                    f"use_denom={self.config.use_denom}: the state comes from another config."
                )
            elif m.z is not None and (tuple(m.z.shape) != expected[:-1] or m.z.dtype != m.A.dtype):
                raise ValueError(
                    f"memory.layers[{i}].z is {m.z.dtype} {tuple(m.z.shape)}, expected {m.A.dtype} {expected[:-1]}: "
                    "the state was not made by this model. Pass memory=None to start afresh."
                )
        windowed = memory.window_mask is not None
        if windowed != self.config.sliding_window:
            raise ValueError(
                f"memory {'holds' if windowed else 'has no'} sliding window but sliding_window="
                f"{self.config.sliding_window}: the state comes from another config."
            )
        if windowed:
            W = memory.window_length
            if tuple(memory.window_mask.shape) != (batch_size, W) or memory.window_mask.dtype != torch.bool:
                raise ValueError(
                    f"memory.window_mask is {memory.window_mask.dtype} {tuple(memory.window_mask.shape)}, "
                    f"expected bool {(batch_size, W)}; build states with the model, not by hand."
                )
            for i, m in enumerate(memory.layers):
                shapes = [None if t is None else tuple(t.shape) for t in (m.window_keys, m.window_values)]
                if any(s is None or s[0] != batch_size or s[2] != W for s in shapes):
                    raise ValueError(
                        f"memory.layers[{i}] window keys/values have shapes {shapes}, expected "
                        f"(batch={batch_size}, heads, W={W}, head_dim): the state is inconsistent."
                    )

    @contextmanager
    def reading(self, memory: MemoryState | None) -> Iterator[None]:
        """Within this context every decoder layer reads ``memory`` and nothing is written:
        the base model can then run any number of times (Hugging Face ``generate`` with its
        key/value cache) as the last segment of an ARMT sequence, without memory tokens."""
        layers = [None] * self.num_layers if memory is None else memory.layers
        with ExitStack() as stack:
            for i, mem in enumerate(self.memory_layers):
                stack.enter_context(mem.bind(self.decoder_layers[i], layers[i], self.num_mem_tokens, write=False))
            yield

    def forward(
        self,
        inputs_embeds: Tensor,
        attention_mask: Tensor | None,
        memory: MemoryState | None,
        compute_logits: bool = True,
        last_logits_only: bool = False,
        return_hidden: bool = False,
    ) -> tuple[Tensor | None, MemoryState]:
        """Run one segment.

        With ``sliding_window`` the segment also attends to the window in ``memory`` (see
        :mod:`armt.window`), and the returned state holds this segment's tokens as the next
        window.

        Args:
            inputs_embeds: ``(B, T, d_model)`` embeddings of the segment's tokens.
            attention_mask: ``(B, T)`` padding mask of those tokens, or ``None`` (all real).
            memory: the state after the previous segment, ``None`` before the first.
            compute_logits: skip the language-model head when False.
            last_logits_only: return the logits of the last token only, ``(B, 1, vocab)``.
            return_hidden: return the base model's last hidden states ``(B, T, d_model)``, the
                input of :attr:`head`, instead of the logits (needs :attr:`head`).

        Returns:
            ``(logits (B, T, vocab) (the hidden states with return_hidden) or None, new memory state)``.
        """
        if return_hidden and self.head is None:
            raise ValueError(
                f"return_hidden=True needs a base model whose logits are head(last hidden state); "
                f"{type(self.runner).__name__} is not one armt knows (use compute_logits instead)."
            )
        B, T, _ = inputs_embeds.shape
        M = self.num_mem_tokens
        if self.token_memory:
            return self._forward_tokens(inputs_embeds, attention_mask, memory, compute_logits, last_logits_only,
                                        return_hidden)
        parts = [inputs_embeds, self.memory_tokens.unsqueeze(0).expand(B, -1, -1)]
        offset = 0
        if self.sink is not None:
            parts.insert(0, self.sink.unsqueeze(0).expand(B, -1, -1))
            offset = 1
        embeds = torch.cat(parts, dim=1)  # (B, offset + T + M, d_model)
        kwargs = _segment_inputs(embeds, attention_mask, offset, T)
        attention_mask = kwargs["attention_mask"]
        backbone = self._backbone if return_hidden or not compute_logits else None
        if self.config.sliding_window:
            cache, rotary, W = self._window_inputs(kwargs, inputs_embeds, attention_mask, memory,
                                                   backbone or self.runner)

        layers = [None] * self.num_layers if memory is None else memory.layers
        with ExitStack() as stack:
            ios = [stack.enter_context(mem.bind(self.decoder_layers[i], layers[i], M))
                   for i, mem in enumerate(self.memory_layers)]
            if backbone is not None:
                hidden = backbone(**kwargs).last_hidden_state
                logits = hidden[:, offset:offset + T] if return_hidden else None
            elif compute_logits and self._logits_to_keep:
                first = offset + T - 1 if last_logits_only else offset
                keep = torch.arange(first, offset + T, device=embeds.device)
                logits = self.runner(**kwargs, logits_to_keep=keep).logits
            else:
                first = offset + T - 1 if last_logits_only else offset
                logits = self.runner(**kwargs).logits[:, first:offset + T]
                logits = logits if compute_logits else None
        missing = [i for i, io in enumerate(ios) if io.written is None]
        if missing:
            raise RuntimeError(
                f"decoder layers {missing} of {type(self.base_model).__name__} did not run during the "
                f"segment; check layers_path={self.layers_path!r}."
            )
        if self.config.use_memory:
            written = tuple(io.written for io in ios)
        else:  # nothing is written: empty placeholders that carry the window below
            empty = embeds.new_zeros(B, 0)
            written = tuple(LayerMemory(empty, None) for _ in range(self.num_layers))
        segments, counts = (1, None) if memory is None else memory.advanced()
        if not self.config.sliding_window:
            return logits, MemoryState(written, segments, counts=counts)
        valid = torch.ones(B, T, dtype=torch.bool, device=embeds.device) if attention_mask is None \
            else attention_mask[:, offset:offset + T].bool()
        # the segment's tokens sat at positions offset + W.. and become the window at offset..
        written, window_mask = sliding.new_window(cache, written, W + offset, valid, rotary, offset + W, offset)
        return logits, MemoryState(written, segments, window_mask, counts=counts)

    def _forward_tokens(self, inputs_embeds, attention_mask, memory, compute_logits, last_logits_only,
                        return_hidden=False):
        """One RMT segment: ``[sink?, read, tokens, write]``; the write tokens' final hidden
        states (after the base model's last norm) are the next segment's read memory."""
        B, T, _ = inputs_embeds.shape
        M = self.num_mem_tokens
        read = self._read_tokens(memory, B)
        prefix = self.prefix_embeds(memory, B)
        offset = prefix.shape[1]
        embeds = torch.cat([prefix, inputs_embeds, read], dim=1)  # write tokens start as the read memory
        kwargs = _segment_inputs(embeds, attention_mask, offset, T)
        first = offset + T - 1 if last_logits_only else offset
        backbone = self._backbone
        head = self.runner.get_output_embeddings()
        if backbone is not None and head is not None:
            hidden = backbone(**kwargs).last_hidden_state
            if return_hidden:
                logits = hidden[:, offset:offset + T]
            else:
                logits = head(hidden[:, first:offset + T]) if compute_logits else None
        else:  # no separate backbone: the last entry of hidden_states is the normed output
            out = self.runner(**kwargs, output_hidden_states=True)
            hidden = out.hidden_states[-1]
            logits = out.logits[:, first:offset + T] if compute_logits else None
        empty = embeds.new_zeros(B, 0)
        layers = tuple(LayerMemory(empty, None) for _ in range(self.num_layers))
        segments, counts = (1, None) if memory is None else memory.advanced()
        return logits, MemoryState(layers, segments, tokens=hidden[:, -M:], counts=counts)

    def _window_inputs(self, kwargs, inputs_embeds, attention_mask, memory, module):
        """Point ``kwargs`` at the window: a cache pre-filled with it, positions after it and the
        explicit mask of :func:`armt.window.window_mask`. Returns ``(cache, rotary, W)``."""
        rotary = sliding.rotary_module(self.runner)
        B, T, _ = inputs_embeds.shape
        M, o = self.num_mem_tokens, int(self.sink is not None)
        W = 0 if memory is None else memory.window_length
        device = inputs_embeds.device
        cache = sliding.prefilled_cache(memory)
        kwargs.update({"use_cache": True, sliding.cache_argument(module): cache})
        positions = torch.arange(o + W, o + W + T + M, device=device)
        if o:
            positions = torch.cat([torch.zeros(1, dtype=positions.dtype, device=device), positions])
        kwargs["position_ids"] = positions.unsqueeze(0)
        if W:  # without a window the mask is the plain causal one the base model builds itself
            token_valid = torch.ones(B, T, dtype=torch.bool, device=device) if attention_mask is None \
                else attention_mask[:, o:o + T].bool()
            mask = sliding.window_mask(memory.window_mask, token_valid, sink=bool(o), num_mem_tokens=M,
                                       segment_size=self.config.segment_size)
            kwargs["attention_mask"] = sliding.model_mask(mask, self.runner, inputs_embeds.dtype)
        return cache, rotary, W
