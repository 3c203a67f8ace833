"""Reading streams of any length into the memory at constant memory use.

Tokens arrive in chunks of any size; whenever a full segment is buffered it runs through the
model without gradients and only the new memory state is kept (plus, on request, the loss of
its tokens and the logits of the last one). Nothing grows with the stream except two counters
and, with ``compute_loss``, one float per segment.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Union

import torch
from torch import Tensor

from .checks import check_token_ids
from .loss import pair_nll, upcast
from .segments import run_segment
from .state import MemoryState
from .wavefront import wavefront_plan

TokenChunk = Union[Tensor, "list[int]"]


@dataclass
class ReadResult:
    """What reading a stream produced.

    Attributes:
        memory: the state after the last written segment (``None`` if nothing was written).
        tokens: tokens written into memory.
        pending: ``(B, r)`` tokens received but not yet written (``flush=False`` keeps the
            last partial segment open so that a later call continues exactly).
        loss_sum, loss_count: summed next-token cross-entropy and its number of pairs, over all
            pairs of the stream including those that cross segment boundaries (with
            ``compute_loss``); ``loss`` is their ratio.
        segment_losses: ``(n_segments,)`` mean cross-entropy within each written segment.
        segment_sums, segment_counts: ``(n_segments,)`` summed cross-entropy (float64) and number
            of the pairs whose *target* lies in each segment: the pair that crosses into a
            segment counts there (the definition of :mod:`armt.evaluation.perplexity`).
        last_logits: ``(B, vocab)`` logits after the last written token (``keep_last_logits``).
    """

    memory: MemoryState | None
    tokens: int
    pending: Tensor
    loss_sum: float | None = None
    loss_count: int = 0
    segment_losses: Tensor | None = None
    last_logits: Tensor | None = None
    segment_sums: Tensor | None = None
    segment_counts: Tensor | None = None

    @property
    def loss(self) -> float | None:
        return None if not self.loss_count else self.loss_sum / self.loss_count


class MemoryReader:
    """Feed token chunks of any size; full segments are written to memory as they complete.

    Segments are cut as ``segment_alignment="left"`` cuts one long input, so reading a text in
    chunks of any sizes gives the same memory as ``model(ids).memory``.

    Args:
        model: an :class:`armt.ARMTForCausalLM` (the reader keeps only its ``cell``).
        memory: a state to continue (``None`` starts empty).
        compute_loss: track next-token cross-entropy (computes the language-model head).
        keep_last_logits: keep the logits after the last written token.
        progress: show a tqdm bar in tokens (``total`` sets its length when known).
        wavefront: write the full segments of each chunk along the diagonals (all layers at
            once, one segment apart; see :mod:`armt.wavefront`): the same memory in fewer, larger
            operations. ``True`` needs a model in eval mode of a family in
            ``armt.families.SUPPORTED_TYPES``, no ``compute_loss`` and no sliding window, and
            says why otherwise; ``None`` follows ``ARMTConfig.wavefront`` where it can apply.
            Pays when chunks hold many segments. Padded segments and the last partial one still
            run one by one.
        segment_alignment: a stream is always cut from its start; a model whose config says
            ``right`` or ``center`` is refused (its ``model(ids)`` cuts another way) unless this
            is ``"left"``, which accepts the cut from the start.

    Example:
        >>> import torch
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> from armt import ARMTConfig, ARMTForCausalLM
        >>> base = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=99))
        >>> model = ARMTForCausalLM(base, ARMTConfig(num_mem_tokens=4, d_mem=8, segment_size=16))
        >>> reader = MemoryReader(model)
        >>> for chunk in torch.randint(99, (1, 100)).split(7, dim=1):
        ...     reader.feed(chunk)
        >>> result = reader.finish()
        >>> result.tokens, result.memory.segments
        (100, 7)
    """

    def __init__(self, model, memory: MemoryState | None = None, *, compute_loss: bool = False,
                 keep_last_logits: bool = False, progress: bool = False, total: int | None = None,
                 wavefront: bool | None = None, segment_alignment: str | None = None):
        # the reader works on the model's engine, the cell (its config, weights and hooks)
        self.cell = cell = model.cell
        alignment = segment_alignment or cell.config.segment_alignment
        if alignment != "left":
            # a stream's length is not known while it is read, so it can only be cut from its start
            raise ValueError(
                f"this model has segment_alignment={cell.config.segment_alignment!r}, but reading a stream cuts "
                "segments from its start, so the memory would differ from model(ids).memory. Call model(ids) on "
                "the whole input, or pass segment_alignment='left' to read it cut from the start anyway."
            )
        if wavefront and compute_loss:
            raise ValueError("wavefront=True computes no per-token logits; use compute_loss with wavefront=False.")
        if wavefront and cell.training:
            raise ValueError("wavefront=True reads in eval mode (it has no dropout); call model.eval() first.")
        if wavefront is None:  # the config's choice, where it applies
            wavefront = cell.config.wavefront and not compute_loss and not cell.training
        self._wavefront = wavefront_plan(cell) if wavefront else None
        self.memory = memory
        self.compute_loss = compute_loss
        self.keep_last_logits = keep_last_logits
        self._buffer: list[Tensor] = []
        self._masks: list[Tensor] = []  # padding of the buffered tokens (right padding: a row that ends)
        self._ended: Tensor | None = None  # rows whose stream has ended (they got padding)
        self._buffered = 0
        self.tokens = 0
        self._loss_sum = 0.0
        self._loss_count = 0
        self._segment_losses: list[float] = []
        self._segment_sums: list[float] = []
        self._segment_counts: list[int] = []
        self._prev_logits: Tensor | None = None  # last row of the previous segment (boundary pair)
        self._prev_valid: Tensor | None = None  # which rows' last token was real (None: all)
        self.last_logits: Tensor | None = None
        self._batch: int | None = None
        self._bar = None
        if progress:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, unit="tok", unit_scale=True, desc="reading", dynamic_ncols=True)

    def _as_ids(self, chunk: TokenChunk) -> Tensor:
        ids = torch.as_tensor(chunk)
        if ids.dim() == 1:
            ids = ids.unsqueeze(0)
        if ids.dim() != 2 or ids.is_floating_point():
            raise ValueError(
                f"a chunk must hold token ids as a list, a 1-D tensor or a (batch, n) tensor; got "
                f"{tuple(ids.shape)} {ids.dtype}."
            )
        check_token_ids(ids, self.cell.vocab_size, "a chunk's token ids")
        if self._batch is None:
            self._batch = ids.shape[0]
            self.cell.check_memory(self.memory, self._batch)
        elif ids.shape[0] != self._batch:
            raise ValueError(f"a chunk has batch size {ids.shape[0]} but the stream started with {self._batch}.")
        return ids.to(self.cell.memory_tokens.device)

    def feed(self, chunk: TokenChunk, attention_mask: Tensor | None = None) -> None:
        """Add tokens; every segment they complete is written to memory now.

        ``attention_mask`` ``(B, n)`` (1 real, 0 padding) lets rows of a batch end at different
        times: a row's padding ends its stream (later chunks must be padding for it too), and the
        row's memory then stays as it would be had it been read alone (its last partial segment
        is written when the batch's segment completes, or at ``finish``)."""
        ids = self._as_ids(chunk)
        if ids.shape[1] == 0:
            return
        mask = self._check_mask(ids, attention_mask)
        self._buffer.append(ids)
        self._masks.append(mask)
        self._buffered += ids.shape[1]
        S = self.cell.config.segment_size
        if self._buffered < S:
            return
        data = torch.cat(self._buffer, dim=1)
        masks = torch.cat(self._masks, dim=1)
        n_full = data.shape[1] // S
        done = 0
        if self._wavefront is not None and n_full >= 2 and bool(masks[:, :n_full * S].all()):
            self._write_wavefront(data[:, :n_full * S])
            done = n_full
        for i in range(done, n_full):
            self._write(data[:, i * S:(i + 1) * S], masks[:, i * S:(i + 1) * S])
        rest = data[:, n_full * S:]
        self._buffer = [rest] if rest.shape[1] else []
        self._masks = [masks[:, n_full * S:]] if rest.shape[1] else []
        self._buffered = rest.shape[1]

    def _check_mask(self, ids: Tensor, attention_mask: Tensor | None) -> Tensor:
        B, n = ids.shape
        ended = self._ended if self._ended is not None else torch.zeros(B, dtype=torch.bool, device=ids.device)
        if attention_mask is None:
            mask = torch.ones(B, n, dtype=torch.bool, device=ids.device)
        else:
            attention_mask = torch.as_tensor(attention_mask, device=ids.device)
            if attention_mask.dim() == 1:
                attention_mask = attention_mask.unsqueeze(0)
            if tuple(attention_mask.shape) != (B, n):
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)} but the chunk is {(B, n)}.")
            if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
                raise ValueError("attention_mask must hold only 0 (padding) and 1 (real token) values.")
            mask = attention_mask.bool()
            # right padding only: once a row is padded, the rest of its stream is padding
            if bool((mask[:, 1:] & ~mask[:, :-1]).any()):
                raise ValueError("attention_mask: a row has a real token after padding; pad rows on the right "
                                 "only (a row's padding ends its stream).")
        if bool((mask & ended.unsqueeze(1)).any()):
            rows = (mask & ended.unsqueeze(1)).any(dim=1).nonzero().flatten().tolist()
            raise ValueError(f"rows {rows} got real tokens after their stream ended (padding); start a new "
                             "reader for new text.")
        self._ended = ended | ~mask.all(dim=1)
        return mask

    @torch.no_grad()
    def _write(self, ids: Tensor, mask: Tensor | None = None) -> None:
        cell = self.cell
        if mask is not None and bool(mask.all()):
            mask = None
        if mask is not None:
            return self._write_padded(ids, mask)
        want = self.compute_loss or self.keep_last_logits
        embeds = cell.runner.get_input_embeddings()(ids)
        logits, self.memory = run_segment(cell, embeds, None, self.memory, compute_logits=want,
                                          last_logits_only=not self.compute_loss)
        if self.compute_loss:
            logits = upcast(logits)
            seg_sum, seg_count = 0.0, 0
            if self._prev_logits is not None:  # the pair that crosses into this segment
                seg_sum += pair_nll(self._prev_logits, ids[:, 0]).sum().item()
                seg_count += ids.shape[0]
            if ids.shape[1] > 1:
                ce = pair_nll(logits[:, :-1], ids[:, 1:]).sum().item()
                n = ids.shape[0] * (ids.shape[1] - 1)
                seg_sum += ce
                seg_count += n
                self._segment_losses.append(ce / n)
            else:
                self._segment_losses.append(float("nan"))
            self._add_segment(seg_sum, seg_count)
            self._prev_logits = logits[:, -1]
        if self.keep_last_logits:
            self.last_logits = logits[:, -1].clone()
        self.tokens += ids.shape[1]
        if self._bar is not None:
            self._bar.update(ids.shape[1])

    @torch.no_grad()
    def _write_wavefront(self, ids: Tensor) -> None:
        n = ids.shape[1] // self.cell.config.segment_size
        embeds = self.cell.runner.get_input_embeddings()(ids)
        logits, self.memory = self._wavefront.run(embeds, self.memory,
                                                  lambda s: self.keep_last_logits and s == n - 1)
        if self.keep_last_logits:
            self.last_logits = logits[-1][:, -1].clone()
        self.tokens += ids.shape[1]
        if self._bar is not None:
            self._bar.update(ids.shape[1])

    def _write_padded(self, ids: Tensor, mask: Tensor) -> None:
        """A segment in which some rows have ended: as :meth:`armt.ARMTForCausalLM.forward` does
        for a right-padded batch, rows without tokens keep their memory."""

        cell = self.cell
        if self.cell.config.sliding_window:
            raise ValueError("rows that end at different times are not supported with sliding_window=True; "
                             "read those rows separately.")
        active = mask.any(dim=1)
        want = self.compute_loss or self.keep_last_logits
        logits, self.memory = run_segment(cell, cell.runner.get_input_embeddings()(ids), mask.long(), self.memory,
                                          compute_logits=want, active=active)
        if self.compute_loss:
            logits = upcast(logits)
            total, count = 0.0, 0
            if self._prev_logits is not None:
                prev_valid = self._prev_valid if self._prev_valid is not None else torch.ones_like(mask[:, 0])
                valid = mask[:, 0] & prev_valid
                if bool(valid.any()):
                    total += pair_nll(self._prev_logits, ids[:, 0], valid).sum().item()
                    count += int(valid.sum())
            pairs = mask[:, 1:] & mask[:, :-1]
            if bool(pairs.any()):
                ce = pair_nll(logits[:, :-1], ids[:, 1:], pairs).sum().item()
                n = int(pairs.sum())
                total += ce
                count += n
                self._segment_losses.append(ce / n)
            else:
                self._segment_losses.append(float("nan"))
            self._add_segment(total, count)
        if want:
            last = (mask.long().cumsum(1).argmax(dim=1)).clamp(min=0)  # each row's last real token
            rows = torch.arange(ids.shape[0], device=ids.device)
            keep = active
            row_last = logits[rows, last]
            if self.compute_loss:
                prev = self._prev_logits if self._prev_logits is not None else row_last
                self._prev_logits = torch.where(keep.unsqueeze(1), row_last, prev)
                self._prev_valid = mask[:, -1].clone()
            if self.keep_last_logits:
                old = self.last_logits if self.last_logits is not None else row_last
                self.last_logits = torch.where(keep.unsqueeze(1), row_last, old).clone()
        self.tokens += ids.shape[1]
        if self._bar is not None:
            self._bar.update(ids.shape[1])

    def _add_segment(self, total: float, count: int) -> None:
        self._loss_sum += total
        self._loss_count += count
        self._segment_sums.append(total)
        self._segment_counts.append(count)

    def finish(self, flush: bool = True) -> ReadResult:
        """End the stream; ``flush`` writes the last partial segment (as a forward pass over
        the whole input would), otherwise it is returned as ``pending``."""
        pending = torch.cat(self._buffer, dim=1) if self._buffer else torch.zeros(self._batch or 1, 0, dtype=torch.long)
        if flush and pending.shape[1]:
            self._write(pending, torch.cat(self._masks, dim=1))
            pending = pending[:, :0]
        if self._bar is not None:
            self._bar.close()
        return ReadResult(
            memory=self.memory,
            tokens=self.tokens,
            pending=pending,
            loss_sum=self._loss_sum if self.compute_loss else None,
            loss_count=self._loss_count,
            segment_losses=torch.tensor(self._segment_losses, dtype=torch.float64) if self.compute_loss else None,
            last_logits=self.last_logits,
            segment_sums=torch.tensor(self._segment_sums, dtype=torch.float64) if self.compute_loss else None,
            segment_counts=torch.tensor(self._segment_counts, dtype=torch.long) if self.compute_loss else None,
        )


def read(model, chunks: Iterable[TokenChunk], memory: MemoryState | None = None, *, flush: bool = True,
         **reader_kwargs) -> ReadResult:
    """Read an iterable of token chunks into memory (see :class:`MemoryReader`)."""
    reader = MemoryReader(model, memory, **reader_kwargs)
    for chunk in chunks:
        reader.feed(chunk)
    return reader.finish(flush=flush)


def iter_text_tokens(path: str | os.PathLike, tokenizer, *, chunk_chars: int = 1 << 20,
                     encoding: str = "utf-8") -> Iterator[list[int]]:
    """Token ids of a text file, a block at a time, never holding the whole file.

    Blocks are cut after a line end (words are never split), and each block is tokenized
    without special tokens. The ids equal tokenizing the whole file whenever the tokenizer does
    not merge across line ends (true of GPT-2 style byte-level BPE and of SentencePiece models
    for text that keeps its newlines).
    """
    if chunk_chars < 1:
        raise ValueError(f"chunk_chars must be positive, got {chunk_chars}.")
    carry = ""
    with open(path, encoding=encoding) as f:
        while True:
            block = f.read(chunk_chars)
            if not block:
                break
            text = carry + block
            cut = text.rfind("\n") + 1
            if cut == 0:  # no line end yet: keep reading unless the line is huge
                if len(text) < 8 * chunk_chars:
                    carry = text
                    continue
                cut = len(text)
            carry = text[cut:]
            yield tokenizer(text[:cut], add_special_tokens=False)["input_ids"]
    if carry:
        yield tokenizer(carry, add_special_tokens=False)["input_ids"]
