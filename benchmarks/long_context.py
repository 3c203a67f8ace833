"""Reading inputs of 16k to 1M tokens (and optionally 10M) at constant memory.

For the tiny GPT-2 and Llama configs of the official reference dumps (batch 1, segment 128,
16 memory tokens, d_mem 32), every (model, length) runs in a fresh process so that its peak
RSS is its own. The ARMT model reads random tokens with ``model.read`` (no gradients, no
logits); the bare base model runs the same tokens segment by segment without its head. The
script prints time, tokens/s, peak RSS, ARMT/bare ratios and the log-log slopes of time and
peak RSS against length, and checks the targets (RSS at the longest length within 10% of 64k,
time exponent <= 1.05, ARMT tokens/s >= 0.75x the bare model's). ``--wavefront`` adds a column
for ``model.read(..., wavefront=True)`` (all layers at once along the diagonals, see
:mod:`armt.wavefront`), with its speed against the sequential reading and the bare model, and
checks that both readings end in the same memory (max relative difference of ``A``).

    python benchmarks/long_context.py [--lengths 16k 64k 256k 1M] [--families gpt2 llama] [--wavefront]
    python benchmarks/long_context.py --lengths 10M --families gpt2 --armt-only
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time

import torch

CHUNK = 1 << 16  # tokens generated and fed at a time


def parse_length(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1], 1)
    return int(float(text.rstrip("KM")) * scale)


def random_chunks(n_tokens: int, vocab: int, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, n_tokens, CHUNK):
        yield torch.randint(vocab, (1, min(CHUNK, n_tokens - start)), generator=gen)


def worker(family: str, tokens: int, mode: str, threads: int, segment: int) -> dict:
    import armt
    from armt.tiny import tiny_base_model

    torch.set_num_threads(threads)
    base = tiny_base_model(family)
    vocab = base.config.vocab_size
    with torch.no_grad():
        if mode in ("armt", "wavefront"):
            model = armt.ARMTForCausalLM(base, armt.ARMTConfig(num_mem_tokens=16, d_mem=32, segment_size=segment))
            model.eval()
            torch.manual_seed(1)  # a live memory path, as after training (W_mv starts at zero); small,
            for mem in model.cell.memory_layers:  # so that a random memory stays stable over 8,192 segments
                torch.nn.init.normal_(mem.W_mv.weight, std=0.02)
            wave = mode == "wavefront"
            model.read(random_chunks(4 * segment, vocab, seed=1), wavefront=wave)  # warm-up
            start = time.perf_counter()
            result = model.read(random_chunks(tokens, vocab), wavefront=wave)
            took = time.perf_counter() - start
            assert result.tokens == tokens
            A = torch.stack([m.A for m in result.memory.layers])
            return {"family": family, "tokens": tokens, "mode": mode, "seconds": took,
                    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "A": A.flatten()[:: max(1, A.numel() // 4096)].tolist(), "A_max": A.abs().max().item()}
        else:
            backbone = base.base_model
            backbone(torch.randint(vocab, (1, segment)))  # warm-up
            start = time.perf_counter()
            for chunk in random_chunks(tokens, vocab):
                for piece in chunk.split(segment, dim=1):
                    backbone(piece)
            took = time.perf_counter() - start
    return {"family": family, "tokens": tokens, "mode": mode, "seconds": took,
            "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def run_one(family: str, tokens: int, mode: str, args) -> dict:
    cmd = [sys.executable, __file__, "--worker", family, str(tokens), mode,
           "--threads", str(args.threads), "--segment", str(args.segment)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def slope(xs, ys) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = sum(lx) / len(lx), sum(ly) / len(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly)) / sum((a - mx) ** 2 for a in lx)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", nargs="+", default=["16k", "64k", "256k", "1M"], help="input lengths")
    parser.add_argument("--families", nargs="+", default=["gpt2", "llama"], help="tiny base families")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--segment", type=int, default=128, help="segment size")
    parser.add_argument("--armt-only", action="store_true", help="skip the bare model (e.g. for 10M)")
    parser.add_argument("--wavefront", action="store_true", help="also read with wavefront=True")
    parser.add_argument("--worker", nargs=3, metavar=("FAMILY", "TOKENS", "MODE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        family, tokens, mode = args.worker
        print(json.dumps(worker(family, int(tokens), mode, args.threads, args.segment)))
        return

    lengths = [parse_length(x) for x in args.lengths]
    print(f"batch 1, segment {args.segment}, 16 memory tokens, d_mem 32, {args.threads} threads; "
          "each row a fresh process")
    wave_head = (" wavefront s | wavefront tok/s | wavefront / sequential | wavefront / bare | max rel. diff of A |"
                 if args.wavefront else "")
    print("| model | tokens | ARMT s | ARMT tok/s | ARMT peak RSS MiB | bare s | bare tok/s | bare peak RSS MiB "
          "| ARMT speed / bare |" + wave_head)
    print("|---|---|---|---|---|---|---|---|---|" + ("---|" * 5 if args.wavefront else ""))
    for family in args.families:
        rows = []
        for n in lengths:
            a = run_one(family, n, "armt", args)
            b = None if args.armt_only else run_one(family, n, "bare", args)
            rows.append((n, a, b))
            bare = ("| - | - | - | - |" if b is None else
                    f"| {b['seconds']:.1f} | {n / b['seconds']:,.0f} | {b['peak_rss_mib']:,.0f} "
                    f"| {b['seconds'] / a['seconds']:.2f}x |")
            wave = ""
            if args.wavefront:
                w = run_one(family, n, "wavefront", args)
                diff = max(abs(x - y) for x, y in zip(a["A"], w["A"])) / max(a["A_max"], 1e-30)
                vs_bare = "-" if b is None else f"{b['seconds'] / w['seconds']:.2f}x"
                wave = (f" {w['seconds']:.1f} | {n / w['seconds']:,.0f} | {a['seconds'] / w['seconds']:.2f}x | "
                        f"{vs_bare} | {diff:.1e} |")
            print(f"| {family} | {n:,} | {a['seconds']:.1f} | {n / a['seconds']:,.0f} | {a['peak_rss_mib']:,.0f} "
                  + bare + wave, flush=True)
        if len(rows) >= 2:
            ns = [r[0] for r in rows]
            t_exp = slope(ns, [r[1]["seconds"] for r in rows])
            m_exp = slope(ns, [r[1]["peak_rss_mib"] for r in rows])
            line = f"{family}: ARMT time ~ length^{t_exp:.3f}, peak RSS ~ length^{m_exp:.3f}"
            by_len = {r[0]: r[1]["peak_rss_mib"] for r in rows}
            if 1 << 16 in by_len:
                longest = max(by_len)
                growth = by_len[longest] / by_len[1 << 16] - 1
                line += f"; peak RSS at {longest:,} vs 65,536 tokens: {growth:+.1%}"
            if not args.armt_only:
                worst = min(r[2]["seconds"] / r[1]["seconds"] for r in rows)
                line += f"; slowest ARMT speed / bare: {worst:.2f}x"
            print(line)


if __name__ == "__main__":
    main()
