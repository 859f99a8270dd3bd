#!/usr/bin/env bash
# SDPO paper (arXiv 2601.20802), "with rich environment feedback": LiveCodeBench v6, Qwen3-8B, the code runner's
# feedback in the teacher prompt; rows SDPO and GRPO (recipes/sdpo_lcb{,_grpo}.yaml), validation avg@4.
# Usage: examples/sdpo/lcb.sh [hydra overrides...]   (environment: see examples/common.sh)
source "$(dirname "$0")/../common.sh"
METHODS=${METHODS:-"sdpo grpo"}
VAL="$DATA/livecodebench/test.parquet"

if stage data; then
  prep livecodebench "$DATA/livecodebench"   # v6 window 2025-02-01..2025-05-01; train = half of each problem's tests
fi
runs=()
for method in $METHODS; do
  recipe=sdpo_lcb; [ "$method" = sdpo ] || recipe="sdpo_lcb_$method"
  runs+=("$recipe")
  if stage train; then train "$recipe" "$recipe" "$DATA/livecodebench/train.parquet" "$VAL"; fi
  if stage eval; then evaluate "$recipe" 4 0.6 0.95 8192 off "$VAL"; fi
done
if stage report; then report sdpo "${runs[@]}"; fi
