"""Where ARMT's extra time goes: a training step's forward and backward, operator by operator,
ARMT against the bare model on the same tokens, with the arithmetic floor of the config.

    python benchmarks/profile_step.py                       # tiny GPT-2 and Llama: batch 4 x 1,024, segment 128
    python benchmarks/profile_step.py --smollm2 bases/smollm2-135m --batch 1 --segment 256 --mem 16 --d-mem 64

Prints, per model: the floor (ARMT / bare matrix FLOPs of a training step, and of reading) and a
table of the operators with the most excess self time (ARMT minus bare), forward and backward
apart. Run it on an idle machine; the profiler itself costs some time, so the totals run above
``benchmarks/overhead.py``'s.
"""

from __future__ import annotations

import argparse
import json

import torch

import armt
from armt.evaluation.cost import count_flops, op_times, step_functions
from armt.segments import segment_bounds
from armt.tiny import tiny_base_model


def build(family: str | None, path: str | None, segment: int, mem: int, d_mem: int):
    if path:
        from armt.bases import load_base_model

        make = lambda: load_base_model(path)  # noqa: E731
    else:
        make = lambda: tiny_base_model(family)  # noqa: E731
    base = make().eval()
    model = armt.ARMTForCausalLM(make(), armt.ARMTConfig(num_mem_tokens=mem, d_mem=d_mem, segment_size=segment)).eval()
    torch.manual_seed(1)
    for m in model.cell.memory_layers:  # W_mv = 0 at init leaves the read idle; make it live
        m.W_mv.reset_parameters()
    return base, model


def floors(base, model, ids, segment) -> dict[str, float]:
    fns = step_functions(base, model, ids, segment)
    train = count_flops(fns["train ARMT"]) / count_flops(fns["train bare"])
    read = count_flops(fns["read ARMT"]) / count_flops(fns["read bare"])
    base.zero_grad(set_to_none=True)
    model.zero_grad(set_to_none=True)
    return {"train": train, "read": read}


def split_profile(base, model, ids, segment) -> dict[str, dict[str, float]]:
    """Self seconds per operator of the forward and of the backward, bare and ARMT."""
    bounds = segment_bounds(ids.shape[1], segment, "left")
    held = {}

    def bare_forward():
        held["bare"] = sum(base(ids[:, a:b], labels=ids[:, a:b]).loss for a, b in bounds)

    def armt_forward():
        held["armt"] = model(ids, labels=ids, output_only_last_segment=True).loss

    out = {}
    for name, forward in (("bare", bare_forward), ("armt", armt_forward)):
        forward()
        held[name].backward()  # warm-up
        out[f"{name} forward"] = op_times(forward)
        out[f"{name} backward"] = op_times(lambda: held[name].backward())
    return out


def table(prof: dict[str, dict[str, float]], top: int) -> str:
    ops = set().union(*prof.values())
    excess = {op: sum(prof[f"armt {p}"].get(op, 0) - prof[f"bare {p}"].get(op, 0) for p in ("forward", "backward"))
              for op in ops}
    lines = ["| operator | bare fwd (s) | ARMT fwd (s) | bare bwd (s) | ARMT bwd (s) | excess (s) |",
             "|---|---|---|---|---|---|"]
    for op in sorted(ops, key=lambda o: -excess[o])[:top]:
        cells = [prof[k].get(op, 0.0) for k in ("bare forward", "armt forward", "bare backward", "armt backward")]
        lines.append(f"| {op} | " + " | ".join(f"{c:.3f}" for c in cells) + f" | {excess[op]:+.3f} |")
    totals = [sum(prof[k].values()) for k in ("bare forward", "armt forward", "bare backward", "armt backward")]
    lines.append("| **total** | " + " | ".join(f"{c:.3f}" for c in totals)
                 + f" | {totals[1] + totals[3] - totals[0] - totals[2]:+.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=["gpt2", "llama"], help="tiny configs to profile")
    p.add_argument("--smollm2", metavar="PATH", help="profile this exported SmolLM2 instead of the tiny configs")
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--segment", type=int, default=128)
    p.add_argument("--mem", type=int, default=16, help="memory tokens")
    p.add_argument("--d-mem", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=15, help="operators shown")
    p.add_argument("--json", help="also write the profiles here")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    targets = [("SmolLM2-135M", None, args.smollm2)] if args.smollm2 else [(f, f, None) for f in args.families]
    report = {}
    for name, family, path in targets:
        base, model = build(family, path, args.segment, args.mem, args.d_mem)
        vocab = base.config.vocab_size
        ids = torch.randint(vocab, (args.batch, args.tokens), generator=torch.Generator().manual_seed(0))
        floor = floors(base, model, ids, args.segment)
        prof = split_profile(base, model, ids, args.segment)
        print(f"\n{name}: batch {args.batch} x {args.tokens} tokens, segment {args.segment}, {args.mem} memory tokens, "
              f"d_mem {args.d_mem}, {args.threads} threads")
        print(f"arithmetic floor (matrix FLOPs, ARMT / bare): training {floor['train']:.3f}x, reading "
              f"{floor['read']:.3f}x")
        print(table(prof, args.top))
        report[name] = {"floor": floor, "profile": prof}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
