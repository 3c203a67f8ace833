"""Where BABILong samples come from: the bAbI questions (a bAbI v1.2 folder, the built-in
generator or the published sets) and the background text (books, a dataset, generated prose),
opened once and described, so every table says which source it used."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .babi import BABI_DIR_ENV, HF_BABILONG, SPLITS
from .books import BookSource, load_books

BUILTIN = "builtin"


@dataclass(frozen=True)
class BabilongSources:
    """Where the questions and the background text come from, and what to call them.

    Build one with :func:`open_sources`. ``babi`` is what :func:`armt.data.babilong.iter_babilong`
    takes (a folder or ``"builtin"``), or ``"hf:<dataset>"`` for the published BABILong sets,
    whose records already hold their contexts (``background`` is then ``None``).
    """

    babi: Any
    babi_description: str
    background: Any
    background_description: str

    def to_dict(self) -> dict[str, str]:
        return {"babi": self.babi_description, "background": self.background_description}


def is_hub_source(babi: Any) -> bool:
    """Whether ``babi`` names the published BABILong sets on the Hub (``"hf"`` or ``"hf:<dataset>"``)
    rather than a bAbI folder, ``"builtin"`` or samples.

    Example:
        >>> is_hub_source("hf"), is_hub_source("hf:RMT-team/babilong"), is_hub_source("hfdata/babi")
        (True, True, False)
    """
    return isinstance(babi, str) and (babi == "hf" or babi.startswith("hf:"))


def open_sources(babi: Any = None, background: Any = None, *, seed: int = 0, split: str = "test") -> BabilongSources:
    """Open the bAbI questions and the background text, and describe them.

    Args:
        babi: a folder holding ``en/`` of bAbI v1.2 (or the ``en`` folder itself);
            ``"builtin"`` for :func:`armt.data.babi.generate_babi` (qa1-qa5 style, no files);
            ``"hf"`` or ``"hf:<dataset>"`` for the published BABILong sets on the Hugging Face
            Hub (``RMT-team/babilong``; needs the network or a cached copy); ``None`` reads
            ``$ARMT_BABI_DIR`` and falls back to the built-in generator.
        background: a folder of ``.txt`` books, one ``.txt`` file, a Hugging Face dataset name,
            ``"builtin"`` or ``None`` (generated prose), a :class:`~armt.data.books.BookSource`
            or a list of sentences.
        seed: seed of the built-in generators.
        split: the bAbI file split, ``"test"`` or ``"train"``.

    Example:
        >>> s = open_sources("builtin", None)
        >>> s.babi_description.startswith("built-in"), s.background.kind
        (True, 'builtin')
    """
    if split not in SPLITS:
        raise ValueError(f"split={split!r} is unknown; use one of {SPLITS}.")
    if babi is None:
        babi = os.environ.get(BABI_DIR_ENV) or BUILTIN
    if is_hub_source(babi):
        name = babi[3:] or HF_BABILONG
        if Path(name).expanduser().is_dir():
            return BabilongSources(f"hf:{name}", f"BABILong samples in {name} (written by armt babilong make-data; "
                                   "contexts included)", None, "none (the samples hold their contexts)")
        return BabilongSources(f"hf:{name}", f"published BABILong sets from Hugging Face {name} (contexts included)",
                               None, "none (the published samples hold their contexts)")
    if isinstance(babi, str) and babi == BUILTIN:
        babi_description = (f"built-in bAbI generator (qa1-qa5 style stories, seed {seed}; "
                            "armt.data.babi.generate_babi; no bAbI folder given)")
    elif isinstance(babi, (str, os.PathLike)):
        folder = Path(babi).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"babi={str(babi)!r} is not a folder; pass the folder holding en/ of bAbI "
                                    "v1.2, 'builtin' or 'hf'.")
        babi, babi_description = folder, f"bAbI v1.2 files in {folder} ({split} split)"
    else:
        babi_description = "given bAbI samples"
    if isinstance(background, BookSource):
        books = background
    elif background is None or isinstance(background, (str, os.PathLike)):
        books = load_books(background, seed=seed)
    else:
        return BabilongSources(babi, babi_description, background, "given sentences")
    return BabilongSources(babi, babi_description, books, books.description)
