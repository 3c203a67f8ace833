"""Cost of ARMT over the bare base model run segment by segment on the same tokens.

For the tiny GPT-2 and Llama configs of the official reference dumps (batch 4, segment 128,
16 memory tokens, d_mem 32), prints the time of a training step (forward + backward, only the last
segment's logits kept, as ``armt train`` runs it) and of reading (no grad, no language-model head:
``model.read`` against the bare backbone), ARMT divided by the bare model, for 512, 1024 and 2048
tokens; both also with ``wavefront=True`` (all layers at once along the diagonals,
:mod:`armt.wavefront`); and the arithmetic floor of each (ARMT / bare matrix FLOPs, what the ratio
would be with no overhead). The passes are timed in turns (bare, ARMT, wavefront, bare, ...), so a
change of load falls on all alike; every row runs in a fresh process.
It also checks for denormal floats: the same run with flush-to-zero on, and the share of
subnormal values in the memory state and the gradients.

    python benchmarks/overhead.py [--threads 2] [--repeats 5] [--families gpt2 llama]

``--smollm2 bases/smollm2-135m`` adds the real model (30 layers, width 576; exported once with
``armt export-base --smollm2``): batch 1 x 1,024 tokens, segment 256, 16 memory tokens, d_mem 64.
It is skipped, with that command, when the folder is missing.
"""

from __future__ import annotations

import argparse

import torch

import armt
from armt.evaluation.cost import count_flops, interleaved_times, step_functions
from armt.tiny import tiny_base_model


def _time(fn, repeats: int) -> float:
    return interleaved_times({"fn": fn}, repeats)["fn"]


def _armt_step(model, opt, ids, wavefront=False):
    def step():
        opt.zero_grad(set_to_none=True)
        model(ids, labels=ids, wavefront=wavefront, output_only_last_segment=True).loss.backward()
        opt.step()
    return step


def _subnormal_share(tensors) -> float:
    tiny = torch.finfo(torch.float32).tiny
    total = hits = 0
    for t in tensors:
        t = t.detach()
        hits += int(((t != 0) & (t.abs() < tiny)).sum())
        total += t.numel()
    return hits / max(total, 1)


def measure(base, model, ids, segment: int, repeats: int) -> dict:
    """Interleaved medians of the six passes and the two floors."""
    fns = step_functions(base, model, ids, segment)
    fns["train wavefront"] = lambda: model(ids, labels=ids, wavefront=True,
                                           output_only_last_segment=True).loss.backward()
    fns["read wavefront"] = lambda: model.read([ids], wavefront=True)
    floor_train = count_flops(fns["train ARMT"]) / count_flops(fns["train bare"])
    floor_read = count_flops(fns["read ARMT"]) / count_flops(fns["read bare"])
    train = interleaved_times({k: fns[k] for k in ("train bare", "train ARMT", "train wavefront")}, repeats)
    read = interleaved_times({k: fns[k] for k in ("read bare", "read ARMT", "read wavefront")}, repeats)
    return {"tb": train["train bare"], "ta": train["train ARMT"], "tw": train["train wavefront"],
            "ft": floor_train, "rb": read["read bare"], "ra": read["read ARMT"], "rw": read["read wavefront"],
            "fr": floor_read}


def smollm2(path: str, repeats: int) -> dict | None:
    """ARMT / bare on SmolLM2-135M at the width real users run (see the module docstring)."""
    import os

    if not os.path.isfile(os.path.join(path, "config.json")):
        return None
    from armt.bases import load_base_model

    segment, length = 256, 1024
    base = load_base_model(path).eval()
    model = armt.ARMTForCausalLM(load_base_model(path), armt.ARMTConfig(num_mem_tokens=16, d_mem=64,
                                                                          segment_size=segment)).eval()
    torch.manual_seed(1)
    for mem in model.cell.memory_layers:
        mem.W_mv.reset_parameters()
    ids = torch.randint(base.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))
    return measure(base, model, ids, segment, repeats)


def _tiny_model(family: str, segment: int):
    base = tiny_base_model(family)
    model = armt.ARMTForCausalLM(tiny_base_model(family), armt.ARMTConfig(num_mem_tokens=16, d_mem=32,
                                                                            segment_size=segment))
    # W_mv = 0 at init would leave the memory path idle; make it live as after training
    torch.manual_seed(1)
    for mem in model.cell.memory_layers:
        mem.W_mv.reset_parameters()
    return base.eval(), model.eval()  # dropout off so both sides do the same work


def tiny_row(family: str, length: int, batch: int, repeats: int, segment: int = 128) -> dict:
    base, model = _tiny_model(family, segment)
    ids = torch.randint(base.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))
    return measure(base, model, ids, segment, repeats)


def denormals(family: str, length: int, batch: int, repeats: int, segment: int = 128) -> str:
    """Share of subnormal floats in the state and gradients, and the step time with flush-to-zero."""
    _, model = _tiny_model(family, segment)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    ids = torch.randint(model.cell.runner.config.vocab_size, (batch, length), generator=torch.Generator().manual_seed(0))
    out = model(ids, labels=ids)
    out.loss.backward()
    share_state = _subnormal_share(out.memory.tensors().values())
    share_grads = _subnormal_share(p.grad for p in model.parameters() if p.grad is not None)
    flushed = torch.set_flush_denormal(True)
    tf = _time(_armt_step(model, opt, ids), repeats)
    torch.set_flush_denormal(False)
    tn = _time(_armt_step(model, opt, ids), repeats)
    return (f"{family}: subnormal share in memory state {share_state:.2e}, in gradients {share_grads:.2e}; "
            f"train step {length} tokens: {tn:.3f}s as is, "
            + (f"{tf:.3f}s with flush-to-zero ({tn / tf:.2f}x)" if flushed else "flush-to-zero unsupported"))


def _in_fresh_process(args, *worker: str):
    import json
    import subprocess
    import sys

    cmd = [sys.executable, __file__, "--threads", str(args.threads), "--repeats", str(args.repeats),
           "--batch", str(args.batch), "--worker", *worker]
    return json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1])


def main() -> None:
    import json

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median is printed)")
    parser.add_argument("--families", nargs="+", default=["gpt2", "llama"], help="base model families")
    parser.add_argument("--lengths", nargs="+", type=int, default=[512, 1024, 2048], help="tokens per sample")
    parser.add_argument("--batch", type=int, default=4, help="batch size")
    parser.add_argument("--smollm2", metavar="PATH", help="also time SmolLM2-135M exported to PATH")
    parser.add_argument("--worker", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if args.worker:  # one figure, in its own process
        kind, *rest = args.worker
        if kind == "tiny":
            result = tiny_row(rest[0], int(rest[1]), args.batch, args.repeats)
        elif kind == "denormals":
            result = denormals(rest[0], int(rest[1]), args.batch, args.repeats)
        else:
            result = smollm2(rest[0], args.repeats)
        print(json.dumps(result))
        return

    header = ("| model | tokens | train bare (s) | train ARMT (s) | ratio | train wavefront (s) | ratio | floor "
              "| read bare (s) | read ARMT (s) | ratio | read wavefront (s) | ratio | floor |")
    rule = "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"

    def row(name, length, r):
        return (f"| {name} | {length} | {r['tb']:.3f} | {r['ta']:.3f} | {r['ta'] / r['tb']:.2f}x | {r['tw']:.3f} "
                f"| {r['tw'] / r['tb']:.2f}x | {r['ft']:.2f}x | {r['rb']:.3f} | {r['ra']:.3f} | {r['ra'] / r['rb']:.2f}x "
                f"| {r['rw']:.3f} | {r['rw'] / r['rb']:.2f}x | {r['fr']:.2f}x |")

    print(f"threads={args.threads} batch={args.batch} segment=128 mem_tokens=16 d_mem=32 torch={torch.__version__}; "
          f"median of {args.repeats}, interleaved; each row a fresh process; train = forward + backward")
    print(header)
    print(rule)
    for family in args.families:
        for length in args.lengths:
            print(row(family, length, _in_fresh_process(args, "tiny", family, str(length))), flush=True)
    for family in args.families:
        print(_in_fresh_process(args, "denormals", family, str(args.lengths[-1])), flush=True)

    if args.smollm2:
        r = _in_fresh_process(args, "smollm2", args.smollm2)
        if r is None:
            print(f"SmolLM2: skipped, {args.smollm2} not found; export it once with: "
                  f"armt export-base --smollm2 {args.smollm2}")
            return
        print("\nSmolLM2-135M, batch 1, segment 256, 16 memory tokens, d_mem 64")
        print(header)
        print(rule)
        print(row("SmolLM2-135M", 1024, r))


if __name__ == "__main__":
    main()
