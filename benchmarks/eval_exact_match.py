"""Validation exact match two ways: read from the loss pass (the Trainer's default with an eval
batch size of 1) and by generating every answer after reading its context again. Prints both
times, their ratio and whether every item's verdict agrees, for a run config's data and model:

    python benchmarks/eval_exact_match.py runs/babilong_smollm2_alone10/run_config.yaml \
        --segments 9 --n 6 --set model.init_from=runs/babilong_smollm2_alone10/best

``--set`` takes the same ``key=value`` overrides as ``armt train``.
"""
from __future__ import annotations

import argparse
import tempfile
import time

import torch
from transformers import TrainingArguments

from armt.generation import generation_defaults
from armt.training.config import load_run_config
from armt.training.run import build_model, dataset_factory, init_from_config, resolve_tokenizer
from armt.training.trainer import ARMTTrainer, SegmentCollator


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="a run config (e.g. a run's run_config.yaml)")
    parser.add_argument("--segments", type=int, default=2, help="segments per evaluation item")
    parser.add_argument("--n", type=int, default=8, help="evaluation items")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="config override, as on the armt train command line")
    args = parser.parse_args()
    overrides = [f"--{s}" if not s.startswith("--") else s for s in args.set] + [f"--data.num_eval={args.n}"]
    cfg = load_run_config(args.config, overrides)
    if cfg.model.init_from is not None:
        cfg.armt = init_from_config(cfg)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer, described = resolve_tokenizer(cfg, None)
        model = build_model(cfg).eval()
        data = dataset_factory(cfg, model, tokenizer)(args.segments, "eval")
        pad = getattr(tokenizer, "pad_token_id", None) or 0
        trainer = ARMTTrainer(
            model=model, args=TrainingArguments(output_dir=tmp, report_to=[], use_cpu=True, per_device_eval_batch_size=1),
            data_collator=SegmentCollator(pad_token_id=pad), metrics=["exact_match"],
            generation_kwargs=generation_defaults(tokenizer),
        )
        print(f"tokenizer: {described}; {len(data)} items of {args.segments} segments")
        verdicts, seconds = {}, {}
        for name, forced in (("from the loss pass", True), ("generate", False)):
            trainer.answers_from_loss = forced
            start = time.perf_counter()
            records = trainer.evaluation_records(data)
            seconds[name] = time.perf_counter() - start
            verdicts[name] = [p == t for p, t in zip(records.predictions, records.targets)]
            print(f"{name}: {seconds[name]:.1f} s, exact match {sum(verdicts[name])}/{len(data)}")
    a, b = verdicts.values()
    print(f"generate / loss pass: {seconds['generate'] / seconds['from the loss pass']:.2f}x; "
          f"verdicts agree on {sum(x == y for x, y in zip(a, b))}/{len(a)} items")


if __name__ == "__main__":
    main()
