#!/usr/bin/env bash
# The whole pipeline in miniature on a CPU (584 s measured on a busy 2-core host; two cpu-runs at a time, ~5 GB each;
# no GPU, no downloads):
#   1. data: the tiny parity task + its biased tiny model (scgrpo_verl.cpu_backend.assets --task parity), and
#      data_prep run on the repository's GSM8K fixture (a second eval source, which the tiny model never solves; not
#      in verl's in-loop validation: verl concatenates val files and needs one schema);
#   2. grpo, sc_grpo, sdpo and sdpg: STEPS real verl main_ppo steps each (scgrpo-verl cpu-run), validation before
#      training and after every step, verl's `file` logger writing <run>/metrics.jsonl, the final checkpoint saved;
#   3. scgrpo-verl eval of every final checkpoint (verl's FSDP checkpoint merged to HF first);
#   4. scgrpo-verl report for each paper's layout: Markdown + CSV table and PNG/SVG plots under <out>/report/<paper>.
# Usage: examples/cpu_miniature.sh [OUT_DIR]
#   env: STEPS=2, METHODS="grpo sc_grpo sdpo sdpg", TIMEOUT=900 (per run), PARALLEL=2 (runs at a time; 1 when the
#   available memory is below what two runs need)
# lr 1e-3 (not the papers' 1e-6) so that two steps move the tiny model past bf16 rounding and the methods differ.
# The parity task lets every mechanism fire: ~45% of samples are right by chance, so groups have some verified
# rollouts (SC-GRPO's KL weighting, SDPO's sibling reprompting) and some without (solve-none, feedback-only teachers).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=$(realpath -m "${1:-$(mktemp -d /tmp/scgrpo_miniature_XXXXXX)}")
STEPS=${STEPS:-2}
METHODS=${METHODS:-"grpo sc_grpo sdpo sdpg"}
TIMEOUT=${TIMEOUT:-900}
RUN_GIB=6  # one cpu-run at its peak (~5 GB) plus headroom; Ray kills workers when the node runs low on memory
free_gib=$(awk '/^MemAvailable:/ {printf "%d", $2 / 1048576}' /proc/meminfo)
if [ -z "${PARALLEL:-}" ]; then
  PARALLEL=2
  if [ "$free_gib" -lt $((2 * RUN_GIB)) ]; then
    PARALLEL=1
    echo "== $free_gib GiB of memory available, two runs at a time need $((2 * RUN_GIB)): one run at a time"
  fi
fi
mkdir -p "$OUT/runs" "$OUT/eval"
start=$(date +%s)

echo "== data -> $OUT"
python -m scgrpo_verl.cpu_backend.assets --task parity --out "$OUT/assets" --n-train 16 --n-val 8
python -m data_prep.gsm8k --source tests/fixtures/data_prep/gsm8k --out "$OUT/data/gsm8k" --max-invalid 0.5  # invalid rows on purpose
MODEL="$OUT/assets/tiny_qwen2"

train() {  # train METHOD: STEPS real main_ppo steps; cpu-run's output goes to <run>.out, its progress lines here
  local method=$1 run="$OUT/runs/$1" extra=()
  case $method in
    sdpg) extra+=(self_teacher.sdpg.warmup_steps=0) ;;  # beta(k) > 0 from the first of the few steps
  esac
  scgrpo-verl cpu-run --config-name "$method" --steps "$STEPS" --workdir "$run" --timeout "$TIMEOUT" \
    --save-freq "$STEPS" \
    "actor_rollout_ref.model.path=$MODEL" \
    "data.train_files=$OUT/assets/train.parquet" "data.val_files=$OUT/assets/val.parquet" \
    actor_rollout_ref.rollout.n=6 actor_rollout_ref.actor.optim.lr=1e-3 \
    trainer.test_freq=1 trainer.val_before_train=True \
    actor_rollout_ref.rollout.val_kwargs.n=4 actor_rollout_ref.rollout.val_kwargs.do_sample=True \
    actor_rollout_ref.rollout.val_kwargs.temperature=1.0 \
    "trainer.logger=[console,file]" trainer.project_name=miniature "trainer.experiment_name=$method" \
    "+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH=$run/metrics.jsonl" \
    "${extra[@]}" 2>&1 | tee "$run.out" | sed -un "s/^\[cpu-run\]/[$method]/p"
}

# PARALLEL runs at a time (each its own Ray cluster and temp dir; ~5 GB RAM each)
methods=($METHODS)
for ((i = 0; i < ${#methods[@]}; i += PARALLEL)); do
  batch=("${methods[@]:i:PARALLEL}")
  pids=()
  for method in "${batch[@]}"; do
    echo "== train $method ($STEPS steps) -> $OUT/runs/$method"
    train "$method" & pids+=($!)
  done
  failed=0
  for j in "${!pids[@]}"; do
    wait "${pids[j]}" || { failed=1; echo "!! ${batch[j]} failed: tail of $OUT/runs/${batch[j]}.out"; tail -40 "$OUT/runs/${batch[j]}.out"; }
  done
  [ "$failed" = 0 ] || exit 1
done
echo "== trained in $(( $(date +%s) - start ))s"

for method in $METHODS; do
  echo "== eval $method"
  scgrpo-verl eval --model-path "$OUT/runs/$method/checkpoints/global_step_$STEPS/actor" \
    --data "$OUT/assets/val.parquet" --data "$OUT/data/gsm8k/test.parquet" \
    --n 8 --temperature 1.0 --top-p 1.0 --max-new-tokens 32 --backend hf \
    --reward-path scgrpo_verl/cpu_backend/reward.py --out "$OUT/eval/$method" 2> "$OUT/eval/$method.err" \
    || { tail -30 "$OUT/eval/$method.err"; exit 1; }
done

runs=()
for method in $METHODS; do runs+=("$method=$OUT/runs/$method"); done
for paper in sc_grpo sdpo sdpg; do
  echo "== report --paper $paper"
  scgrpo-verl report "${runs[@]}" --eval-dir "$OUT/eval" --paper "$paper" --out "$OUT/report/$paper"
done
echo "== miniature done in $(( $(date +%s) - start ))s: $OUT/report"
