"""Helpers of armt's lm-evaluation-harness tasks (loaded by the harness through ``!function``)."""

from __future__ import annotations

import re
from pathlib import Path


def _folder(data_dir, what: str) -> Path:
    if not data_dir:
        raise ValueError(f"{what} needs a folder: pass --metadata '{{\"data_dir\": \"DIR\", ...}}' to lm_eval.")
    folder = Path(data_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"data_dir={str(data_dir)!r} is not a folder.")
    return folder


def load_babilong(data_dir=None, max_seq_lengths="0k", qa_split="qa1", **_):
    """BABILong samples that ``armt babilong make-data`` wrote: ``data_dir/<length>/<task>.jsonl``
    (the fields of the Hub's ``RMT-team/babilong``: input, question, target)."""
    import datasets

    path = _folder(data_dir, "armt_babilong") / str(max_seq_lengths) / f"{qa_split}.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; write it with armt babilong make-data --tasks {qa_split} "
                                f"--lengths {max_seq_lengths} --out {data_dir}.")
    return {qa_split: datasets.load_dataset("json", data_files=str(path), split="train")}


def process_babilong(doc: dict, results: list[str]) -> dict[str, float]:
    """The harness's babilong metric: the target, lower-cased, inside the first answer."""
    pred = re.sub(r"[\x00-\x1f]", "\n", results[0].strip()).strip()
    return {"acc": 1.0 if doc.get("target", "").strip().lower() in pred.lower() else 0.0}


def load_texts(data_dir=None, **_):
    """Every ``*.txt`` file of ``data_dir`` as one document (field ``text``), sorted by name."""
    import datasets

    files = sorted(_folder(data_dir, "armt_text_perplexity").glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"no .txt files in {data_dir}.")
    docs = {"name": [f.name for f in files], "text": [f.read_text(encoding="utf-8") for f in files]}
    return {"test": datasets.Dataset.from_dict(docs)}


def process_rolling(doc: dict, results: list[float]) -> dict:
    """Word and byte counts beside the summed log-likelihood, as the harness's rolling tasks report."""
    (loglikelihood,) = results
    words = len(re.split(r"\s+", doc["text"]))
    size = len(doc["text"].encode("utf-8"))
    return {"word_perplexity": (loglikelihood, words), "byte_perplexity": (loglikelihood, size),
            "bits_per_byte": (loglikelihood, size)}
