"""qa1 error kinds, and the script that counts them from `armt babilong eval` predictions."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import torch

import armt
from armt.data.tokenizer import train_bpe_tokenizer
from armt.evaluation.babilong_eval import evaluate_babilong
from armt.evaluation.qa1_errors import KINDS, count_qa1_errors, qa1_error_kind

ROOT = Path(__file__).resolve().parents[2]
FACTS = ["Mary went to the kitchen.", "John went to the garden.", "Mary moved to the office.", "John went to the hallway."]


def test_the_first_shortcut_that_fits_names_the_error():
    # the last sentence's place is also John's earlier place: recency comes first
    assert qa1_error_kind(FACTS, "Where is Mary?", "office", " Hallway.") == "last sentence"
    assert qa1_error_kind(FACTS, "Where is John?", "hallway", "garden") == "earlier place of the person"
    assert qa1_error_kind(FACTS, "Where is John?", "hallway", "kitchen") == "another person's place"
    assert qa1_error_kind(FACTS, "Where is John?", "hallway", "hallway") == "correct"
    counts = count_qa1_errors([(FACTS, "Where is John?", "hallway", a) for a in ("hallway", "garden", "garden", "")])
    assert list(counts) == list(KINDS) and sum(counts.values()) == 4
    assert (counts["correct"], counts["earlier place of the person"], counts["no place"]) == (1, 2, 1)


def _script():
    spec = importlib.util.spec_from_file_location("qa1_errors_script", ROOT / "benchmarks" / "qa1_errors.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_script_counts_every_recorded_answer_and_checks_the_questions(tiny_base, tmp_path):
    tok = train_bpe_tokenizer(FACTS * 20 + ["Where is Mary?\nAnswer: kitchen bathroom bedroom"], vocab_size=300)
    model = armt.ARMTForCausalLM(tiny_base("llama", vocab=len(tok)),
                                 armt.ARMTConfig(num_mem_tokens=2, d_mem=8, segment_size=64)).eval()
    torch.manual_seed(0)
    evaluate_babilong(model, tok, tasks="qa1", lengths="0k,0.25k", n_samples=6, babi_source="builtin",
                      background="builtin", max_new_tokens=2, progress=False, log=None, out_dir=tmp_path)
    counts = _script().folder_counts(str(tmp_path), "builtin", tok)
    assert set(counts) == {"0k", "0.25k"}
    for length, row in counts.items():
        records = [json.loads(line) for line in (tmp_path / "predictions" / f"qa1_{length}.jsonl").read_text().splitlines()]
        assert sum(row.values()) == len(records) == 6
        assert row["correct"] == sum(r["correct"] for r in records)
    # predictions of other questions (another seed or bAbI folder) are refused, not miscounted
    path = tmp_path / "predictions" / "qa1_0k.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    records[0]["question"] = "Where is Nobody?"
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(ValueError, match="pass the bAbI folder the evaluation used"):
        _script().folder_counts(str(tmp_path), "builtin", tok)
