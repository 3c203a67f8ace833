"""Pairing two models' answers to the same BABILong questions."""

from __future__ import annotations

import json
import math

import pytest

from armt.evaluation.paired import mcnemar_exact, paired_comparisons, paired_counts, paired_table
from armt.evaluation.reports import result_record, write_results


def _two_sided_by_enumeration(only_a: int, only_b: int) -> float:
    # the exact test from its definition: every split of the discordant questions that is no
    # more likely than the observed one, under a fair coin
    n = only_a + only_b
    prob = [math.comb(n, k) / 2**n for k in range(n + 1)]
    return min(1.0, sum(p for p in prob if p <= prob[only_a] * (1 + 1e-12)))


@pytest.mark.parametrize("only_a,only_b", [(0, 0), (5, 0), (0, 5), (12, 2), (3, 3), (7, 4), (30, 12), (1, 0)])
def test_mcnemar_exact_matches_enumeration(only_a, only_b):
    assert mcnemar_exact(only_a, only_b) == pytest.approx(_two_sided_by_enumeration(only_a, only_b), rel=1e-12)
    assert mcnemar_exact(only_a, only_b) == mcnemar_exact(only_b, only_a)


def test_mcnemar_known_values_and_bad_counts():
    assert mcnemar_exact(5, 0) == pytest.approx(0.0625)  # 2 / 2**5
    assert mcnemar_exact(12, 2) == pytest.approx(0.012939, abs=1e-6)
    with pytest.raises(ValueError, match="counts"):
        mcnemar_exact(-1, 2)


def _records(length, correct, *, question="Where is Mary?", tokens=256):
    return [{"task": "qa1", "length": length, "index": i, "question": question, "target": "hall",
             "context_tokens": tokens, "correct": ok} for i, ok in enumerate(correct)]


def test_paired_counts_and_refusals():
    a = _records("1k", [True, True, False, False, True])
    b = _records("1k", [True, False, False, True, False])
    c = paired_counts(a, b)
    assert (c["both"], c["only_a"], c["only_b"], c["neither"], c["n"]) == (1, 2, 1, 1, 5)
    assert c["p_value"] == pytest.approx(mcnemar_exact(2, 1))
    with pytest.raises(ValueError, match="same --n"):
        paired_counts(a, b[:4])
    with pytest.raises(ValueError, match="differs between the runs in \\['question'\\]"):
        paired_counts(a, _records("1k", [True] * 5, question="Where is John?"))
    with pytest.raises(ValueError, match="context_tokens"):
        paired_counts(a, _records("1k", [True] * 5, tokens=300))


def _write_predictions(folder, name, records):
    (folder / "predictions").mkdir(parents=True, exist_ok=True)
    with open(folder / "predictions" / f"qa1_{name}.jsonl", "w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    correct = sum(r["correct"] for r in records)
    write_results([result_record("qa1", name, correct, len(records))], folder, overwrite=True)


def test_paired_comparisons_from_eval_folders_and_the_shell(tmp_path, capsys):
    from armt.cli import main

    # an older evaluation named 256 tokens "256"; it pairs with the new name "0.25k"
    _write_predictions(tmp_path / "armt", "256", _records("256", [True] * 6 + [False] * 2))
    _write_predictions(tmp_path / "armt_1k", "1k", _records("1k", [True, False], tokens=1024))
    _write_predictions(tmp_path / "wiped", "0.25k", _records("0.25k", [True, False] * 4))
    pairs = paired_comparisons({"ARMT": [tmp_path / "armt", tmp_path / "armt_1k"], "wiped": [tmp_path / "wiped"]}, "qa1")
    assert [(p["length"], p["both"], p["only_a"], p["only_b"], p["neither"]) for p in pairs] == [("0.25k", 3, 3, 1, 1)]
    assert "| 0.25k | 8 | 3 | 3 | 1 | 1 | 0.625 |" in paired_table(pairs)
    with pytest.raises(ValueError, match="two models"):
        paired_comparisons({"ARMT": [tmp_path / "armt"]}, "qa1")
    with pytest.raises(ValueError, match="no length has qa1 predictions in both"):
        paired_comparisons({"ARMT": [tmp_path / "armt_1k"], "wiped": [tmp_path / "wiped"]}, "qa1")

    args = ["babilong", "compare", "--run", f"ARMT={tmp_path / 'armt'},{tmp_path / 'armt_1k'}",
            "--run", f"wiped={tmp_path / 'wiped'}", "--out", str(tmp_path / "cmp"), "--paired"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "| 0.25k | 75% (n=8, 41-93) | 50% (n=8, 22-78) |" in out and "| only ARMT | only wiped |" in out
    assert "| 0.25k | 8 | 3 | 3 | 1 | 1 | 0.625 |" in (tmp_path / "cmp" / "comparison.md").read_text()
    assert json.loads((tmp_path / "cmp" / "comparison.json").read_text())["paired"][0]["only_a"] == 3
