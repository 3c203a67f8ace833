"""The recurrent state of ARMT as plain values: one (A, z) pair per decoder layer, and with
``sliding_window`` the previous segment's keys and values."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch
from torch import Tensor

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

    Example:
        >>> import torch
        >>> state = MemoryState((LayerMemory(torch.zeros(2, 1, 6, 4), torch.zeros(2, 1, 6)),), 1)
        >>> state.batch_size, state.detach().segments
        (2, 1)
    """

    layers: tuple[LayerMemory, ...]
    segments: int
    window_mask: Tensor | None = None

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
        return replace(self, layers=tuple(m._map(fn) for m in self.layers), window_mask=mask)

    def detach(self) -> MemoryState:
        """The same values cut from the autograd graph (truncated backpropagation)."""
        return self._map(Tensor.detach)

    def to(self, *args, **kwargs) -> MemoryState:
        """Move (and cast) every tensor; the window mask stays boolean."""
        return self._map(lambda t: t.to(*args, **kwargs), lambda t: t.to(*args, **kwargs).bool())

    def select(self, index: Sequence[int] | Tensor) -> MemoryState:
        """The memory of some batch items only, in the given order."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.layers[0].A.device)
        return self._map(lambda t: t.index_select(0, index.to(t.device)))

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
        return out

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> None:
        """Write the state to a safetensors file; refuses to replace an existing file
        unless ``overwrite=True``."""
        from safetensors.torch import save_file

        if os.path.exists(path) and not overwrite:
            raise FileExistsError(f"{os.fspath(path)!r} exists; pass overwrite=True to replace it.")
        meta = {"format": _FORMAT, "segments": str(self.segments), "num_layers": str(len(self.layers))}
        save_file({k: v.detach().contiguous() for k, v in self.tensors().items()}, os.fspath(path), metadata=meta)

    @classmethod
    def load(cls, path: str | os.PathLike, device: str | torch.device = "cpu") -> MemoryState:
        """Read a state written by :meth:`save`."""
        from safetensors import safe_open

        with safe_open(os.fspath(path), framework="pt", device=str(device)) as f:
            meta = f.metadata() or {}
            if meta.get("format") != _FORMAT:
                raise ValueError(
                    f"{os.fspath(path)!r} is not an ARMT memory state (metadata {json.dumps(meta)}); "
                    "write one with MemoryState.save."
                )
            names = set(f.keys())

            def opt(name):
                return f.get_tensor(name) if name in names else None

            layers = tuple(
                LayerMemory(f.get_tensor(f"layer{i}.A"), opt(f"layer{i}.z"), opt(f"layer{i}.window_keys"),
                            opt(f"layer{i}.window_values"))
                for i in range(int(meta["num_layers"]))
            )
            return cls(layers, int(meta["segments"]), opt("window_mask"))
