"""Small helpers for the files armt writes."""

from __future__ import annotations

import os
from pathlib import Path


def give_umask_modes(root: Path) -> None:
    """Give ``root`` and everything under it the permissions a plain ``open``/``mkdir`` would
    (temporary folders and files are created private, 0700/0600, which a shared run folder
    must not inherit)."""
    mask = os.umask(0)
    os.umask(mask)
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    for p in paths:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~mask)
