#!/usr/bin/env bash
# Does it learn? grpo, sc_grpo, sdpo and sdpg through verl's real main_ppo on the CPU backend, on a task the tiny
# model learns in a few dozen steps, over several seeds; then validation accuracy against step (one line per method,
# a band over the seeds) and a table initial -> final, mean +- spread over the seeds.
#   1. assets (once, ~2 min): the find-the-digit task ("Find the digit in: qk7zt" -> 7) and the tiny Qwen2, warm
#      started to pick the right digit ~30% of the time on student prompts and ~96% on teacher prompts that hold a
#      verified sibling, feedback or the reference (scgrpo_verl.cpu_backend.learning);
#   2. METHODS x SEEDS runs of STEPS steps (PARALLEL at a time, ~5 GB RAM each), validation before training and every
#      TEST_FREQ steps (32 held-out prompts x 4 samples at temperature 1), verl's `file` logger in <run>/metrics.jsonl;
#   3. scgrpo-verl report --learning: <out>/report/learning_curves.png/.svg, learning.md, learning.csv.
# Measured: 3,209 s (53 min) for the defaults with PARALLEL=2 on a 2-core host that other jobs loaded (load average up
# to 70); each run ~3-4 min of Ray/verl start-up, 2-3 min of steps, 1.5-1.9 min of validation. README: "Does it learn?".
# Usage: examples/cpu_learning.sh [OUT_DIR]
#   env: STEPS=20, SEEDS="1 2 3", METHODS="grpo sc_grpo sdpo sdpg", PARALLEL=2, TEST_FREQ=2, LR=1e-3, TIMEOUT=1200
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-$(mktemp -d /tmp/scgrpo_learning_XXXXXX)}")
STEPS=${STEPS:-20}
SEEDS=${SEEDS:-"1 2 3"}
METHODS=${METHODS:-"grpo sc_grpo sdpo sdpg"}
PARALLEL=${PARALLEL:-2}
TEST_FREQ=${TEST_FREQ:-2}
LR=${LR:-1e-3}
TIMEOUT=${TIMEOUT:-1200}
mkdir -p "$OUT/runs"
start=$(date +%s)
elapsed() { echo "$(( $(date +%s) - start ))s"; }

echo "== assets -> $OUT/assets"
python -m scgrpo_verl.cpu_backend.learning --out "$OUT/assets" --n-train 32 --n-val 32
A="$OUT/assets"

train() {  # train METHOD SEED: STEPS real main_ppo steps; verl's console output goes to <run>.out
  local method=$1 seed=$2 run="$OUT/runs/${1}_s$2" overrides
  mapfile -t overrides < <(python -m scgrpo_verl.cpu_backend.learning --out "$A" --n-train 32 --n-val 32 \
    --print-overrides "$method" "$seed" --lr "$LR" --test-freq "$TEST_FREQ")
  [ "${#overrides[@]}" -gt 0 ] || { echo "!! no overrides for $method seed $seed" >&2; return 1; }
  scgrpo-verl cpu-run --config-name "$method" --steps "$STEPS" --workdir "$run" --timeout "$TIMEOUT" \
    "${overrides[@]}" \
    "trainer.logger=[console,file]" trainer.project_name=learning "trainer.experiment_name=${method}_s$seed" \
    "+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH=$run/metrics.jsonl" > "$run.out" 2>&1
}

jobs_list=()
for seed in $SEEDS; do for method in $METHODS; do jobs_list+=("$method $seed"); done; done
total=${#jobs_list[@]}
for ((i = 0; i < total; i += PARALLEL)); do
  batch=("${jobs_list[@]:i:PARALLEL}")
  pids=()
  for job in "${batch[@]}"; do
    set -- $job
    echo "== [$(elapsed)] train $1 seed $2 ($STEPS steps; run $((i + ${#pids[@]} + 1))/$total) -> $OUT/runs/${1}_s$2"
    train "$1" "$2" & pids+=($!)
  done
  failed=0
  for j in "${!pids[@]}"; do
    set -- ${batch[j]}
    if wait "${pids[j]}"; then
      grep '^\[cpu-run\] ok' "$OUT/runs/${1}_s$2.out" || true
      grep -o 'step:[0-9]* - .*val-core/[^ ]*acc/mean@4:[^ ]*' "$OUT/runs/${1}_s$2/run.log" \
        | sed -E 's/^step:([0-9]+) - .*acc\/mean@4:(np\.float64\()?([0-9.]+).*/   val acc step \1: \3/' || true
    else
      failed=1; echo "!! $1 seed $2 failed: tail of $OUT/runs/${1}_s$2.out"; tail -40 "$OUT/runs/${1}_s$2.out"
    fi
  done
  [ "$failed" = 0 ] || exit 1
done
echo "== [$(elapsed)] trained $total runs"

runs=()
for job in "${jobs_list[@]}"; do set -- $job; runs+=("$OUT/runs/${1}_s$2"); done
scgrpo-verl report "${runs[@]}" --learning --out "$OUT/report"
echo "== learning run done in $(elapsed): $OUT/report"
