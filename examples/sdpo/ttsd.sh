#!/usr/bin/env bash
# SDPO paper (arXiv 2601.20802) section 5, test-time self-distillation: hard LiveCodeBench v6 questions, one at a
# time; discovery probability vs attempts of test-time SDPO next to best-of-k and multi-turn (scgrpo-verl ttsd).
# QUESTIONS: comma-separated row indices of $DATA/livecodebench/train.parquet (the reference runs its multi-turn
# baseline on the "train" split, i.e. half of each problem's tests, for 19 hard questions picked by their own
# ordering of LCB v6: experiments/ttt/run_multiturn_all.sh; pick yours with low base-model pass@k).
# Usage: QUESTIONS=3,17 examples/sdpo/ttsd.sh [extra scgrpo-verl ttsd options]
source "$(dirname "$0")/../common.sh"
QUESTIONS=${QUESTIONS:?set QUESTIONS=<row indices of the hard questions>}
if stage data; then
  prep livecodebench "$DATA/livecodebench"
fi
if stage train; then
  run scgrpo-verl ttsd --model-path "${MODEL:-Qwen/Qwen3-8B}" --data "$DATA/livecodebench/train.parquet" \
    --questions "$QUESTIONS" --out "$RUNS/sdpo_ttsd" --enable-thinking false "${EXTRA_OVERRIDES[@]}"
fi
