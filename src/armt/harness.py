"""An armt model for EleutherAI's lm-evaluation-harness (``pip install "armt[eval]"``).

Importing this module registers the model name ``armt`` with the harness. Every request goes
through the memory: the context is read segment by segment into the memory (whole segments
only; never the whole context at once), then the continuation is scored, or the answer
generated, from the last partial segment and the memory, exactly as one forward pass over
``context + continuation`` would (the tests check it). Rolling log-likelihoods stream documents
of any length at constant memory.

``armt lm-eval ...`` runs the harness's own command line with this model registered and armt's
task folder (:data:`TASKS_DIR`: ``armt_babilong_qa1`` and friends, which read the samples that
``armt babilong make-data`` writes) on the include path::

    armt lm-eval --model armt --model_args pretrained=runs/qa1/best --tasks babilong_qa1
    armt lm-eval --model armt --model_args pretrained=runs/qa1/best --tasks armt_babilong_qa1 \\
        --metadata '{"data_dir": "data/babilong", "max_seq_lengths": "4k"}'

From Python, pass an :class:`ARMTHarnessLM` to ``lm_eval.simple_evaluate(model=...)``.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model
from torch import Tensor

from .generation import generation_defaults
from .streaming import MemoryReader

# the task YAMLs (and their helper module) shipped with armt, for --include_path
TASKS_DIR = Path(__file__).resolve().parent / "harness_tasks"


@register_model("armt")
class ARMTHarnessLM(LM):
    """lm-evaluation-harness model backed by an :class:`armt.ARMTForCausalLM`.

    Args:
        pretrained: a folder written by ``save_pretrained`` (with ``save_base=True`` or a base
            that ``from_pretrained`` can find), or a loaded :class:`armt.ARMTForCausalLM`.
        tokenizer: a tokenizer name or path, or a tokenizer; default the one saved with the
            model, else its base's.
        base: the base model's name or path, where the folder does not hold the base.
        device, dtype: where and in which precision the model runs (``"float32"``, ...).
        chunk_segments: segments of context read per step (bounds the memory held).
        max_length: refuse contexts longer than this many tokens (``None``: no limit).
        batch_size, max_batch_size: accepted for the harness's command line; requests run one at
            a time.
        wipe_memory: the control: score and generate with the memory emptied after the context
            (only the last partial segment is then seen).

    Example:
        >>> import torch, armt
        >>> from transformers import GPT2Config, GPT2LMHeadModel
        >>> base = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=260))
        >>> model = armt.ARMTForCausalLM(base, armt.ARMTConfig(num_mem_tokens=2, d_mem=8, segment_size=8))
        >>> lm = ARMTHarnessLM(model, tokenizer=_ByteTokenizer())
        >>> logprob, greedy = lm.loglikelihood_tokens([(list(range(3, 23)), [40, 41])])[0]
        >>> logprob < 0, greedy in (True, False)
        (True, True)
    """

    def __init__(self, pretrained: Any, tokenizer: Any = None, *, base: str | None = None, device: str = "cpu",
                 dtype: str | torch.dtype | None = None, chunk_segments: int = 16, max_length: int | None = None,
                 batch_size: int | str = 1, wipe_memory: bool | str = False, max_batch_size: Any = None,
                 **unused: Any):
        super().__init__()
        from . import ARMTForCausalLM
        from .saving import saved_tokenizer

        if unused:
            raise ValueError(f"armt model_args do not include {sorted(unused)}; use pretrained, tokenizer, base, "
                             "device, dtype, chunk_segments, max_length, batch_size, wipe_memory.")
        if str(device).startswith("cuda") and not torch.cuda.is_available():
            # lm_eval's command line asks for cuda unless told otherwise
            warnings.warn(f"device={device!r} but no GPU is available; running on the CPU.", stacklevel=2)
            device = "cpu"
        if isinstance(pretrained, (str, os.PathLike)):
            folder = Path(pretrained)
            if not folder.is_dir():
                raise FileNotFoundError(f"pretrained={pretrained!r} is not a folder; pass the folder that "
                                        "ARMTForCausalLM.save_pretrained wrote.")
            model = ARMTForCausalLM.from_pretrained(folder, base_model=base)
            if tokenizer is None or isinstance(tokenizer, (str, os.PathLike)):
                tokenizer = saved_tokenizer(folder, None if tokenizer is None else str(tokenizer))
        else:
            model = pretrained
            if tokenizer is None:
                raise ValueError("a loaded model needs tokenizer=...; only a saved folder says which it used.")
            if isinstance(tokenizer, (str, os.PathLike)):
                from transformers import AutoTokenizer

                tokenizer = AutoTokenizer.from_pretrained(str(tokenizer))
        if isinstance(dtype, str) and dtype not in ("auto", ""):
            if not isinstance(getattr(torch, dtype, None), torch.dtype):
                raise ValueError(f"dtype={dtype!r} is not a torch dtype; use float32, bfloat16 or float16.")
            dtype = getattr(torch, dtype)
        if isinstance(dtype, torch.dtype):
            model = model.to(dtype)
        self.model = model.to(device).eval()
        self.tokenizer = tokenizer
        self.chunk_segments = int(chunk_segments)
        if self.chunk_segments < 1:
            raise ValueError(f"chunk_segments must be >= 1, got {chunk_segments!r}.")
        self.max_length = None if max_length in (None, "", "None") else int(max_length)
        self.batch_size = batch_size
        self.wipe_memory = str(wipe_memory).lower() in ("1", "true", "yes") if isinstance(wipe_memory, str) \
            else bool(wipe_memory)
        if len(tokenizer) > self.model.vocab_size:
            raise ValueError(f"the tokenizer has {len(tokenizer):,} tokens but the model's vocabulary has "
                             f"{self.model.vocab_size:,}; pass the model's own tokenizer.")

    # tokens -------------------------------------------------------------------------------
    @property
    def prefix_ids(self) -> list[int]:
        """What precedes every context: BOS where the tokenizer adds one (as BABILong evaluation
        does, :meth:`armt.data.babilong.BabilongPrompt.prefix_ids`), else nothing."""
        from .data.babilong_prompt import BabilongPrompt

        return BabilongPrompt().prefix_ids(self.tokenizer)

    @property
    def rolling_prefix_id(self) -> int:
        """The token a rolling document is conditioned on: BOS, else EOS (as the harness's ``hf``)."""
        tok = self.tokenizer
        token = tok.bos_token_id if getattr(tok, "bos_token_id", None) is not None else tok.eos_token_id
        if token is None:
            raise ValueError("the tokenizer has neither a BOS nor an EOS token to start a rolling document with.")
        return int(token)

    def encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    # the memory ---------------------------------------------------------------------------
    def _read_context(self, ids: Sequence[int]) -> tuple[Any, Tensor]:
        """Write every whole segment of ``ids`` except the one holding its last token into memory;
        return the memory and the rest (the last token's segment, started at a segment boundary),
        so that running the rest with the memory equals running ``ids`` whole."""
        if not ids:
            raise ValueError("an empty context: the harness gives at least a prefix token.")
        if self.max_length is not None and len(ids) > self.max_length:
            raise ValueError(f"a context of {len(ids):,} tokens is over max_length={self.max_length:,}.")
        model = self.model
        if model.config.segment_alignment != "left":
            # segments cut from the end of the input: nothing can be written before the end is known
            return None, torch.tensor([list(ids)], dtype=torch.long)
        S = model.config.segment_size
        written = (len(ids) - 1) // S * S
        memory = None
        if written:
            reader = MemoryReader(model)
            step = self.chunk_segments * S
            for i in range(0, written, step):
                reader.feed(list(ids[i:min(i + step, written)]))
            memory = reader.finish(flush=False).memory
        if self.wipe_memory:
            memory = None
        return memory, torch.tensor([list(ids[written:])], dtype=torch.long)

    @torch.no_grad()
    def loglikelihood_tokens(self, pairs: Sequence[tuple[Sequence[int], Sequence[int]]]) -> list[tuple[float, bool]]:
        """``(sum of log p(continuation | context), whether greedy decoding gives it)`` per pair of
        token-id lists, the context read through the memory."""
        device = self.model.cell.memory_tokens.device
        out = []
        read: dict[tuple[int, ...], tuple[Any, Tensor]] = {}  # multiple choice: one context, several answers
        for context, continuation in pairs:
            if not continuation:
                raise ValueError("an empty continuation has no likelihood to score.")
            key = tuple(context)
            if key not in read:
                read = {key: self._read_context(context)}  # only the latest: constant memory
            memory, rest = read[key]
            ids = torch.cat([rest, torch.tensor([list(continuation)], dtype=torch.long)], dim=1).to(device)
            logits = self.model(ids, memory=memory).logits[0].float()
            # the logits at the context's last token and after predict the continuation
            start = rest.shape[1] - 1
            scores = torch.log_softmax(logits[start:start + len(continuation)], dim=-1)
            target = ids[0, start + 1:]
            logprob = scores.gather(-1, target[:, None]).sum().item()
            out.append((float(logprob), bool((scores.argmax(-1) == target).all())))
        return out

    # the harness's three requests ---------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        pairs = []
        for request in requests:
            context, continuation = request.args
            # trailing spaces of the context belong to the continuation's tokens, and the pair is
            # tokenized whole and then split (as the harness's own hf model does)
            cut = len(context) - len(context.rstrip())
            if cut:
                context, continuation = context[:-cut], context[-cut:] + continuation
            whole = self.encode(context + continuation)
            context_ids = self.encode(context) if context else []
            head = self.prefix_ids + context_ids or [self.rolling_prefix_id]
            pairs.append((head, whole[len(context_ids):]))
        # requests that share a context run one after another, so it is read once
        order = sorted(range(len(pairs)), key=lambda i: pairs[i][0])
        scored = self.loglikelihood_tokens([pairs[i] for i in order])
        out: list[tuple[float, bool]] = [(0.0, False)] * len(pairs)
        for i, result in zip(order, scored):
            out[i] = result
        return out

    @torch.no_grad()
    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        out = []
        for request in requests:
            (text,) = request.args[:1]
            ids = [self.rolling_prefix_id] + self.encode(text)
            reader = MemoryReader(self.model, compute_loss=True)
            step = self.chunk_segments * self.model.config.segment_size
            for i in range(0, len(ids), step):
                reader.feed(ids[i:i + step])
            out.append(-float(reader.finish(flush=True).loss_sum))
        return out

    @torch.no_grad()
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        device = self.model.cell.memory_tokens.device
        options = {"do_sample": False, **generation_defaults(self.tokenizer)}
        eos = options.get("eos_token_id")
        out = []
        for request in requests:
            context, kwargs = request.args
            kwargs = dict(kwargs or {})
            until = kwargs.pop("until", None) or []
            until = [until] if isinstance(until, str) else list(until)
            max_new = int(kwargs.pop("max_gen_toks", 256))
            if kwargs.pop("do_sample", False) or float(kwargs.pop("temperature", 0.0) or 0.0) > 0:
                raise ValueError("armt's harness model generates greedily; use do_sample=false, temperature=0.")
            memory, rest = self._read_context(self.prefix_ids + self.encode(context))
            rest = rest.to(device)
            new = self.model.generate(rest, memory=memory, max_new_tokens=max_new, **options)[0, rest.shape[1]:].tolist()
            if eos is not None and eos in new:
                new = new[:new.index(eos)]
            text = self.tokenizer.decode(new, skip_special_tokens=True)
            for stop in until:
                if stop and stop in text:
                    text = text[:text.index(stop)]
            out.append(text)
        return out


class _ByteTokenizer:
    """One token per byte (ids 3..258), BOS 1, EOS 2: the doctest's tokenizer."""

    bos_token_id, eos_token_id, pad_token_id = 1, 2, 0

    def __len__(self) -> int:
        return 259

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [b + 3 for b in text.encode()]}

    def decode(self, ids, skip_special_tokens=True):
        return bytes(i - 3 for i in ids if i >= 3).decode(errors="replace")
