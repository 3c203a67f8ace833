"""How a trained model's memory grows over a long BABILong sample, and what it answers from it.

Reads one sample segment by segment and, after 1, 2, 4, ... segments, prints the norms of A and z
(mean over layers, and the largest layer) and the answer generated from the question alone with
that memory. docs/results/babilong-smollm2.md quotes it for run 5 at 16k:

    python benchmarks/memory_growth.py --model runs/babilong_smollm2_alone5/best --length 16k \
        --babi ../shared/data/babi --background ../shared/data/gutenberg
"""
from __future__ import annotations

import argparse

import torch
from transformers import AutoTokenizer

from armt import ARMTForCausalLM
from armt.data.babilong import BabilongPrompt, iter_babilong, parse_length
from armt.data.books import load_books
from armt.streaming import MemoryReader


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a saved ARMT model folder")
    parser.add_argument("--task", default="qa1")
    parser.add_argument("--length", default="16k", help="context length of the sample, e.g. 4k")
    parser.add_argument("--index", type=int, default=0, help="which sample of that length")
    parser.add_argument("--babi", default="builtin", help="bAbI folder, or 'builtin'")
    parser.add_argument("--background", default="builtin", help="folder of .txt books, or 'builtin'")
    args = parser.parse_args()

    torch.set_grad_enabled(False)
    model = ARMTForCausalLM.from_pretrained(args.model).eval()
    tok = AutoTokenizer.from_pretrained(args.model)
    samples = iter_babilong(args.task, args.length, args.index + 1, tok, load_books(args.background), 0, args.babi)
    sample = list(samples)[args.index]
    prompt = BabilongPrompt()
    ids = torch.tensor([prompt.prefix_ids(tok) + sample.input_ids()])
    query = torch.tensor([prompt.query_ids(tok, sample.question)])
    S = model.config.segment_size
    n_segments = -(-ids.shape[1] // S)
    marks = {n for n in (1, 2, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128) if n <= n_segments} | {n_segments}
    print(f"{args.task} {parse_length(args.length)} tokens, {n_segments} segments: {sample.question} "
          f"(target {sample.target})")
    print("segments | A, mean | A, largest (layer) | z, mean | answer from the question alone")
    reader = MemoryReader(model)
    for i in range(n_segments):
        reader.feed(ids[:, i * S:(i + 1) * S])
        if i + 1 in marks:
            if i + 1 == n_segments:
                reader.finish(flush=True)
            layers = reader.memory.layers
            a = [layer.A.norm().item() for layer in layers]
            z = [layer.z.norm().item() for layer in layers]
            out = model.generate(query, memory=reader.memory, max_new_tokens=4, do_sample=False)
            answer = tok.decode(out[0, query.shape[1]:])
            top = max(range(len(a)), key=a.__getitem__)
            print(f"{i + 1} | {sum(a) / len(a):.1f} | {a[top]:.1f} ({top}) | {sum(z) / len(z):.1f} | {answer!r}")


if __name__ == "__main__":
    main()
