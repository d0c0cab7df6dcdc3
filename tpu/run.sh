#!/usr/bin/env bash
# Runs one command on every worker of the TPU VM at once: the way a multi-host JAX program is
# started. Each worker logs to ~/vision-logs/RUN_ID.log; tpu/fetch.sh --logs copies them back.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
PROG=run.sh
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: tpu/run.sh [flags] -- COMMAND [ARG...]

Runs COMMAND on every worker (gcloud ... ssh --worker=all), in ~/jax-vision-toolkit with
~/vision-venv active (see tpu/install.sh). Every worker runs the same command: the trainers
call jax.distributed.initialize() themselves; on a pod slice this script sets
JAX_COORDINATOR_ADDRESS to worker 0 so that they do. Arguments reach the workers exactly as
given here (spaces and quotes included). On a pod slice the --workdir must be on GCS
(gs://...), where every worker reads and writes the same checkpoints.

  --run-id ID           names the log ~/vision-logs/ID.log on each worker (default: the UTC
                        time, e.g. 20260101-120000); an existing log is appended to
  --detach              start the command in the background on each worker (it survives a
                        dropped connection) and return; follow it with tpu/logs.sh
  --log-dir DIR         write each worker's output to DIR/N.log on this machine instead of
                        the terminal (gcloud's --output-directory; DIR is created)
  --workers SPEC        run on these workers only, e.g. 0 or 1-3 (default: all; a subset
                        gets no JAX coordinator, so it suits data copies, not training)

EOF
  tpu_common_help
  cat <<'EOF'

Examples:
  tpu/run.sh -- python -m vit_jax.main --config configs/vit.py:ViT-B_16,cifar10 \
      --workdir gs://MY_BUCKET/vit-b16-cifar10 --config.tfds_data_dir=gs://MY_BUCKET/tfds
  tpu/run.sh --detach --run-id igpt -- python -m igpt_jax.main \
      --config configs/igpt.py:S,cifar10 --workdir gs://MY_BUCKET/igpt \
      --config.tfds_data_dir=gs://MY_BUCKET/tfds
  tpu/run.sh -- env XLA_FLAGS=--xla_dump_to=/tmp/xla python -m vit_jax.main ...
EOF
}

TPU_VALUE_FLAGS+=(run-id log-dir workers)
TPU_BOOL_FLAGS+=(detach)
tpu_parse_args "$@"
((${#TPU_ARGS[@]})) || tpu_die "no command to run: put it after '--'," \
  "e.g. tpu/run.sh -- python -m vit_jax.main --config ... --workdir gs://BUCKET/DIR"
run_id=${OPT_RUN_ID:-$(date -u +%Y%m%d-%H%M%S)}
[[ $run_id =~ ^[A-Za-z0-9._-]+$ ]] ||
  tpu_die "--run-id '$run_id': expected letters, digits, '.', '_' or '-'"
workers=${OPT_WORKERS:-all}
[[ $workers =~ ^(all|[0-9]+([-,][0-9]+)*)$ ]] ||
  tpu_die "--workers '$workers': expected all, N, N-M or a list N,M"
[[ ${OPT_DETACH:-0} == 1 && -n ${OPT_LOG_DIR:-} ]] &&
  tpu_die "--log-dir collects the output of a command that runs attached: drop --detach," \
    "or fetch the logs later with tpu/fetch.sh --logs"

# The training command's --workdir, when it has one.
workdir=''
for ((i = 0; i < ${#TPU_ARGS[@]}; i++)); do
  case ${TPU_ARGS[i]} in
    --workdir=*) workdir=${TPU_ARGS[i]#--workdir=} ;;
    --workdir) workdir=${TPU_ARGS[i + 1]:-} ;;
  esac
done

tpu_require_gcloud
tpu_require_project
tpu_lookup_workers
num_workers=${#TPU_IPS[@]}
if ((num_workers > 1)) && [[ $workers == all && -n $workdir && $workdir != gs://* ]]; then
  tpu_die "'$OPT_NAME' has $num_workers workers: --workdir must be on GCS (gs://BUCKET/DIR)" \
    "so that all of them write one checkpoint; got '$workdir'"
fi

log=$(tpu_remote_path "$TPU_LOG_DIR_REMOTE/$run_id.log")
venv=$(tpu_remote_path "$TPU_VENV_DEFAULT")
setup="cd $(tpu_remote_path "$TPU_REMOTE_DIR_DEFAULT")"
setup+=" && { [ -f $venv/bin/activate ] || { echo \"\$(hostname): ~/$TPU_VENV_DEFAULT is missing:"
setup+=" run tpu/install.sh first\" >&2; exit 1; }; }"
setup+=" && . $venv/bin/activate && mkdir -p $(tpu_remote_path "$TPU_LOG_DIR_REMOTE")"
setup+=" && export PYTHONUNBUFFERED=1"
if ((num_workers > 1)) && [[ $workers == all ]]; then
  setup+=" && export JAX_COORDINATOR_ADDRESS=${TPU_IPS[0]}:$TPU_COORDINATOR_PORT"
fi
command=$(tpu_quote "${TPU_ARGS[@]}")
if [[ ${OPT_DETACH:-0} == 1 ]]; then
  remote="$setup && nohup $command >> $log 2>&1 < /dev/null &"
  remote+=" echo \"\$(hostname): started, log ~/$TPU_LOG_DIR_REMOTE/$run_id.log\""
else
  remote="set -o pipefail; $setup && $command 2>&1 | tee -a $log"
  # A trainer that treats gs://... as a local path leaves a folder named gs: behind.
  remote+="; status=\$?; [ ! -d gs: ] || echo \"\$(hostname): warning: ~/$TPU_REMOTE_DIR_DEFAULT/gs:"
  remote+=" is a local folder: the command wrote a gs:// path to local disk\" >&2; exit \$status"
fi

extra=()
if [[ -n ${OPT_LOG_DIR:-} ]]; then
  tpu_exec mkdir -p "$OPT_LOG_DIR"
  extra+=("--output-directory=$OPT_LOG_DIR")
fi
((OPT_DRY_RUN)) || tpu_note "run '$run_id' on workers $workers of '$OPT_NAME'" \
  "($num_workers in all); each logs to ~/$TPU_LOG_DIR_REMOTE/$run_id.log"
tpu_ssh "$workers" "$remote" "${extra[@]}"
