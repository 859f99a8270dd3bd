#!/usr/bin/env bash
# SDPO paper (arXiv 2601.20802), "without rich environment feedback" table, SciKnowEval L3 rows (Chemistry, Physics,
# Biology, Materials), Qwen3-8B: avg@16, best within 1 h and 5 h of training; rows SDPO and GRPO
# (recipes/sdpo_science{,_grpo}.yaml, one run per domain and method).
# Usage: examples/sdpo/science.sh [hydra overrides...]   (environment: see examples/common.sh; DOMAINS=...)
source "$(dirname "$0")/../common.sh"
METHODS=${METHODS:-"sdpo grpo"}
DOMAINS=${DOMAINS:-"chemistry physics biology material"}   # data_prep.sciknoweval's folder names

if stage data; then
  prep sciknoweval "$DATA/sciknoweval"   # <out>/<domain>/{train,test}.parquet, 90/10 split, seed 42
fi
runs=()
for domain in $DOMAINS; do
  for method in $METHODS; do
    recipe=sdpo_science; [ "$method" = sdpo ] || recipe="sdpo_science_$method"
    name="${recipe}_$domain"
    runs+=("$name")
    val="$DATA/sciknoweval/$domain/test.parquet"
    if stage train; then train "$recipe" "$name" "$DATA/sciknoweval/$domain/train.parquet" "$val"; fi
    if stage eval; then evaluate "$name" 16 0.6 0.95 8192 off "$val"; fi
  done
done
if stage report; then report sdpo "${runs[@]}"; fi
