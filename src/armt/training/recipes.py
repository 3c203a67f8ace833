"""Built-in run configurations (the same settings as the files in ``configs/``, so that the
commands work from an installed package too)."""

from __future__ import annotations

from .. import families

# the official ARMT BABILong curriculum: each stage starts from the best model of the last
OFFICIAL_BABILONG_CURRICULUM = (2, 3, 5, 8, 16, 32)


def babilong_tiny() -> dict:
    """BABILong on a tiny random GPT-2 that trains on a CPU in minutes: qa1 with the built-in
    bAbI generator and generated background text (no files), segments of 64 tokens, curriculum
    1 -> 2 -> 4 segments, a byte-level BPE tokenizer trained on the background text. Point
    ``data.options.babi``/``background`` at the bAbI folder and a folder of books for the
    real data."""
    return {
        "model": {"tiny": {"family": families.DEFAULT_TINY, "layers": 2, "hidden": 64}},
        "armt": {"num_mem_tokens": 4, "d_mem": 16, "segment_size": 64},
        "data": {"kind": "babilong", "num_train": 2000, "num_eval": 32,
                 "options": {"tasks": ["qa1"], "babi": "builtin", "background": "builtin",
                             "tokenizer_vocab": 512}},
        "curriculum": [
            {"num_segments": 1, "max_steps": 400},
            {"num_segments": 2, "max_steps": 300},
            {"num_segments": 4, "max_steps": 300},
        ],
        "training": {"output_dir": "runs/babilong_tiny", "learning_rate": 1e-3, "per_device_train_batch_size": 16,
                     "eval_strategy": "steps", "eval_steps": 100, "save_steps": 100, "logging_steps": 20,
                     "warmup_steps": 0.05, "lr_scheduler_type": "linear", "weight_decay": 0.01,
                     "max_grad_norm": 1.0, "metric_for_best_model": "eval_exact_match", "greater_is_better": True,
                     "save_total_limit": 2, "report_to": ["tensorboard"], "seed": 0},
        "metrics": ["exact_match"],
        "early_stopping_patience": 5,
    }


def babilong_gpt2() -> dict:
    """The official ARMT BABILong recipe: GPT-2 (137M), segments of 512 tokens, 16 memory
    tokens, curriculum 2 -> 3 -> 5 -> 8 -> 16 -> 32 segments on qa1-qa5, loss on the answer
    and EOS only, exact-match validation with generation, early stopping. Needs a GPU."""
    return {
        "model": {"name_or_path": "openai-community/gpt2"},
        "armt": {"num_mem_tokens": 16, "d_mem": 64, "segment_size": 512},
        "data": {"kind": "babilong", "num_train": 10000, "num_eval": 500,
                 "options": {"tasks": ["qa1", "qa2", "qa3", "qa4", "qa5"], "babi": "data/babi",
                             "background": "deepmind/pg19"}},
        "curriculum": [{"num_segments": n, "max_steps": 10000, "eval_segments": n}
                       for n in OFFICIAL_BABILONG_CURRICULUM],
        "training": {"output_dir": "runs/babilong_gpt2", "learning_rate": 3e-5, "per_device_train_batch_size": 4,
                     "gradient_accumulation_steps": 8, "eval_strategy": "steps", "eval_steps": 500,
                     "save_steps": 500, "logging_steps": 50, "warmup_steps": 1000, "lr_scheduler_type": "linear",
                     "weight_decay": 0.01, "max_grad_norm": 1.0, "bf16": True,
                     "metric_for_best_model": "eval_exact_match", "greater_is_better": True, "save_total_limit": 3,
                     "report_to": ["tensorboard"], "seed": 0},
        "metrics": ["exact_match"],
        "early_stopping_patience": 10,
    }


RECIPES = {"babilong_tiny": babilong_tiny, "babilong_gpt2": babilong_gpt2}
