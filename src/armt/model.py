"""ARMTForCausalLM: the recurrent loop over segments, the loss, truncated BPTT and
per-segment gradient checkpointing."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn
from transformers.utils import ModelOutput

from . import generation, saving, streaming
from .adapters import has_adapters
from .cell import ARMTCell
from .checks import InputTypeError, check_labels, check_token_ids
from .config import ARMTConfig
from .padding import PaddingPlan
from .loss import head_pair_nll, pair_nll
from .segments import iter_segments, segment_bounds
from .state import MemoryState
from .wavefront import Wavefront, use_wavefront, wavefront_blocker, wavefront_plan, wavefront_segments


@dataclass
class ARMTOutput(ModelOutput):
    """Output of :class:`ARMTForCausalLM`.

    Attributes:
        loss: mean cross-entropy over the selected pairs (``None`` without labels).
        logits: ``(B, L, vocab)``, or only the last segment's with ``output_only_last_segment``.
        memory: the :class:`MemoryState` after the last segment; pass it as ``memory=`` to
            continue the sequence.
        segment_losses: ``(n_segments,)`` detached cross-entropy within each segment (the
            official per-segment ``ce_loss``); NaN where a segment's loss was not computed.
        num_loss_tokens: how many pairs the loss averages over.
    """

    loss: Tensor | None = None
    logits: Tensor | None = None
    memory: MemoryState | None = None
    segment_losses: Tensor | None = None
    num_loss_tokens: Tensor | None = None


def _base_checkpointing_on(base: nn.Module) -> bool:
    # transformers 5 renamed the flag; read the new name first to avoid its deprecation warning
    for name in ("is_activation_checkpointing", "is_gradient_checkpointing"):
        if hasattr(type(base), name):
            return bool(getattr(base, name))
    return False


class ARMTForCausalLM(nn.Module):
    """Associative Recurrent Memory Transformer around any Hugging Face causal LM.

    The input is split into segments of ``config.segment_size`` tokens; each segment gets
    ``num_mem_tokens`` memory tokens at its end, every decoder layer reads its associative
    memory before it runs and writes the memory tokens' outputs after. The memory is an
    explicit value: ``memory=`` in, ``output.memory`` out.

    Args:
        base_model: a ``*ForCausalLM`` model (GPT-2, GPT-NeoX, Llama, Qwen2, Mistral, ...).
            Its decoder layers get hooks; its weights and names are unchanged.
        config: the :class:`ARMTConfig`; defaults to ``ARMTConfig()``.

    Example:
        >>> import torch
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> base = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=99))
        >>> model = ARMTForCausalLM(base, ARMTConfig(num_mem_tokens=4, d_mem=8, segment_size=16))
        >>> ids = torch.randint(99, (2, 40))
        >>> out = model(ids, labels=ids)
        >>> out.logits.shape, out.memory.segments
        (torch.Size([2, 40, 99]), 3)
        >>> more = model(ids[:, :16], memory=out.memory)  # continue the same sequences
    """

    # the Trainer then passes num_items_in_batch, so gradient accumulation weighs every token alike
    accepts_loss_kwargs = True

    def __init__(self, base_model: nn.Module, config: ARMTConfig | None = None):
        super().__init__()
        if config is None:
            config = ARMTConfig()
        if not isinstance(config, ARMTConfig):
            raise InputTypeError(f"config must be an ARMTConfig, got {type(config).__name__}.")
        self.config = config
        self.cell = ARMTCell(base_model, config)
        # a flag of the model, not of its (frozen) config: the Trainer switches it on and off
        self.gradient_checkpointing = config.gradient_checkpointing
        if config.wavefront:
            reason = wavefront_blocker(self.cell)
            if reason:
                raise ValueError(f"ARMTConfig(wavefront=True) cannot run on this model: {reason}.")

    def wavefront_plan(self) -> Wavefront:
        """The :class:`armt.wavefront.Wavefront` of the current weights: rebuilt only when a
        weight changed (an optimizer step, ``load_state_dict``), since it holds stacked copies."""
        return wavefront_plan(self.cell)

    @property
    def base_model(self) -> nn.Module:
        return self.cell.base_model

    def signature(self) -> dict:
        """What a saved memory state records about this model (see
        :func:`armt.saving.model_signature`): ``state.save(path, model=model)`` writes it and
        ``MemoryState.load(path, model=model)`` refuses a state written by another model."""
        return saving.model_signature(self)

    @property
    def vocab_size(self) -> int:
        """Rows of the input embedding: token ids must lie in ``0 .. vocab_size - 1``."""
        return self.cell.vocab_size

    @property
    def output_vocab_size(self) -> int:
        """Width of the logits: labels must lie in ``0 .. output_vocab_size - 1`` (or be -100)."""
        head = self.base_model.get_output_embeddings()
        return getattr(head, "out_features", None) or self.vocab_size

    # saving ---------------------------------------------------------------------------
    def save_pretrained(self, save_directory, *, save_base: bool = False, overwrite: bool = False) -> None:
        """Write the ARMT config and weights (and the base model with ``save_base=True``).

        Example:
            ``model.save_pretrained("runs/armt"); ARMTForCausalLM.from_pretrained("runs/armt", base_model=base)``
        """
        saving.save_pretrained(self, save_directory, save_base=save_base, overwrite=overwrite)

    @classmethod
    def from_pretrained(cls, directory, base_model=None, *, check_base: bool = True,
                        is_trainable: bool = False, options: dict | None = None,
                        **base_kwargs) -> ARMTForCausalLM:
        """Load a directory written by :meth:`save_pretrained` onto ``base_model`` (a module, a
        path or a Hub name; ``None`` uses the base saved in the directory). A base of another
        architecture is refused with a message naming the expected one; saved peft adapters
        are restored (trainable with ``is_trainable``). ``options`` changes run-time settings
        of the saved config, such as ``{"bptt_segments": 4}`` (:data:`armt.config.RUN_OPTIONS`;
        anything else is refused). ``base_kwargs`` go to the base's ``from_pretrained``
        (``torch_dtype``, ``attn_implementation``, ...)."""
        return saving.from_pretrained(cls, directory, base_model, check_base=check_base,
                               is_trainable=is_trainable, options=options, **base_kwargs)

    def push_to_hub(self, repo_id: str, *, save_base: bool = False, private: bool | None = None,
                    token: str | None = None, commit_message: str = "Upload ARMT model", api=None):
        """Upload what :meth:`save_pretrained` writes to a Hub repository (created if needed)."""
        return saving.push_to_hub(self, repo_id, save_base=save_base, private=private, token=token,
                           commit_message=commit_message, api=api)

    def freeze_base(self) -> int:
        """Freeze the base model's weights, leaving the ARMT parameters (and peft adapters, if
        the base is a peft model) trainable; returns the number of trainable parameters.

        Example:
            >>> from transformers import GPT2Config, GPT2LMHeadModel
            >>> base = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=99))
            >>> model = ARMTForCausalLM(base, ARMTConfig(num_mem_tokens=4, d_mem=8, segment_size=16))
            >>> model.freeze_base() == sum(p.numel() for n, p in model.named_parameters()
            ...                            if not n.startswith("cell.base_model."))
            True
        """
        adapters = has_adapters(self.base_model)
        for name, param in self.base_model.named_parameters():
            # peft already froze the base and marked its adapters trainable
            if not (adapters and param.requires_grad):
                param.requires_grad_(False)
        for name, param in self.cell.named_parameters():
            if not name.startswith("base_model."):
                param.requires_grad_(True)
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # generation -----------------------------------------------------------------------
    def generate(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        memory: MemoryState | None = None,
        *,
        max_new_tokens: int,
        write_segments: bool = True,
        return_memory: bool = False,
        **generate_kwargs,
    ):
        """Continue ``input_ids`` (any length) with Hugging Face ``generate``.

        The context is read segment by segment (memory written); decoding runs on the last
        segment through the base model's ``generate`` with its key/value cache, every layer
        reading the memory, so greedy search, sampling, top-k/top-p, repetition penalty,
        stopping criteria and streamers all work (``generate_kwargs`` go to it). With
        ``write_segments`` (default), once the open segment holds ``segment_size`` tokens it
        is written to memory and decoding goes on in a fresh segment, so the result equals
        decoding with full forward passes over the growing text (``segment_alignment="left"``).
        With ``write_segments=False`` the last segment just grows, as in the official code.
        With ``sliding_window`` the decoded tokens see the previous segment's window as in a
        forward pass (the cache is pre-filled with it and each step gets the window mask).

        Args:
            input_ids: ``(B, L)`` context.
            attention_mask: ``(B, L)``, left or right padding: a padded batch is generated row by
                row, each row exactly as if it came alone, the new tokens appended after the
                padded rows.
            memory: state from an earlier call (e.g. a book read with :meth:`read`).
            max_new_tokens: how many tokens to add (in total, across segments).
            return_memory: also return the memory after the last written segment.

        Returns:
            ``(B, L + new)`` token ids, or ``(ids, memory)`` with ``return_memory``. Rows that
            finished early (end-of-sequence token) are padded with ``pad_token_id``.

        Example:
            >>> import torch
            >>> from transformers import GPT2Config, GPT2LMHeadModel
            >>> base = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=99))
            >>> model = ARMTForCausalLM(base, ARMTConfig(num_mem_tokens=4, d_mem=8, segment_size=16))
            >>> out = model.generate(torch.randint(99, (1, 40)), max_new_tokens=10, do_sample=False)
            >>> out.shape
            torch.Size([1, 50])
        """
        self.check_inputs(input_ids, None, attention_mask, None, None, memory)
        return generation.generate(self.cell, input_ids, attention_mask, memory, max_new_tokens=max_new_tokens,
                                   write_segments=write_segments, return_memory=return_memory, **generate_kwargs)

    # streaming ------------------------------------------------------------------------
    def read(self, chunks, memory: MemoryState | None = None, *, flush: bool = True, **reader_kwargs):
        """Read an iterable of token chunks (lists, 1-D or ``(B, n)`` tensors, any sizes) into
        memory at constant memory use; returns a :class:`armt.streaming.ReadResult`.

        Options (``compute_loss``, ``keep_last_logits``, ``progress``, ``total``) are those of
        :class:`armt.streaming.MemoryReader`; ``flush=False`` leaves the last partial segment
        unwritten (``result.pending``) so the stream can be continued exactly later.

        Example:
            >>> import torch
            >>> from transformers import GPT2Config, GPT2LMHeadModel
            >>> base = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=99))
            >>> model = ARMTForCausalLM(base, ARMTConfig(num_mem_tokens=4, d_mem=8, segment_size=16))
            >>> result = model.read(torch.randint(99, (1, 1000)).split(100, dim=1), compute_loss=True)
            >>> result.memory.segments, result.segment_losses.shape
            (63, torch.Size([63]))
        """
        return streaming.read(self, chunks, memory, flush=flush, **reader_kwargs)

    def count_loss_pairs(self, labels: Tensor, labels_mask: Tensor | None = None) -> Tensor:
        """How many (logits t, label t+1) pairs :meth:`forward` scores for these labels: the
        denominator of its loss (a 0-d tensor)."""
        valid = labels[:, 1:] != -100
        if labels_mask is not None:
            valid = valid & labels_mask[:, :-1].bool()
        if self.config.last_segment_loss_only:
            start = segment_bounds(labels.shape[1], self.config.segment_size, self.config.segment_alignment)[-1][0]
            valid = valid[:, start:]
        return valid.sum()

    # checkpointing --------------------------------------------------------------------
    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs=None, **kwargs) -> None:
        """Recompute every segment in the backward pass (the Trainer calls this). Options of
        layer-level checkpointing (``every_n_layers``, ...) do not apply: ARMT checkpoints
        whole segments, because re-running single layers would write the memory twice."""
        self.gradient_checkpointing = True

    def gradient_checkpointing_disable(self) -> None:
        self.gradient_checkpointing = False

    # transformers 5.2x names the same switch "activation checkpointing"
    activation_checkpointing_enable = gradient_checkpointing_enable
    activation_checkpointing_disable = gradient_checkpointing_disable

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.gradient_checkpointing

    @property
    def is_activation_checkpointing(self) -> bool:
        return self.gradient_checkpointing

    # input checks ---------------------------------------------------------------------
    def check_inputs(self, input_ids, inputs_embeds, attention_mask, labels, labels_mask, memory):
        """Check one call's inputs (shapes, ids in the vocabulary, masks, a memory of this model)
        and return ``(batch, length)``; raises with what to fix. ``forward`` and ``generate`` call it."""
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("Pass exactly one of input_ids (B, L) and inputs_embeds (B, L, d_model).")
        if input_ids is not None:
            if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.is_floating_point():
                raise ValueError(
                    "input_ids must be an integer tensor of shape (batch, length), got "
                    f"{getattr(input_ids, 'shape', type(input_ids).__name__)}."
                )
            B, L = input_ids.shape
            check_token_ids(input_ids, self.vocab_size)
        else:
            if inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != self.cell.d_model:
                raise ValueError(
                    f"inputs_embeds must have shape (batch, length, {self.cell.d_model}), "
                    f"got {tuple(inputs_embeds.shape)}."
                )
            B, L = inputs_embeds.shape[:2]
        if L == 0 or B == 0:
            raise ValueError(f"The input is empty (shape {(B, L)}); pass at least one token.")
        for name, t in (("attention_mask", attention_mask), ("labels", labels), ("labels_mask", labels_mask)):
            if t is not None and tuple(t.shape) != (B, L):
                raise ValueError(f"{name} has shape {tuple(t.shape)} but the input is {(B, L)}; they must match.")
        if attention_mask is not None and not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token) values.")
        if labels is not None:
            check_labels(labels, self.output_vocab_size)
        self.cell.check_memory(memory, B)
        return B, L

    def padding_plan(self, attention_mask: Tensor | None, scored: bool = True) -> PaddingPlan | None:
        """How a padded batch is run so that every row equals the row alone (see
        :mod:`armt.padding`): ``None`` without padding, or for masks with holes (masked tokens
        between real ones are hidden from attention only). Layouts that cannot be made exact are
        refused with a message; ``scored=False`` (no loss asked) lets rows of different lengths
        through with ``last_segment_loss_only``."""
        if attention_mask is None:
            return None
        plan = PaddingPlan.detect(attention_mask)
        if plan is None or not plan.padded:
            return None
        if self.config.segment_alignment != "left":
            raise ValueError(
                f"a padded batch with segment_alignment={self.config.segment_alignment!r} cannot give every row "
                "the segments it gets alone; use segment_alignment='left' (any left or right padding) or "
                "unpadded rows of equal length."
            )
        if scored and self.config.last_segment_loss_only and bool((plan.lengths != plan.lengths[0]).any()):
            raise ValueError(
                "last_segment_loss_only=True with rows of different lengths: each row's last segment is another "
                "segment of the batch. Batch rows of equal length, or score the last segment with labels=-100 "
                "elsewhere instead."
            )
        if self.config.sliding_window:
            raise ValueError(
                "padded batches are not supported with sliding_window=True (a short row's window would hold "
                "padding); run rows of different lengths separately, or pad every row to whole segments of "
                "real tokens."
            )
        return plan

    # the recurrent loop ---------------------------------------------------------------
    def forward(
        self,
        input_ids: Tensor | None = None,
        attention_mask: Tensor | None = None,
        labels: Tensor | None = None,
        labels_mask: Tensor | None = None,
        inputs_embeds: Tensor | None = None,
        memory: MemoryState | None = None,
        output_only_last_segment: bool = False,
        return_dict: bool | None = None,
        use_cache: bool | None = None,
        num_items_in_batch: Tensor | int | None = None,
        wavefront: bool | None = None,
    ) -> ARMTOutput:
        """Run the whole input segment by segment.

        Args:
            input_ids: ``(B, L)`` token ids, any length.
            attention_mask: ``(B, L)`` 1 for real tokens, 0 for padding.
            labels: ``(B, L)`` targets; ``-100`` is ignored. As in Hugging Face models they
                are shifted inside: logits at position t are scored against ``labels[t + 1]``,
                over the concatenated segments (pairs crossing a boundary count).
            labels_mask: ``(B, L)`` bool; as in the official code ``labels_mask[t]`` keeps the
                pair (logits t, labels t + 1).
            inputs_embeds: ``(B, L, d_model)`` instead of ``input_ids``.
            memory: state returned by a previous call, to continue those sequences.
            output_only_last_segment: return only the last segment's logits so that memory
                does not grow with the input length (the loss is unchanged).
            num_items_in_batch: divide the summed loss by this instead of this batch's own
                count of pairs (the Hugging Face Trainer passes the count over all gradient
                accumulation steps and processes, see :func:`count_loss_pairs`).
            wavefront: run the full segments along the diagonals (:mod:`armt.wavefront`; the same
                outputs and gradients). ``True`` needs no padding, ``left`` alignment, and with
                gradients no checkpointing or ``bptt_segments`` and no dropout in training mode,
                and says why otherwise; ``None`` follows ``ARMTConfig.wavefront`` for passes
                without gradients.
            return_dict, use_cache: accepted for Hugging Face callers and ignored (the output
                is always an :class:`ARMTOutput`; segments keep no key/value cache, except the
                previous segment's window that ``sliding_window=True`` keeps in ``memory``).
        """
        if getattr(self, "_is_replica", False):
            # DataParallel copies the module per device and splits only plain tensors: a
            # MemoryState would reach every copy whole, and the rows' memories would mix
            raise RuntimeError(
                "ARMTForCausalLM does not run under torch.nn.DataParallel (the memory state is not split "
                "across its replicas). Use DistributedDataParallel: launch with torchrun or accelerate, as "
                "armt train does."
            )
        B, L = self.check_inputs(input_ids, inputs_embeds, attention_mask, labels, labels_mask, memory)
        if self.training and _base_checkpointing_on(self.cell.runner):
            raise ValueError(
                "The base model has Hugging Face gradient checkpointing on, which reruns layers and "
                "would write the memory twice. Call base_model.gradient_checkpointing_disable() and "
                "use ARMTConfig(gradient_checkpointing=True) (per segment) instead."
            )
        cfg = self.config
        if labels_mask is not None:
            labels_mask = labels_mask.bool()
        plan = self.padding_plan(attention_mask, scored=labels is not None)
        keep_all = False
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None  # lets sdpa take its causal fast path
        if plan is not None:
            # every row's real tokens from position 0, so each row is cut as if alone; padding
            # scores nothing (a row alone has no such positions)
            rotate = plan.to_start
            input_ids = None if input_ids is None else rotate(input_ids)
            inputs_embeds = None if inputs_embeds is None else rotate(inputs_embeds)
            attention_mask = rotate(attention_mask)
            if labels is not None:
                labels = rotate(labels).masked_fill(attention_mask == 0, -100)
            if labels_mask is not None:
                labels_mask = rotate(labels_mask) & (attention_mask != 0)
            keep_all = output_only_last_segment and plan.shifted  # the rows' last tokens are rotated back
            output_only_last_segment = output_only_last_segment and not keep_all
        table = self.base_model.get_input_embeddings()
        bounds = segment_bounds(L, cfg.segment_size, cfg.segment_alignment)

        def embed(a: int, b: int) -> Tensor:
            return table(input_ids[:, a:b]) if input_ids is not None else inputs_embeds[:, a:b]

        def wants_loss(last: bool) -> bool:
            return labels is not None and (last or not cfg.last_segment_loss_only)

        def logits_for(s: int, last: bool) -> bool:
            return wants_loss(last) or last or not output_only_last_segment

        # a segment scored but not returned, in a pass with gradients: its loss recomputes the
        # logits in the backward instead of keeping them (and their log-softmax) until then
        head = self.cell.head if torch.is_grad_enabled() and output_only_last_segment else None

        def hidden_for(s: int, last: bool) -> bool:
            return head is not None and wants_loss(last) and not last

        logits_out, seg_losses = [], []
        loss_sum = loss_count = None
        steps = None
        if use_wavefront(self.cell, wavefront, padded=plan is not None or attention_mask is not None,
                         checkpointing=self.gradient_checkpointing):
            steps = wavefront_segments(self.cell, embed, bounds, memory, logits_for)
        if steps is None:
            steps = iter_segments(self.cell, embed, bounds, attention_mask, memory, logits_for=logits_for,
                                  hidden_for=hidden_for, checkpointing=self.gradient_checkpointing,
                                  active=None if plan is None else plan.active, detach_every=cfg.bptt_segments)
        for step in steps:
            a, b, last, logits, memory = step.start, step.end, step.last, step.logits, step.memory
            if wants_loss(last):
                if step.hidden is None:
                    ce_sum, ce_count, within = self._segment_loss(logits, labels, labels_mask, a, b, L, last)
                else:
                    ce_sum, ce_count, within = self._segment_loss(step.hidden, labels, labels_mask, a, b, L, last,
                                                                  head=head)
                if cfg.last_segment_loss_only:
                    ce_sum, ce_count = within
                loss_sum = ce_sum if loss_sum is None else loss_sum + ce_sum
                loss_count = ce_count if loss_count is None else loss_count + ce_count
                seg_losses.append((within[0] / within[1]).detach())
            else:
                seg_losses.append(None)
            if last or not output_only_last_segment:
                logits_out.append(logits)

        logits = logits_out[0] if len(logits_out) == 1 else torch.cat(logits_out, dim=1)
        if plan is not None and plan.shifted and logits.shape[1] == L:
            logits = plan.back(logits)
            if keep_all:
                logits = logits[:, bounds[-1][0]:]
        out = ARMTOutput(logits=logits, memory=memory)
        if labels is not None:
            ref = next(x for x in seg_losses if x is not None)
            nan = torch.full((), float("nan"), dtype=ref.dtype, device=ref.device)
            if num_items_in_batch is None and int(loss_count) == 0:
                out.loss = loss_sum * 0.0  # nothing scored: 0 (still differentiable), not NaN
            else:
                out.loss = loss_sum / (loss_count if num_items_in_batch is None else num_items_in_batch)
            out.num_loss_tokens = loss_count
            out.segment_losses = torch.stack([nan if x is None else x for x in seg_losses])
        return out

    @staticmethod
    def _segment_loss(logits, labels, labels_mask, a, b, L, last, head=None):
        """CE of the pairs whose logits lie in segment [a, b); with ``head``, ``logits`` are the
        hidden states that the head turns into them (:func:`head_pair_nll`).

        Returns ``(sum, count, (sum_within, count_within))``; "within" leaves out the pair
        that crosses into the next segment, as the official per-segment loss does.
        """
        end = min(b + 1, L)
        targets = labels[:, a + 1:end]  # (B, T') with T' = T, or T - 1 at the end of the input
        n_pairs = targets.shape[1]
        valid = targets != -100
        if labels_mask is not None:
            valid = valid & labels_mask[:, a:a + n_pairs]
        if head is None:
            ce = pair_nll(logits[:, :n_pairs], targets, valid)
        else:
            ce = head_pair_nll(head, logits[:, :n_pairs], targets, valid)
        n_within = (b - a) - 1
        within = (ce[:, :n_within].sum(), valid[:, :n_within].sum())
        return ce.sum(), valid.sum(), within
