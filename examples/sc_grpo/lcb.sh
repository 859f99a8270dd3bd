#!/usr/bin/env bash
# SC-GRPO paper (arXiv 2606.18810), code table: Qwen3-8B (thinking off) trained on LiveCodeBench v6 with half of
# each problem's tests, Avg@8 / Pass@8 on all of LCB v6's tests and on Codeforces (out of domain); rows SC-GRPO,
# GRPO, DAPO (recipes/sc_grpo_lcb{,_grpo,_dapo}.yaml).
# Usage: examples/sc_grpo/lcb.sh [hydra overrides...]   (environment: see examples/common.sh)
source "$(dirname "$0")/../common.sh"
METHODS=${METHODS:-"sc_grpo grpo dapo"}
TRAIN="$DATA/livecodebench/train.parquet"
VALS=("$DATA/livecodebench/test.parquet" "$DATA/codeforces/test.parquet")

if stage data; then
  prep livecodebench "$DATA/livecodebench"   # v6 window; train.parquet = half of each problem's tests
  prep codeforces "$DATA/codeforces"
fi
runs=()
for method in $METHODS; do
  recipe=sc_grpo_lcb; [ "$method" = sc_grpo ] || recipe="sc_grpo_lcb_$method"
  runs+=("$recipe")
  if stage train; then train "$recipe" "$recipe" "$TRAIN" "$(IFS=,; echo "${VALS[*]}")"; fi
  if stage eval; then evaluate "$recipe" 8 1.0 1.0 12288 off "${VALS[@]}"; fi
done
if stage report; then report sc_grpo "${runs[@]}"; fi
