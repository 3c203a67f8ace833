"""JSON Lines files: one record per line (the format of BABILong samples on disk)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def write_jsonl(records: Iterable[dict[str, Any]], path: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write one JSON object per line; refuses to replace an existing file unless ``overwrite``.

    Example:
        >>> import tempfile, pathlib
        >>> out = pathlib.Path(tempfile.mkdtemp()) / "qa1_0k.jsonl"
        >>> write_jsonl([{"input": "a", "question": "b", "target": "c"}], out).read_text()
        '{"input": "a", "question": "b", "target": "c"}\\n'
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists; pass overwrite=True (--overwrite on the command line) to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for record in records:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
    tmp.replace(path)
    return path


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a JSONL file written by :func:`write_jsonl`."""
    with Path(path).open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
