"""Which shortcut a model's wrong qa1 answers took, from the predictions `armt babilong eval` wrote.

For each folder and length: how many answers were right, the place of the story's last sentence,
an earlier place of the person asked about, another person's place, a place not in the story, or
no place (see armt.evaluation.qa1_errors). The facts of each question are drawn again from bAbI
with the evaluation's seed and split (results.json), and checked against the recorded question and
answer. docs/results/babilong-smollm2.md quotes it for runs 7-9 at 0k (the folders that
benchmarks/smollm2_babilong_alone.sh writes under results/):

    python benchmarks/qa1_errors.py results/babilong_smollm2_alone7/armt_0k_shared \
        results/babilong_smollm2_alone8/armt_0k_shared --babi ../shared/data/babi
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from transformers import AutoTokenizer

from armt.data.babilong import iter_babilong
from armt.evaluation.paired import prediction_records
from armt.evaluation.qa1_errors import KINDS, count_qa1_errors


def folder_counts(folder: str, babi: str, tokenizer=None) -> dict[str, dict[str, int]]:
    """``{length: counts}`` for the qa1 predictions in ``folder``."""
    meta = json.loads((Path(folder) / "results.json").read_text())["metadata"]
    settings = meta["settings"]
    tok = tokenizer or AutoTokenizer.from_pretrained(meta["model"]["name"])
    out = {}
    for length, records in prediction_records([folder], "qa1").items():
        samples = list(iter_babilong("qa1", 0, max(r["index"] for r in records) + 1, tok, None,
                                     settings["seed"], babi, split=settings["split"]))
        cases = []
        for r in records:
            sample = samples[r["index"]]
            if (sample.question, sample.target) != (r["question"], r["target"]):
                raise ValueError(f"{folder}: question {r['index']} is {r['question']!r} -> {r['target']!r} in the "
                                 f"predictions but {sample.question!r} -> {sample.target!r} in {babi}; pass the "
                                 "bAbI folder the evaluation used.")
            cases.append((sample.facts, r["question"], r["target"], r["answer"]))
        out[length] = count_qa1_errors(cases)
    return out


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="output folders of armt babilong eval (qa1)")
    parser.add_argument("--babi", default="builtin", help="the bAbI folder the evaluation used, or 'builtin'")
    parser.add_argument("--tokenizer", help="tokenizer to count the facts with (default: the evaluated model's)")
    args = parser.parse_args(argv)
    tok = AutoTokenizer.from_pretrained(args.tokenizer) if args.tokenizer else None
    print("| folder | length | " + " | ".join(KINDS) + " |")
    print("|---|---|" + "---|" * len(KINDS))
    for folder in args.folders:
        for length, counts in folder_counts(folder, args.babi, tok).items():
            print(f"| {folder} | {length} | " + " | ".join(str(counts[k]) for k in KINDS) + " |")


if __name__ == "__main__":
    main()
