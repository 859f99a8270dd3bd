# Shared by examples/<paper>/<setup>.sh (sourced, not run). Each setup script runs four stages:
#   data   -> python -m data_prep.<benchmark> --out $DATA/<benchmark>   (the folders the recipes read)
#   train  -> python -m verl.trainer.main_ppo --config-name=recipes/<recipe>, validation every trainer.test_freq
#   eval   -> scgrpo-verl eval of the last checkpoint on every validation file, with the paper's sampling
#   report -> scgrpo-verl report RUN_DIR... --paper <paper>
# Environment:
#   DATA=~/data        where data_prep writes (the recipes read ${HOME}/data/...; other roots are passed as overrides)
#   RUNS=./runs        one folder per run: metrics.jsonl (verl's `file` logger), train.log, checkpoints/, eval/
#   STAGES="data train eval report"   a subset runs only those stages
#   METHODS=...        a subset of the setup's methods (default: all of the table's rows)
#   MODEL=...          a local checkpoint instead of the recipe's hub model
#   SOURCE_<BENCHMARK>=path   a local copy instead of the hub dataset (e.g. SOURCE_DAPO_MATH=/data/dapo.parquet)
#   EVAL_ARGS="..."    extra arguments of `scgrpo-verl eval`
#   DRY_RUN=1          print the training / eval / report commands instead of running them
# Arguments of the setup script are extra Hydra overrides for every training run (e.g. trainer.n_gpus_per_node=8).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DATA=$(realpath -m "${DATA:-$HOME/data}")
RUNS=$(realpath -m "${RUNS:-$REPO/runs}")
STAGES=${STAGES:-"data train eval report"}
DRY_RUN=${DRY_RUN:-0}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"

stage() { [[ " $STAGES " == *" $1 "* ]]; }

run() {  # print a command, then run it unless DRY_RUN=1
  printf '+'; printf ' %q' "$@"; printf '\n'
  [ "$DRY_RUN" = 1 ] || "$@"
}

prep() {  # prep BENCHMARK OUT_DIR [data_prep args...]: one data_prep script, --source from SOURCE_<BENCHMARK>
  local bench=$1 out=$2; shift 2
  local var="SOURCE_${bench^^}"
  local src=${!var:-}
  # PREP_ARGS: extra data_prep options for every benchmark, e.g. PREP_ARGS="--max-invalid 0.5"
  # shellcheck disable=SC2086
  (cd "$REPO" && python -m "data_prep.$bench" --out "$out" ${src:+--source "$src"} "$@" ${PREP_ARGS:-})
}

join_list() { local IFS=,; echo "[$*]"; }  # Hydra list of paths

train() {  # train RECIPE RUN_NAME TRAIN_FILE VAL_FILES(comma-separated) [overrides...]
  local recipe=$1 name=$2 train_file=$3 val_files=$4; shift 4
  local dir="$RUNS/$name"
  mkdir -p "$dir"
  local cmd=(python -m verl.trainer.main_ppo --config-path=pkg://scgrpo_verl.configs "--config-name=recipes/$recipe"
    "data.train_files=$train_file" "data.val_files=[$val_files]"
    "trainer.experiment_name=$name" "trainer.default_local_dir=$dir/checkpoints"
    "trainer.validation_data_dir=$dir/val_generations"
    "+ray_kwargs.ray_init.runtime_env.env_vars.VERL_FILE_LOGGER_PATH=$dir/metrics.jsonl")
  [ -z "${MODEL:-}" ] || cmd+=("actor_rollout_ref.model.path=$MODEL")
  cmd+=("$@" "${EXTRA_OVERRIDES[@]}")
  if [ "$DRY_RUN" = 1 ]; then run "${cmd[@]}"; else run "${cmd[@]}" 2>&1 | tee "$dir/train.log"; fi
}

last_checkpoint() {  # the actor folder of the run's last saved step (verl writes latest_checkpointed_iteration.txt)
  local dir="$RUNS/$1/checkpoints"
  if [ -f "$dir/latest_checkpointed_iteration.txt" ]; then
    echo "$dir/global_step_$(cat "$dir/latest_checkpointed_iteration.txt")/actor"
  elif [ "$DRY_RUN" = 1 ]; then
    echo "$dir/global_step_N/actor"
  else
    echo "no checkpoint under $dir (trainer.save_freq must be > 0)" >&2
    return 1
  fi
}

evaluate() {  # evaluate RUN_NAME N TEMPERATURE TOP_P MAX_NEW_TOKENS THINKING(on|off) VAL_FILE...
  # scgrpo-verl eval of the last checkpoint on each file, with the recipe's validation sampling
  # (rollout.val_kwargs), response length (data.max_response_length) and chat template's enable_thinking;
  # tests/test_examples.py checks these arguments against the composed recipe
  local name=$1 n=$2 temperature=$3 top_p=$4 max_new_tokens=$5 thinking=$6; shift 6
  local ckpt
  ckpt=$(last_checkpoint "$name")
  for val in "$@"; do
    # shellcheck disable=SC2086
    run scgrpo-verl eval --model-path "$ckpt" --data "$val" --n "$n" --temperature "$temperature" --top-p "$top_p" \
      --max-new-tokens "$max_new_tokens" "--$( [ "$thinking" = on ] && echo enable || echo disable )-thinking" \
      --out "$RUNS/$name/eval/$(basename "$(dirname "$val")")" ${EVAL_ARGS:-}
  done
}

report() {  # report PAPER RUN_NAME...: the paper's table and plots under $RUNS/report/<paper>
  local paper=$1; shift
  local dirs=()
  for name in "$@"; do dirs+=("$RUNS/$name"); done
  run scgrpo-verl report "${dirs[@]}" --paper "$paper" --out "$RUNS/report/$paper"
}

EXTRA_OVERRIDES=("$@")
