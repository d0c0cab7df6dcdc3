#!/usr/bin/env bash
# Shows the log of a run on one worker: the way to watch a run started with run.sh --detach.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
PROG=logs.sh
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: tpu/logs.sh [flags] [RUN_ID]

Prints the end of ~/vision-logs/RUN_ID.log (default: the newest log) on one worker.

  --worker N            which worker (default 0)
  --lines N             how many lines (default 50)
  --follow              keep printing new lines until Ctrl-C (tail -f)

EOF
  tpu_common_help
}

TPU_VALUE_FLAGS+=(worker lines)
TPU_BOOL_FLAGS+=(follow)
tpu_parse_args "$@"
((${#TPU_ARGS[@]} <= 1)) || tpu_die "unexpected argument '${TPU_ARGS[1]}' (see --help)"
run_id=${TPU_ARGS[0]:-}
[[ -z $run_id || $run_id =~ ^[A-Za-z0-9._-]+$ ]] ||
  tpu_die "run id '$run_id': expected letters, digits, '.', '_' or '-'"
worker=${OPT_WORKER:-0}
[[ $worker =~ ^[0-9]+$ ]] || tpu_die "--worker '$worker': expected a worker number (0, 1, ...)"
lines=${OPT_LINES:-50}
[[ $lines =~ ^[0-9]+$ ]] || tpu_die "--lines '$lines': expected a number"
tpu_require_gcloud
tpu_require_project

logs=$(tpu_remote_path "$TPU_LOG_DIR_REMOTE")
tail_cmd="tail -n $lines"
[[ ${OPT_FOLLOW:-0} == 1 ]] && tail_cmd+=" -f"
if [[ -n $run_id ]]; then
  remote="$tail_cmd $logs/$run_id.log"
else
  remote="log=\$(ls -t $logs/*.log 2>/dev/null | head -n 1)"
  remote+=" && [ -n \"\$log\" ] || { echo \"\$(hostname): no logs in ~/$TPU_LOG_DIR_REMOTE\" >&2;"
  remote+=" exit 1; }; echo \"== \$log\" && $tail_cmd \"\$log\""
fi
tpu_ssh "$worker" "$remote"
