"""How fast BABILong samples are built: a 256k-token qa2 sample, streamed in chunks of 4,096
tokens, with the byte-level tokenizer of the tests (the wall-clock check that used to live in
tests/data/test_babilong.py). Prints seconds and tokens/s; target: under 20 s here.

    python benchmarks/babilong_samples.py [--length 256k] [--books ../shared/data/gutenberg]
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

from armt.data.babi import load_babi_task
from armt.data.babilong import Sentences, build_sample, parse_length
from armt.data.tokenizer import train_bpe_tokenizer

HERE = Path(__file__).resolve().parent
FIXTURES = HERE.parent / "tests" / "fixtures" / "data"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--length", default="256k")
    parser.add_argument("--book", default=str(FIXTURES / "gutenberg" / "austen-emma.txt"))
    parser.add_argument("--babi", default=str(FIXTURES / "babi"))
    args = parser.parse_args()
    text = Path(args.book).read_text(encoding="utf-8", errors="replace")[20_000:420_000]
    sentences = Sentences([s for s in (" ".join(p.split()) for p in re.split(r"(?<=[.!?])\s+", text)) if s])
    tok = train_bpe_tokenizer([text], vocab_size=512)
    question = load_babi_task("qa2", "test", root=args.babi)[0]
    start = time.perf_counter()
    sample = build_sample(question, sentences, tok, args.length, seed=0)
    tokens = sum(len(chunk) for chunk in sample.iter_token_chunks(4096))
    seconds = time.perf_counter() - start
    target = parse_length(args.length)
    print(f"{args.length} sample ({tokens:,} of {target:,} tokens) built and streamed in {seconds:.1f}s "
          f"({tokens / seconds:,.0f} tokens/s); target < 20 s: {'met' if seconds < 20 else 'MISSED'}")


if __name__ == "__main__":
    main()
