"""Put several length benchmark results (benchmarks/length.py's JSON files) in one table and plot.

    python benchmarks/length_compare.py docs/length/length.json="official maths" \\
        docs/length/length_w2.json="hard gate + penalty 2, margin 0.25" --out docs/length --prefix length_compare

Each argument is PATH or PATH=LABEL (the label renames that run's ARMT model).
"""

from __future__ import annotations

import argparse
import json
import sys

from armt.evaluation.capacity import capacity_outputs
from armt.evaluation.length import combine_lengths, length_table, write_length


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="PATH or PATH=LABEL of a length benchmark JSON file")
    p.add_argument("--models", default=None, help="comma-separated model kinds to keep (default: all)")
    p.add_argument("--out", default="docs/length")
    p.add_argument("--prefix", default="length_compare")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    try:
        capacity_outputs(args.out, args.prefix, overwrite=args.overwrite)
        runs = []
        for spec in args.runs:
            path, _, label = spec.partition("=")
            with open(path) as f:
                runs.append((json.load(f), label or None))
        kinds = args.models.split(",") if args.models else None
        merged = combine_lengths(runs, kinds)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    paths = write_length(merged, args.out, args.prefix, overwrite=args.overwrite)
    print(length_table(merged))
    print(f"wrote {', '.join(str(x) for x in paths)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
