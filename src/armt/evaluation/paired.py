"""Two models asked the same BABILong questions: the questions only one of them got right, and
how likely such a split is by chance (McNemar's exact test).

Two accuracies whose 95% intervals overlap can still differ clearly when both models answered the
same questions: what matters is how often one is right where the other is wrong. ``armt babilong
eval`` asks the same questions for the same ``--seed``, so an ARMT model and the same weights
with ``--wipe-memory`` can be paired question by question.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .reports import _length_key, prediction_files

# what makes two records the same question: its place in the sample stream, its text, its
# answer and the size of its context
_SAME_SAMPLE = ("index", "question", "target", "context_tokens")


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided p-value of McNemar's exact test: the chance, if both models were equally good,
    of a split of the discordant questions at least as uneven as ``only_a`` vs ``only_b``.

    Example:
        >>> round(mcnemar_exact(12, 2), 4), mcnemar_exact(3, 3), mcnemar_exact(0, 0)
        (0.0129, 1.0, 1.0)
    """
    if only_a < 0 or only_b < 0:
        raise ValueError(f"counts must be >= 0, got only_a={only_a}, only_b={only_b}.")
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def prediction_records(folders: Sequence[str | os.PathLike], task: str) -> dict[str, list[dict[str, Any]]]:
    """``{length: per-question records}`` that ``armt babilong eval`` wrote for ``task`` in
    ``folders``; files of older versions named by token count (``qa1_256.jsonl``) count as
    their length's name (``0.25k``)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for folder in folders:
        for _, length, path in prediction_files(folder, task):
            if length in found:
                raise ValueError(f"two folders hold {task} predictions at {length} ({path}); keep one.")
            with open(path, encoding="utf-8") as f:
                found[length] = [json.loads(line) for line in f if line.strip()]
    return found


def paired_counts(a: Sequence[dict[str, Any]], b: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Question-by-question counts of two models' records of one task and length.

    Raises:
        ValueError: the records are not the same questions (other ``--seed``, ``--n`` or data).

    Example:
        >>> q = lambda i, ok: {"index": i, "question": "Where is Mary?", "target": "hall",
        ...                    "context_tokens": 256, "correct": ok}
        >>> c = paired_counts([q(0, True), q(1, True), q(2, False)], [q(0, True), q(1, False), q(2, False)])
        >>> c["both"], c["only_a"], c["only_b"], c["neither"], c["p_value"]
        (1, 1, 0, 1, 1.0)
    """
    if len(a) != len(b):
        raise ValueError(f"the two runs answered {len(a)} and {len(b)} questions; evaluate both with the same "
                         "--n and --seed to pair them.")
    counts = {"both": 0, "only_a": 0, "only_b": 0, "neither": 0}
    for x, y in zip(sorted(a, key=lambda r: r["index"]), sorted(b, key=lambda r: r["index"])):
        differ = [f for f in _SAME_SAMPLE if x.get(f) != y.get(f)]
        if differ:
            raise ValueError(f"question {x.get('index')} differs between the runs in {differ}; they did not answer "
                             "the same samples (evaluate both with the same --seed, --babi and --background).")
        key = {(True, True): "both", (True, False): "only_a", (False, True): "only_b", (False, False): "neither"}
        counts[key[bool(x["correct"]), bool(y["correct"])]] += 1
    return {**counts, "n": len(a), "p_value": mcnemar_exact(counts["only_a"], counts["only_b"])}


def paired_comparisons(runs: Mapping[str, Sequence[str | os.PathLike]], task: str) -> list[dict[str, Any]]:
    """The first model of ``runs`` paired with each other one, at every length both have
    predictions for (``runs`` as in :func:`armt.evaluation.reports.compare_runs`)."""
    names = list(runs)
    if len(names) < 2:
        raise ValueError("pairing needs two models or more (--run A=... --run B=...).")
    first = prediction_records(runs[names[0]], task)
    out = []
    for other in names[1:]:
        theirs = prediction_records(runs[other], task)
        for length in sorted(set(first) & set(theirs), key=_length_key):
            out.append({"a": names[0], "b": other, "task": task, "length": length,
                        **paired_counts(first[length], theirs[length])})
    if not out:
        raise ValueError(f"no length has {task} predictions in both {names[0]!r} and another run; pairing needs "
                         "the predictions/ folders armt babilong eval writes.")
    return out


def add_paired(out_dir: str | os.PathLike, pairs: Sequence[dict[str, Any]]) -> str:
    """Add the paired counts under the table of a comparison that
    :func:`armt.evaluation.reports.write_comparison` wrote in ``out_dir`` (``comparison.md``,
    and ``"paired"`` in ``comparison.json``); returns the text added."""
    out = Path(out_dir)
    text = ("The same questions, paired (McNemar's exact test: the chance of a split of the questions only one "
            "model got right at least this uneven, were both equally good):\n\n" + paired_table(pairs))
    md = out / "comparison.md"
    md.write_text(md.read_text(encoding="utf-8") + "\n" + text + "\n", encoding="utf-8")
    record = json.loads((out / "comparison.json").read_text(encoding="utf-8"))
    record["paired"] = list(pairs)
    (out / "comparison.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    return text


def paired_table(pairs: Sequence[dict[str, Any]]) -> str:
    """One row per pair and length: questions only each model got right, and the p-value.

    Example:
        >>> print(paired_table([{"a": "ARMT", "b": "wiped", "length": "1k", "n": 40, "both": 10,
        ...                      "only_a": 12, "only_b": 2, "neither": 16, "p_value": 0.0129}]))
        | length | n | both right | only ARMT | only wiped | neither | p (McNemar, exact) |
        |---|---|---|---|---|---|---|
        | 1k | 40 | 10 | 12 | 2 | 16 | 0.0129 |
    """
    lines = []
    for (a, b) in dict.fromkeys((p["a"], p["b"]) for p in pairs):
        lines += [f"| length | n | both right | only {a} | only {b} | neither | p (McNemar, exact) |",
                  "|---|---|---|---|---|---|---|"]
        lines += [f"| {p['length']} | {p['n']} | {p['both']} | {p['only_a']} | {p['only_b']} | {p['neither']} | "
                  f"{p['p_value']:.3g} |" for p in pairs if (p["a"], p["b"]) == (a, b)]
        lines.append("")
    return "\n".join(lines).rstrip("\n")
