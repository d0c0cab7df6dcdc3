#!/usr/bin/env bash
# Deletes the TPU VM, which stops its billing. Asks first unless --yes.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
PROG=delete.sh
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: tpu/delete.sh [flags]

Deletes the TPU VM and its disks: copy results back first (tpu/fetch.sh). Asks for
confirmation on stdin; anything but y/yes keeps the VM.

  --yes                 delete without asking
  --async               return at once instead of waiting for the deletion to finish

EOF
  tpu_common_help
}

TPU_BOOL_FLAGS+=(yes async)
tpu_parse_args "$@"
((${#TPU_ARGS[@]} == 0)) || tpu_die "unexpected argument '${TPU_ARGS[0]}' (see --help)"
tpu_require_gcloud
tpu_require_project
tpu_where

if ((!OPT_DRY_RUN)) && [[ ${OPT_YES:-0} != 1 ]]; then
  printf "Delete TPU VM '%s' in %s (project %s)? Files on its workers are lost. [y/N] " \
    "$OPT_NAME" "$OPT_ZONE" "$OPT_PROJECT" >&2
  answer=''
  read -r answer || true
  case $answer in
    y | Y | yes | YES | Yes) ;;
    *) tpu_note "not deleted ('$OPT_NAME' still bills; --yes skips this question)"; exit 1 ;;
  esac
fi
# --quiet: gcloud would ask again; the question above (or --yes) was the confirmation.
delete=(gcloud compute tpus tpu-vm delete "$OPT_NAME" "${TPU_WHERE[@]}" --quiet)
[[ ${OPT_ASYNC:-0} == 1 ]] && delete+=(--async)
tpu_exec "${delete[@]}"
