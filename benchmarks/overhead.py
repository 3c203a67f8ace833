"""Cost of ARMT over the bare base model run segment by segment on the same tokens.

For the tiny GPT-2 and Llama configs of the official reference dumps (batch 4, segment 128,
16 memory tokens, d_mem 32), prints the time of a training step (forward + backward + AdamW)
and of no-grad inference, ARMT divided by the bare model, for 512, 1024 and 2048 tokens.
It also checks for denormal floats: the same run with flush-to-zero on, and the share of
subnormal values in the memory state and the gradients.

    python benchmarks/overhead.py [--threads 2] [--repeats 5] [--families gpt2 llama]

``--smollm2 bases/smollm2-135m`` adds the real model (30 layers, width 576; exported once with
``armt export-base --smollm2``): batch 1 x 1,024 tokens, segment 256, 16 memory tokens, d_mem 64,
a training step (forward + backward) and reading (``model.read`` against the bare backbone run
segment by segment), ARMT / bare. It is skipped, with that command, when the folder is missing.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import armt
from armt.segments import segment_bounds
from armt.tiny import tiny_base_model


def _time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _bare_step(base, opt, ids, segment):
    def step():
        opt.zero_grad(set_to_none=True)
        for a, b in segment_bounds(ids.shape[1], segment, "left"):
            base(ids[:, a:b], labels=ids[:, a:b]).loss.backward()
        opt.step()
    return step


def _armt_step(model, opt, ids):
    def step():
        opt.zero_grad(set_to_none=True)
        model(ids, labels=ids).loss.backward()
        opt.step()
    return step


def _bare_infer(base, ids, segment):
    def run():
        with torch.no_grad():
            for a, b in segment_bounds(ids.shape[1], segment, "left"):
                base(ids[:, a:b])
    return run


def _armt_infer(model, ids):
    def run():
        with torch.no_grad():
            model(ids)
    return run


def _subnormal_share(tensors) -> float:
    tiny = torch.finfo(torch.float32).tiny
    total = hits = 0
    for t in tensors:
        t = t.detach()
        hits += int(((t != 0) & (t.abs() < tiny)).sum())
        total += t.numel()
    return hits / max(total, 1)


def smollm2(path: str, repeats: int) -> None:
    """ARMT / bare on SmolLM2-135M at the width real users run (see the module docstring)."""
    import os

    if not os.path.isfile(os.path.join(path, "config.json")):
        print(f"SmolLM2: skipped, {path} not found; export it once with: armt export-base --smollm2 {path}")
        return
    from armt.bases import load_base_model

    segment, length = 256, 1024
    base = load_base_model(path).eval()
    model = armt.ARMTForCausalLM(load_base_model(path), armt.ARMTConfig(num_mem_tokens=16, d_mem=64,
                                                                          segment_size=segment)).eval()
    torch.manual_seed(1)
    for mem in model.cell.memory_layers:
        mem.W_mv.reset_parameters()
    ids = torch.randint(base.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0))

    def bare_train():
        for a, b in segment_bounds(length, segment, "left"):
            base(ids[:, a:b], labels=ids[:, a:b]).loss.backward()

    def armt_train():
        model(ids, labels=ids).loss.backward()

    def bare_read():
        with torch.no_grad():
            for a, b in segment_bounds(length, segment, "left"):
                base.model(ids[:, a:b])

    def armt_read():
        model.read([ids])

    tb, ta = _time(bare_train, repeats), _time(armt_train, repeats)
    rb, ra = _time(bare_read, repeats), _time(armt_read, repeats)
    print("| model | tokens | train bare (s) | train ARMT (s) | train ratio | read bare (s) | read ARMT (s) | read ratio |")
    print("|---|---|---|---|---|---|---|---|")
    print(f"| SmolLM2-135M | {length} | {tb:.3f} | {ta:.3f} | {ta / tb:.2f}x | {rb:.3f} | {ra:.3f} | {ra / rb:.2f}x |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats (median is printed)")
    parser.add_argument("--families", nargs="+", default=["gpt2", "llama"], help="base model families")
    parser.add_argument("--lengths", nargs="+", type=int, default=[512, 1024, 2048], help="tokens per sample")
    parser.add_argument("--batch", type=int, default=4, help="batch size")
    parser.add_argument("--smollm2", metavar="PATH", help="also time SmolLM2-135M exported to PATH")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    segment = 128
    cfg = armt.ARMTConfig(num_mem_tokens=16, d_mem=32, segment_size=segment)

    print(f"threads={args.threads} batch={args.batch} segment={segment} mem_tokens=16 d_mem=32 "
          f"torch={torch.__version__}")
    print("| model | tokens | train bare (s) | train ARMT (s) | train ratio | infer bare (s) | infer ARMT (s) | infer ratio |")
    print("|---|---|---|---|---|---|---|---|")
    for family in args.families:
        base = tiny_base_model(family).train()
        model = armt.ARMTForCausalLM(tiny_base_model(family), cfg).train()
        # W_mv = 0 at init would leave the memory path idle; make it live as after training
        torch.manual_seed(1)
        for mem in model.cell.memory_layers:
            mem.W_mv.reset_parameters()
        # dropout off so both sides do the same work
        base.eval()
        model.eval()
        opt_bare = torch.optim.AdamW(base.parameters(), lr=1e-4)
        opt_armt = torch.optim.AdamW(model.parameters(), lr=1e-4)
        for length in args.lengths:
            ids = torch.randint(base.config.vocab_size, (args.batch, length), generator=torch.Generator().manual_seed(0))
            tb = _time(_bare_step(base, opt_bare, ids, segment), args.repeats)
            ta = _time(_armt_step(model, opt_armt, ids), args.repeats)
            ib = _time(_bare_infer(base, ids, segment), args.repeats)
            ia = _time(_armt_infer(model, ids), args.repeats)
            print(f"| {family} | {length} | {tb:.3f} | {ta:.3f} | {ta / tb:.2f}x | {ib:.3f} | {ia:.3f} | {ia / ib:.2f}x |")

        # denormals: share of subnormal floats, and the time with flush-to-zero for comparison
        ids = torch.randint(base.config.vocab_size, (args.batch, args.lengths[-1]), generator=torch.Generator().manual_seed(0))
        opt_armt.zero_grad(set_to_none=True)
        out = model(ids, labels=ids)
        out.loss.backward()
        share_state = _subnormal_share(out.memory.tensors().values())
        share_grads = _subnormal_share(p.grad for p in model.parameters() if p.grad is not None)
        flushed = torch.set_flush_denormal(True)
        tf = _time(_armt_step(model, opt_armt, ids), args.repeats)
        torch.set_flush_denormal(False)
        tn = _time(_armt_step(model, opt_armt, ids), args.repeats)
        print(f"{family}: subnormal share in memory state {share_state:.2e}, in gradients {share_grads:.2e}; "
              f"train step {args.lengths[-1]} tokens: {tn:.3f}s as is, "
              + (f"{tf:.3f}s with flush-to-zero ({tn / tf:.2f}x)" if flushed else "flush-to-zero unsupported"))

    if args.smollm2:
        smollm2(args.smollm2, args.repeats)


if __name__ == "__main__":
    main()
