"""The recurrent state of ARMT as plain values: one (A, z) pair per decoder layer, and with
``sliding_window`` the previous segment's keys and values; for the RMT baseline the memory
tokens' hidden states."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import Tensor

from .files import give_umask_modes

_FORMAT = "armt.memory_state.v1"


@dataclass(frozen=True)
class LayerMemory:
    """Associative memory of one decoder layer.

    Attributes:
        A: ``(batch, n_heads, d_key / n_heads, d_model / n_heads)`` association matrix.
        z: ``(batch, n_heads, d_key / n_heads)`` normaliser, or ``None`` when
            ``use_denom=False``.
        window_keys, window_values: ``(batch, kv_heads, W, head_dim)`` keys and values of the
            previous segment's W real tokens in this layer (``sliding_window=True``; detached,
            keys rotated as if the window sat at positions ``sink, sink + 1, ...``), else ``None``.
    """

    A: Tensor
    z: Tensor | None
    window_keys: Tensor | None = None
    window_values: Tensor | None = None

    def _map(self, fn) -> LayerMemory:
        def opt(t):
            return None if t is None else fn(t)

        return LayerMemory(fn(self.A), opt(self.z), opt(self.window_keys), opt(self.window_values))

    def detach(self) -> LayerMemory:
        return self._map(Tensor.detach)


@dataclass(frozen=True)
class MemoryState:
    """The memory after one or more segments: what crosses from one segment to the next.

    ``None`` stands for the empty memory before the first segment (no read, ``v_old = 0``,
    ``gamma = 1``), so a ``MemoryState`` always holds at least one written segment.

    Attributes:
        layers: one :class:`LayerMemory` per decoder layer.
        segments: how many segments have been written into it.
        window_mask: ``(batch, W)`` bool, which window entries are real tokens (not padding);
            ``None`` unless the state comes from a ``sliding_window=True`` model.
        tokens: ``(batch, num_mem_tokens, d_model)`` read memory of the next segment for the
            RMT baseline (``memory="tokens"``; its ``layers`` then hold empty ``A``), else ``None``.
        counts: ``(batch,)`` segments written per row when rows differ (padded batches, where a
            short row skips the segments that are pure padding for it); ``None`` when every row
            has written ``segments``. :meth:`segment_counts` always gives the per-row numbers.

    Example:
        >>> import torch
        >>> state = MemoryState((LayerMemory(torch.zeros(2, 1, 6, 4), torch.zeros(2, 1, 6)),), 1)
        >>> state.batch_size, state.detach().segments
        (2, 1)
    """

    layers: tuple[LayerMemory, ...]
    segments: int
    window_mask: Tensor | None = None
    tokens: Tensor | None = None
    counts: Tensor | None = None

    def __post_init__(self) -> None:
        if self.counts is not None:
            counts = torch.as_tensor(self.counts, dtype=torch.long)
            if counts.dim() != 1 or counts.shape[0] != self.batch_size:
                raise ValueError(f"counts must have shape ({self.batch_size},), got {tuple(counts.shape)}.")
            if bool((counts == counts[0]).all()):  # one number for all rows: the plain form
                object.__setattr__(self, "segments", int(counts[0]))
                counts = None
            else:
                object.__setattr__(self, "segments", int(counts.max()))
            object.__setattr__(self, "counts", counts)

    def segment_counts(self) -> Tensor:
        """``(batch,)`` segments written by each row."""
        if self.counts is not None:
            return self.counts
        return torch.full((self.batch_size,), self.segments, dtype=torch.long)

    def advanced(self) -> tuple[int, Tensor | None]:
        """``(segments, counts)`` after one more segment written by every row."""
        return self.segments + 1, None if self.counts is None else self.counts + 1

    @property
    def batch_size(self) -> int:
        return self.layers[0].A.shape[0]

    @property
    def window_length(self) -> int:
        """How many tokens the sliding window holds (0 without one)."""
        return 0 if self.window_mask is None else self.window_mask.shape[1]

    def _map(self, fn, mask_fn=None) -> MemoryState:
        mask = self.window_mask
        if mask is not None:
            mask = (mask_fn or fn)(mask)
        tokens = None if self.tokens is None else fn(self.tokens)
        return replace(self, layers=tuple(m._map(fn) for m in self.layers), window_mask=mask, tokens=tokens)

    @classmethod
    def cat(cls, states: Sequence[MemoryState]) -> MemoryState:
        """The states of several batches as one batch (rows in order; per-row segment counts
        kept). They must come from the same model (and, with a sliding window, hold windows of
        the same length).

        Example:
            >>> import torch
            >>> one = MemoryState((LayerMemory(torch.zeros(1, 1, 6, 4), torch.zeros(1, 1, 6)),), 2)
            >>> two = MemoryState((LayerMemory(torch.ones(2, 1, 6, 4), torch.ones(2, 1, 6)),), 3)
            >>> both = MemoryState.cat([one, two])
            >>> both.batch_size, both.segment_counts().tolist()
            (3, [2, 3, 3])
        """
        first = states[0]

        def join(get):
            parts = [get(s) for s in states]
            if all(p is None for p in parts):
                return None
            if any(p is None for p in parts) or len({tuple(p.shape[1:]) for p in parts}) != 1:
                raise ValueError("these memory states do not fit together (another model, or sliding windows of "
                                 "different lengths).")
            return torch.cat(parts, dim=0)

        layers = tuple(
            LayerMemory(join(lambda s, i=i: s.layers[i].A), join(lambda s, i=i: s.layers[i].z),
                        join(lambda s, i=i: s.layers[i].window_keys), join(lambda s, i=i: s.layers[i].window_values))
            for i in range(len(first.layers))
        )
        counts = torch.cat([s.segment_counts() for s in states])
        return cls(layers, int(counts.max()), join(lambda s: s.window_mask), join(lambda s: s.tokens), counts)

    def detach(self) -> MemoryState:
        """The same values cut from the autograd graph (truncated backpropagation)."""
        return self._map(Tensor.detach)

    def to(self, *args, **kwargs) -> MemoryState:
        """Move (and cast) every tensor; the window mask stays boolean."""
        return self._map(lambda t: t.to(*args, **kwargs), lambda t: t.to(*args, **kwargs).bool())

    def select(self, index: Sequence[int] | Tensor) -> MemoryState:
        """The memory of some batch items only, in the given order."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.layers[0].A.device)
        counts = None if self.counts is None else self.counts.index_select(0, index.cpu())
        picked = replace(self, counts=None)._map(lambda t: t.index_select(0, index.to(t.device)))
        return picked if counts is None else replace(picked, counts=counts)

    def non_finite(self) -> list[str]:
        """Names of the tensors that hold NaN or infinite values (empty when all is finite)."""
        return [name for name, t in self.tensors().items()
                if t.is_floating_point() and not bool(torch.isfinite(t).all())]

    def tensors(self) -> dict[str, Tensor]:
        """Flat name -> tensor mapping (the safetensors layout)."""
        out: dict[str, Tensor] = {}
        for i, m in enumerate(self.layers):
            out[f"layer{i}.A"] = m.A
            for name in ("z", "window_keys", "window_values"):
                if getattr(m, name) is not None:
                    out[f"layer{i}.{name}"] = getattr(m, name)
        if self.window_mask is not None:
            out["window_mask"] = self.window_mask
        if self.tokens is not None:
            out["tokens"] = self.tokens
        if self.counts is not None:
            out["segment_counts"] = self.counts
        return out

    def save(self, path: str | os.PathLike, *, overwrite: bool = False, model=None) -> None:
        """Write the state to a safetensors file; refuses to replace an existing file
        unless ``overwrite=True``. With ``model`` (the one that wrote the state) the file
        records its :meth:`armt.ARMTForCausalLM.signature`, which :meth:`load` checks."""
        from safetensors.torch import save_file

        if os.path.isdir(path):
            raise IsADirectoryError(f"{os.fspath(path)!r} is a folder; give a file name such as "
                                    f"{os.path.join(os.fspath(path), 'memory.safetensors')!r}.")
        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"{os.fspath(path)!r} exists; pass overwrite=True to replace it.")
        parent = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(parent):
            raise FileNotFoundError(f"the folder {parent!r} of {os.fspath(path)!r} does not exist; create it first.")
        bad = self.non_finite()
        if bad:
            raise ValueError(f"the memory state holds NaN or infinite values in {bad[:4]}; it is not saved. "
                             "The model overflowed (e.g. float16): use memory_dtype='float32' or float32 weights.")
        meta = {"format": _FORMAT, "segments": str(self.segments), "num_layers": str(len(self.layers))}
        if model is not None:
            model.cell.check_memory(self, self.batch_size)
            meta["model"] = json.dumps(model.signature())
        save_file({k: v.detach().contiguous() for k, v in self.tensors().items()}, os.fspath(path), metadata=meta)
        give_umask_modes(Path(path))

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu", *, model=None,
             check_model: bool = True) -> MemoryState:
        """Read a state written by :meth:`save`. With ``model``, the state must fit it (shapes,
        options) and, where the file records the model that wrote it, be that model's (its
        config and weights): a state of another model with the same shapes would give
        confident wrong answers. ``check_model=False`` accepts it anyway."""
        from safetensors import safe_open

        from safetensors import SafetensorError

        if not os.path.isfile(path):
            raise FileNotFoundError(f"memory state {os.fspath(path)!r} does not exist.")
        try:
            handle = safe_open(os.fspath(path), framework="pt", device=str(device))
        except (SafetensorError, OSError) as err:
            raise ValueError(f"{os.fspath(path)!r} is not a readable safetensors file ({err}); it may be truncated "
                             "or not a memory state.") from err
        with handle as f:
            meta = f.metadata() or {}
            if meta.get("format") != _FORMAT:
                raise ValueError(
                    f"{os.fspath(path)!r} is not an ARMT memory state (metadata {json.dumps(meta)}); "
                    "write one with MemoryState.save."
                )
            names = set(f.keys())
            try:
                num_layers, segments = int(meta["num_layers"]), int(meta["segments"])
            except (KeyError, ValueError) as err:
                raise ValueError(f"{os.fspath(path)!r} has broken metadata {json.dumps(meta)} ({err}); it was not "
                                 "written by MemoryState.save.") from None
            missing = [f"layer{i}.A" for i in range(num_layers) if f"layer{i}.A" not in names]
            if num_layers < 1 or segments < 1 or missing:
                raise ValueError(f"{os.fspath(path)!r} is not a complete memory state ({num_layers} layers, "
                                 f"{segments} segments, missing {missing[:4]}); it was not written by "
                                 "MemoryState.save.")

            def opt(name):
                return f.get_tensor(name) if name in names else None

            layers = tuple(
                LayerMemory(f.get_tensor(f"layer{i}.A"), opt(f"layer{i}.z"), opt(f"layer{i}.window_keys"),
                            opt(f"layer{i}.window_values"))
                for i in range(num_layers)
            )
            state = cls(layers, segments, opt("window_mask"), opt("tokens"), opt("segment_counts"))
        bad = state.non_finite()
        if bad:
            raise ValueError(f"{os.fspath(path)!r} holds NaN or infinite values in {bad[:4]}; it is not a usable state.")
        if model is not None:
            model.cell.check_memory(state.to(model.cell.memory_tokens.device), state.batch_size)
            if check_model and "model" in meta:
                differ = _signature_differs(json.loads(meta["model"]), model.signature())
                if differ:
                    raise ValueError(f"{os.fspath(path)!r} was written by another model ({differ} differ); its memory "
                                     "means nothing to this one. Read the text again with this model, or pass "
                                     "check_model=False (CLI: --any-model) to use it anyway.")
        return state


def _signature_differs(saved: dict, current: dict) -> str:
    """What differs between two model signatures ('' when they match); weights are compared
    loosely, so that a change of dtype is not a different model."""
    differ = [name for name in ("config", "base") if saved.get(name) != current.get(name)]
    a, b = saved.get("weights") or [], current.get("weights") or []
    if len(a) != len(b) or not torch.allclose(torch.tensor(a, dtype=torch.float64),
                                              torch.tensor(b, dtype=torch.float64), rtol=2e-2, atol=1e-3):
        differ.append("weights")
    return ", ".join({"config": "the ARMT config", "base": "the base architecture"}.get(d, d) for d in differ)
