"""The recurrent state of ARMT as plain values: one (A, z) pair per decoder layer."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

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
    """

    A: Tensor
    z: Tensor | None

    def detach(self) -> LayerMemory:
        return LayerMemory(self.A.detach(), None if self.z is None else self.z.detach())


@dataclass(frozen=True)
class MemoryState:
    """The memory after one or more segments: what crosses from one segment to the next.

    ``None`` stands for the empty memory before the first segment (no read, ``v_old = 0``,
    ``gamma = 1``), so a ``MemoryState`` always holds at least one written segment.

    Attributes:
        layers: one :class:`LayerMemory` per decoder layer.
        segments: how many segments have been written into it.

    Example:
        >>> import torch
        >>> state = MemoryState((LayerMemory(torch.zeros(2, 1, 6, 4), torch.zeros(2, 1, 6)),), 1)
        >>> state.batch_size, state.detach().segments
        (2, 1)
    """

    layers: tuple[LayerMemory, ...]
    segments: int

    @property
    def batch_size(self) -> int:
        return self.layers[0].A.shape[0]

    def detach(self) -> MemoryState:
        """The same values cut from the autograd graph (truncated backpropagation)."""
        return MemoryState(tuple(layer.detach() for layer in self.layers), self.segments)

    def to(self, *args, **kwargs) -> MemoryState:
        return MemoryState(
            tuple(
                LayerMemory(m.A.to(*args, **kwargs), None if m.z is None else m.z.to(*args, **kwargs))
                for m in self.layers
            ),
            self.segments,
        )

    def select(self, index: Sequence[int] | Tensor) -> MemoryState:
        """The memory of some batch items only, in the given order."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.layers[0].A.device)
        return MemoryState(
            tuple(
                LayerMemory(m.A.index_select(0, index), None if m.z is None else m.z.index_select(0, index))
                for m in self.layers
            ),
            self.segments,
        )

    def tensors(self) -> dict[str, Tensor]:
        """Flat name -> tensor mapping (the safetensors layout)."""
        out: dict[str, Tensor] = {}
        for i, m in enumerate(self.layers):
            out[f"layer{i}.A"] = m.A
            if m.z is not None:
                out[f"layer{i}.z"] = m.z
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
            layers = []
            for i in range(int(meta["num_layers"])):
                z_name = f"layer{i}.z"
                layers.append(LayerMemory(f.get_tensor(f"layer{i}.A"),
                                          f.get_tensor(z_name) if z_name in f.keys() else None))
        return cls(tuple(layers), int(meta["segments"]))
