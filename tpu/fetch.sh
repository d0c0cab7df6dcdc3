#!/usr/bin/env bash
# Copies a run's results back to this machine: the workdir (from GCS, or from a worker's disk)
# and, with --logs, every worker's logs.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
PROG=fetch.sh
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: tpu/fetch.sh [flags] --workdir DIR [--dest LOCAL] [--logs]

  --workdir DIR         the run's --workdir: gs://BUCKET/PATH is copied with 'gcloud storage
                        rsync'; any other path is on the worker's disk (relative paths are
                        inside ~/jax-vision-toolkit, where tpu/run.sh runs) and is copied
                        with 'gcloud compute tpus tpu-vm scp'
  --dest LOCAL          where to put it (default: tpu-results/<last part of the workdir>, or
                        tpu-results/<TPU name> with --logs alone)
  --worker N            the worker whose disk holds a local workdir (default 0, the one that
                        writes metrics and the final results)
  --logs                also copy each worker's ~/vision-logs to LOCAL/logs/worker-N
  --force               copy into a LOCAL that already has files (files of the same name are
                        replaced; nothing else is removed)

A local workdir is first copied next to LOCAL and moved into place when complete, so an
interrupted copy never leaves a half-copied result under LOCAL.

EOF
  tpu_common_help
  cat <<'EOF'

Examples:
  tpu/fetch.sh --workdir gs://MY_BUCKET/vit-b16-cifar10 --logs
  tpu/fetch.sh --workdir runs/cifar10 --dest ./cifar10-run
EOF
}

TPU_VALUE_FLAGS+=(workdir dest worker)
TPU_BOOL_FLAGS+=(logs force)
tpu_parse_args "$@"
((${#TPU_ARGS[@]} == 0)) || tpu_die "unexpected argument '${TPU_ARGS[0]}' (see --help)"
workdir=${OPT_WORKDIR:-}
want_logs=${OPT_LOGS:-0}
[[ -n $workdir || $want_logs == 1 ]] ||
  tpu_die "nothing to copy: pass --workdir DIR (the run's workdir) and/or --logs"
worker=${OPT_WORKER:-0}
[[ $worker =~ ^[0-9]+$ ]] || tpu_die "--worker '$worker': expected a worker number (0, 1, ...)"
if [[ -n $workdir ]]; then
  trimmed=${workdir%/}
  dest=${OPT_DEST:-tpu-results/${trimmed##*/}}
else
  dest=${OPT_DEST:-tpu-results/$OPT_NAME}
fi
if [[ -d $dest && -n $(ls -A "$dest") && ${OPT_FORCE:-0} != 1 ]]; then
  tpu_die "'$dest' already has files: pass --dest NEW_DIR, or --force to copy into it"
fi
[[ -e $dest && ! -d $dest ]] && tpu_die "'$dest' exists and is not a folder"

tpu_require_gcloud
[[ $workdir == gs://* && $want_logs != 1 ]] || tpu_require_project
tpu_where
tpu_ssh_flags

# Copies REMOTE (a path on worker N, relative to home) to the folder LOCAL via a partial
# folder beside it, merged into LOCAL only when the copy is complete.
copy_from_worker() {
  local n=$1 remote=$2 local_dir=$3 partial
  partial=$(dirname "$local_dir")/.$(basename "$local_dir").partial-$$
  tpu_exec mkdir -p "$(dirname "$local_dir")"
  tpu_exec gcloud compute tpus tpu-vm scp --recurse "$OPT_NAME:$remote" "$partial" \
    "${TPU_WHERE[@]}" "--worker=$n" "${TPU_SSH[@]}"
  if [[ -d $local_dir ]]; then
    tpu_exec cp -a "$partial/." "$local_dir/"
    tpu_exec rm -rf "$partial"
  else
    tpu_exec mv "$partial" "$local_dir"
  fi
}

if [[ $workdir == gs://* ]]; then
  tpu_exec mkdir -p "$dest"
  storage=(gcloud storage rsync --recursive "$workdir" "$dest")
  [[ -n $OPT_PROJECT ]] && storage+=("--project=$OPT_PROJECT")
  tpu_exec "${storage[@]}"
elif [[ -n $workdir ]]; then
  # shellcheck disable=SC2088  # a literal ~/ the user quoted: the worker's home
  case $workdir in
    /*) remote=$workdir ;;
    '~/'*) remote=${workdir#'~/'} ;;
    *) remote=$TPU_REMOTE_DIR_DEFAULT/$workdir ;;
  esac
  copy_from_worker "$worker" "$remote" "$dest"
fi

if [[ $want_logs == 1 ]]; then
  tpu_lookup_workers
  for ((n = 0; n < ${#TPU_IPS[@]}; n++)); do
    copy_from_worker "$n" "$TPU_LOG_DIR_REMOTE" "$dest/logs/worker-$n"
  done
fi
((OPT_DRY_RUN)) || tpu_note "copied to $dest"
