#!/usr/bin/env bash
# SDPO paper (arXiv 2601.20802), "without rich environment feedback" table, Tool use row, Qwen3-8B: avg@16, best
# within 1 h and 5 h of training; rows SDPO and GRPO (recipes/sdpo_tooluse{,_grpo}.yaml).
# ToolUse has no hub dataset: SOURCE_TOOLUSE=<folder with train.json / test.json> (lasgroup/SDPO datasets/tooluse);
# without it the script clones lasgroup/SDPO into $DATA/src/SDPO.
# Usage: examples/sdpo/tooluse.sh [hydra overrides...]   (environment: see examples/common.sh)
source "$(dirname "$0")/../common.sh"
METHODS=${METHODS:-"sdpo grpo"}
VAL="$DATA/tooluse/test.parquet"

if stage data; then
  if [ -z "${SOURCE_TOOLUSE:-}" ]; then
    [ -d "$DATA/src/SDPO" ] || git clone --depth 1 https://github.com/lasgroup/SDPO "$DATA/src/SDPO"
    SOURCE_TOOLUSE="$DATA/src/SDPO/datasets/tooluse"
  fi
  prep tooluse "$DATA/tooluse"
fi
runs=()
for method in $METHODS; do
  recipe=sdpo_tooluse; [ "$method" = sdpo ] || recipe="sdpo_tooluse_$method"
  runs+=("$recipe")
  if stage train; then train "$recipe" "$recipe" "$DATA/tooluse/train.parquet" "$VAL"; fi
  if stage eval; then evaluate "$recipe" 16 0.6 0.95 8192 off "$VAL"; fi
done
if stage report; then report sdpo "${runs[@]}"; fi
