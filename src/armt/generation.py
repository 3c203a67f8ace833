"""Generation after a long context: the context is read segment by segment (memory written),
then Hugging Face ``generate`` decodes on the last segment with its key/value cache while every
layer reads the memory. When the decoded text fills the segment, the segment is written to
memory and decoding continues in a fresh one, exactly as a forward pass over the whole text
would split it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import torch
from torch import Tensor

from . import window as sliding
from .padding import PaddingPlan
from .segments import iter_segments, run_segment, segment_bounds
from .state import MemoryState
from .wavefront import use_wavefront, wavefront_segments


class _ChunkStreamer:
    """Shows a user's streamer one continuous generation although ``generate`` is called once
    per segment: every call starts by putting its prompt (already streamed) and ends with
    ``end()`` (only the last one counts)."""

    def __init__(self, streamer):
        self.streamer = streamer
        self.first_put = True

    def new_call(self) -> _ChunkStreamer:
        self.first_put = True
        return self

    def put(self, value):
        if self.first_put:
            self.first_put = False
            return
        self.streamer.put(value)

    def end(self):
        pass


def generation_defaults(tokenizer=None, model=None, hf_kwargs: dict | None = None) -> dict:
    """The end-of-sequence and padding ids for ``generate``, decided in one place: values in
    ``hf_kwargs`` first, then the tokenizer's, then the base model's ``generation_config``;
    the padding id falls back to the (smallest) end-of-sequence id. Keys that nothing sets are
    left out.

    Example:
        >>> class Tok: eos_token_id, pad_token_id = 2, None
        >>> generation_defaults(Tok())
        {'eos_token_id': 2, 'pad_token_id': 2}
        >>> generation_defaults(Tok(), hf_kwargs={"pad_token_id": 0})
        {'eos_token_id': 2, 'pad_token_id': 0}
    """
    hf_kwargs = hf_kwargs or {}
    gen_cfg = hf_kwargs.get("generation_config")
    if gen_cfg is None and model is not None:
        gen_cfg = getattr(model.cell.runner, "generation_config", None)

    def first(name):
        for source in (hf_kwargs, tokenizer, gen_cfg):
            value = source.get(name) if isinstance(source, dict) else getattr(source, name, None)
            if value is not None:
                return value
        return None

    out = {}
    eos = first("eos_token_id")
    pad = first("pad_token_id")
    if eos is not None:
        out["eos_token_id"] = eos
        if pad is None:
            pad = min(eos) if isinstance(eos, (list, tuple)) else eos
    if pad is not None:
        out["pad_token_id"] = int(pad)
    return out


def _eos_ids(defaults: dict) -> set[int]:
    eos = defaults.get("eos_token_id")
    if eos is None:
        return set()
    return {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}


def _check_sampling(hf_kwargs: dict) -> None:
    """Refuse sampling settings outside their ranges (Hugging Face only warns about some and
    then samples from something else than asked)."""
    ranges = {"top_p": (0.0, 1.0, "a probability in (0, 1]"), "temperature": (0.0, None, "a number > 0"),
              "repetition_penalty": (0.0, None, "a number > 0"), "min_p": (-1e-12, 1.0, "a probability in [0, 1]"),
              "typical_p": (0.0, 1.0, "a probability in (0, 1]")}
    for key, (low, high, what) in ranges.items():
        value = hf_kwargs.get(key)
        if value is not None and not (value > low and (high is None or value <= high)):
            raise ValueError(f"generate(..., {key}={value!r}): {key} must be {what}.")
    top_k = hf_kwargs.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or int(top_k) != top_k or top_k < 0):
        raise ValueError(f"generate(..., top_k={top_k!r}): top_k must be an integer >= 0 (0: no limit).")


@torch.no_grad()
def generate(
    cell,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    memory: MemoryState | None = None,
    *,
    max_new_tokens: int,
    write_segments: bool = True,
    return_memory: bool = False,
    **hf_kwargs,
):
    """Read ``input_ids`` through the memory of ``cell`` (an :class:`armt.ARMTCell`) and
    continue it with Hugging Face ``generate``; the inputs were checked by the caller.

    See :meth:`armt.ARMTForCausalLM.generate` (the public entry point).
    """
    if max_new_tokens is None or int(max_new_tokens) < 1:
        raise ValueError(f"max_new_tokens must be a positive number of tokens, got {max_new_tokens!r}.")
    for key in ("num_beams", "num_return_sequences"):
        if int(hf_kwargs.get(key) or 1) > 1:
            raise ValueError(
                f"generate(..., {key}={hf_kwargs[key]}) is not supported by ARMT generation (the memory is "
                "one state per row); use greedy search or sampling, and repeat rows to get several samples."
            )
    _check_sampling(hf_kwargs)
    for key in ("inputs_embeds", "past_key_values", "cache", "max_length", "return_dict_in_generate"):
        if hf_kwargs.get(key) not in (None, False):
            raise ValueError(
                f"generate(..., {key}=...) is not supported by ARMT generation: the context is passed "
                "as input_ids, the cache is managed per segment, and max_new_tokens sets the length."
            )
    B, L = input_ids.shape
    if attention_mask is not None and not bool(attention_mask.all()):
        return _generate_rows(cell, input_ids, attention_mask, memory, max_new_tokens=max_new_tokens,
                              write_segments=write_segments, return_memory=return_memory, **hf_kwargs)
    cfg = cell.config
    S = cfg.segment_size
    if attention_mask is not None and bool(attention_mask.all()):
        attention_mask = None
    embed = cell.runner.get_input_embeddings()
    bounds = segment_bounds(L, S, cfg.segment_alignment)
    # the context up to the open (last) segment is written to memory
    def embed_ids(a: int, b: int):
        return embed(input_ids[:, a:b])

    steps = None
    if use_wavefront(cell, None, padded=attention_mask is not None):  # ARMTConfig.wavefront
        steps = wavefront_segments(cell, embed_ids, bounds[:-1], memory, lambda s, last: False)
    if steps is None:
        steps = iter_segments(cell, embed_ids, bounds[:-1], attention_mask, memory, logits_for=lambda s, last: False)
    for step in steps:
        memory = step.memory
    start = bounds[-1][0]
    seg_ids = input_ids[:, start:]
    seg_mask = None if attention_mask is None else attention_mask[:, start:]

    defaults = _defaults(cell, hf_kwargs)
    eos = _eos_ids(defaults)
    pad = defaults.get("pad_token_id", 0)
    streamer = hf_kwargs.pop("streamer", None)
    chunk_streamer = _ChunkStreamer(streamer) if streamer is not None else None
    if streamer is not None:
        streamer.put(input_ids.cpu())  # the prompt, once, as HF generate does
    hf_kwargs.setdefault("pad_token_id", pad)

    produced: list[Tensor] = []
    finished = torch.zeros(B, dtype=torch.bool, device=input_ids.device)
    remaining = int(max_new_tokens)
    while remaining > 0:
        # with writing on, a segment can hold S tokens: fill it, plus the one token predicted
        # from its last position, which opens the next segment
        steps = min(remaining, S - seg_ids.shape[1] + 1) if write_segments else remaining
        gen = _generate_in_segment(cell, seg_ids, seg_mask, memory, steps, chunk_streamer, hf_kwargs)
        if bool(finished.any()):
            gen = torch.where(finished.unsqueeze(1), torch.full_like(gen, pad), gen)
        produced.append(gen)
        remaining -= gen.shape[1]
        if eos:
            finished |= torch.isin(gen, torch.tensor(sorted(eos), device=gen.device)).any(dim=1)
        if gen.shape[1] < steps or bool(finished.all()) or remaining == 0:
            break
        # the segment is full: write it and decode on in a fresh one
        full_ids = torch.cat([seg_ids, gen[:, :-1]], dim=1)
        full_mask = None
        if seg_mask is not None:
            full_mask = torch.cat([seg_mask, torch.ones_like(gen[:, :-1], dtype=seg_mask.dtype)], dim=1)
        _, memory = run_segment(cell, embed(full_ids), full_mask, memory, compute_logits=False)
        seg_ids, seg_mask = gen[:, -1:], None

    if streamer is not None:
        streamer.end()
    out = torch.cat([input_ids] + produced, dim=1)
    return (out, memory) if return_memory else out


def _defaults(cell, hf_kwargs: dict) -> dict:
    """:func:`generation_defaults` of the call's arguments and the base model's generation config."""
    base = {"generation_config": getattr(cell.runner, "generation_config", None)}
    return generation_defaults(hf_kwargs={**base, **hf_kwargs})


def _write_rows(cell, ids: Tensor, mask: Tensor, memory: MemoryState | None) -> MemoryState:
    """Write rows whose real tokens start at 0 (``mask``: right padding) into memory, each row's
    memory as if it came alone (see :mod:`armt.padding`)."""
    plan = PaddingPlan.from_mask(mask)
    table = cell.runner.get_input_embeddings()
    bounds = segment_bounds(ids.shape[1], cell.config.segment_size, "left")

    def embed(a: int, b: int) -> Tensor:
        return table(ids[:, a:b])

    if not plan.padded:
        steps = wavefront_segments(cell, embed, bounds, memory, lambda s, last: False) \
            if use_wavefront(cell, None, padded=False) else None
        if steps is None:
            steps = iter_segments(cell, embed, bounds, None, memory, logits_for=lambda s, last: False)
    else:
        if cell.config.sliding_window:
            raise ValueError("padded batches are not supported with sliding_window=True (a short row's window would "
                             "hold padding); generate rows of different lengths separately.")
        steps = iter_segments(cell, embed, bounds, mask, memory, logits_for=lambda s, last: False,
                              active=plan.active)
    for step in steps:
        memory = step.memory
    return memory


def _generate_rows(cell, input_ids, attention_mask, memory, *, max_new_tokens, write_segments, return_memory,
                   **hf_kwargs):
    """A padded batch (left or right padding), exactly as if each row came alone: the full
    segments of every row's context are read in one padded forward pass (exact per row, see
    :mod:`armt.padding`); then rows whose open (last) segments have the same length decode
    together, unpadded. The new tokens are appended after the padded rows (as Hugging Face
    does), rows that stop early filled with the pad token."""
    plan = PaddingPlan.from_mask(attention_mask)
    if hf_kwargs.get("streamer") is not None:
        raise ValueError("a streamer shows one sequence; pass one row (no padding) when streaming.")
    S, B = cell.config.segment_size, input_ids.shape[0]
    rows = [input_ids[i, int(plan.starts[i]):int(plan.starts[i]) + int(plan.lengths[i])] for i in range(B)]
    # where each row's open segment starts: what comes before it is written to memory first
    cuts = [segment_bounds(r.shape[0], S, "left")[-1][0] for r in rows]
    states: list[MemoryState | None] = [None if memory is None else memory.select([i]) for i in range(B)]
    read = [i for i in range(B) if cuts[i] > 0]
    if read:
        width = max(cuts[i] for i in read)
        ids = input_ids.new_zeros((len(read), width))
        mask = torch.zeros_like(ids)
        for j, i in enumerate(read):
            ids[j, :cuts[i]], mask[j, :cuts[i]] = rows[i][:cuts[i]], 1
        start = None if memory is None else memory.select(read)
        written = _write_rows(cell, ids, mask, start)
        for j, i in enumerate(read):
            states[i] = written.select([j])
    groups: dict[tuple[int, bool], list[int]] = {}
    for i in range(B):
        groups.setdefault((rows[i].shape[0] - cuts[i], states[i] is not None), []).append(i)
    new: list[Tensor | None] = [None] * B
    ends: list[MemoryState | None] = [None] * B
    for (_, has_state), members in groups.items():
        ids = torch.stack([rows[i][cuts[i]:] for i in members])
        state = MemoryState.cat([states[i] for i in members]) if has_state else None
        out, end = generate(cell, ids, None, state, max_new_tokens=max_new_tokens, write_segments=write_segments,
                            return_memory=True, **hf_kwargs)
        for j, i in enumerate(members):
            new[i], ends[i] = out[j, ids.shape[1]:], end.select([j])
    pad = _defaults(cell, hf_kwargs).get("pad_token_id", 0)
    width = max(r.shape[0] for r in new)
    tokens = torch.stack([torch.cat([r, r.new_full((width - r.shape[0],), pad)]) for r in new])
    out = torch.cat([input_ids, tokens], dim=1)
    if not return_memory:
        return out
    try:
        return out, MemoryState.cat(ends)
    except ValueError as err:
        raise ValueError(f"return_memory=True with this padded batch: {err} Generate the rows separately.") from err


def _generate_in_segment(cell, seg_ids, seg_mask, memory, steps, streamer, hf_kwargs) -> Tensor:
    """Decode ``steps`` tokens after ``seg_ids`` (the open segment) reading ``memory``; returns
    only the new tokens ``(B, <= steps)``."""
    runner = cell.runner
    B = seg_ids.shape[0]
    kwargs = dict(hf_kwargs)
    if streamer is not None:
        kwargs["streamer"] = streamer.new_call()
    mask = seg_mask if seg_mask is not None else torch.ones_like(seg_ids)
    windowed = memory is not None and memory.window_mask is not None
    with cell.reading(memory), (_window_masks(cell, memory) if windowed else nullcontext()):
        before = cell.prefix_embeds(memory, B)  # sink and, for RMT, the read memory
        if before is not None or windowed:
            # the cache holds [window, sink, RMT read memory] before the segment's tokens, as in
            # a forward pass, and the mask covers it all so that HF decodes the tokens after it
            cache = sliding.prefilled_cache(memory)
            name = sliding.cache_argument(runner)
            prefix = [memory.window_mask.to(mask.dtype)] if windowed else []
            if before is not None:
                prefix.append(torch.ones_like(mask[:, :1]).expand(-1, before.shape[1]))
                runner(inputs_embeds=before, use_cache=True,
                       attention_mask=torch.cat(prefix, dim=1), return_dict=True, **{name: cache})
            kwargs[name] = cache
            mask = torch.cat(prefix + [mask], dim=1)
        out = runner.generate(input_ids=seg_ids, attention_mask=mask, max_new_tokens=steps, **kwargs)
    return out[:, seg_ids.shape[1]:]


@contextmanager
def _window_masks(cell, memory: MemoryState) -> Iterator[None]:
    """While decoding, turn every call's 2D mask (over ``[window, sink?, tokens]``) into the
    sliding-window mask and its positions, as :meth:`ARMTCell.forward` builds them."""
    runner = cell.runner
    W, o = memory.window_length, int(cell.sink is not None)
    name = sliding.cache_argument(runner)

    def before(module, args, kwargs):
        inputs = kwargs.get("input_ids")
        if inputs is None:
            inputs = kwargs["inputs_embeds"]
        q = inputs.shape[1]
        c = kwargs[name].get_seq_length()
        full = kwargs.get("attention_mask")
        T = c + q - W - o  # segment tokens among the keys
        token_valid = (torch.ones(inputs.shape[0], T, dtype=torch.bool, device=inputs.device) if full is None
                       else full[:, W + o:].bool())
        first = max(c - W - o, 0)
        mask = sliding.window_mask(memory.window_mask, token_valid, sink=bool(o), num_mem_tokens=0,
                                   segment_size=cell.config.segment_size, query_tokens=range(first, T),
                                   query_sink=bool(o) and c == W, query_memory=False)
        positions = torch.arange(o + W + first, o + W + T, device=inputs.device)
        if o and c == W:
            positions = torch.cat([torch.zeros(1, dtype=positions.dtype, device=positions.device), positions])
        kwargs = dict(kwargs, position_ids=positions.unsqueeze(0),
                      attention_mask=sliding.model_mask(mask, runner, cell.memory_tokens.dtype))
        return args, kwargs

    handle = runner.register_forward_pre_hook(before, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()
