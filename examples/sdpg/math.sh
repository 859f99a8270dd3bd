#!/usr/bin/env bash
# SDPG paper (arXiv 2606.04036), main table: Qwen3-4B (thinking on) on DAPO-Math-17k, 128 prompts x 8, 400 steps,
# mean@32 at T=1.0 / top_p 1.0 on AIME24, AIME25 and AMC23; rows SDPG-URKL, SDPG-UFKL, GRPO
# (recipes/sdpg_math_{urkl,ufkl,grpo}.yaml).
# Usage: examples/sdpg/math.sh [hydra overrides...]   (environment: see examples/common.sh)
source "$(dirname "$0")/../common.sh"
METHODS=${METHODS:-"urkl ufkl grpo"}
TRAIN="$DATA/dapo_math/train.parquet"
VALS=("$DATA/aime2024/test.parquet" "$DATA/aime2025/test.parquet" "$DATA/amc23/test.parquet")

if stage data; then
  prep dapo_math "$DATA/dapo_math"   # all of DAPO-Math-17k (de-duplicated)
  prep aime2024 "$DATA/aime2024"
  prep aime2025 "$DATA/aime2025"
  prep amc23 "$DATA/amc23"
fi
runs=()
for method in $METHODS; do
  recipe="sdpg_math_$method"
  runs+=("$recipe")
  if stage train; then train "$recipe" "$recipe" "$TRAIN" "$(IFS=,; echo "${VALS[*]}")"; fi
  if stage eval; then evaluate "$recipe" 32 1.0 1.0 4096 on "${VALS[@]}"; fi
done
if stage report; then report sdpg "${runs[@]}"; fi
