#!/usr/bin/env bash
# SC-GRPO paper (arXiv 2606.18810), math table: Qwen3-8B (thinking off) trained on 4,000 DAPO-Math-17k problems,
# Avg@8 / Pass@8 on AIME24 and AIME25; rows SC-GRPO, GRPO, DAPO (recipes/sc_grpo_math{,_grpo,_dapo}.yaml).
# Usage: examples/sc_grpo/math.sh [hydra overrides...]   (environment: see examples/common.sh)
source "$(dirname "$0")/../common.sh"
METHODS=${METHODS:-"sc_grpo grpo dapo"}
TRAIN="$DATA/dapo_math_4k/train.parquet"
VALS=("$DATA/aime2024/test.parquet" "$DATA/aime2025/test.parquet")

if stage data; then
  prep dapo_math "$DATA/dapo_math_4k" --sample 4000   # "4k DAPO-Math-17k problems" (seed 42)
  prep aime2024 "$DATA/aime2024"
  prep aime2025 "$DATA/aime2025"
fi
runs=()
for method in $METHODS; do
  recipe=sc_grpo_math; [ "$method" = sc_grpo ] || recipe="sc_grpo_math_$method"
  runs+=("$recipe")
  if stage train; then train "$recipe" "$recipe" "$TRAIN" "$(IFS=,; echo "${VALS[*]}")"; fi
  if stage eval; then evaluate "$recipe" 8 1.0 1.0 12288 off "${VALS[@]}"; fi
done
if stage report; then report sc_grpo "${runs[@]}"; fi
