#!/usr/bin/env bash
# Creates a Cloud TPU VM: one host (v5litepod-8, v4-8, v6e-8) or a pod slice of several
# workers (v4-32, v5litepod-16). Billing starts when it is READY; tpu/delete.sh stops it.
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
PROG=create.sh
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: tpu/create.sh [flags]

Creates the TPU VM with 'gcloud compute tpus tpu-vm create'. The command waits until the VM
is READY (a few minutes); it fails at once when the zone has no capacity or quota for the
accelerator type.

  --spot                a Spot VM: much cheaper, may be preempted at any time (the trainers
                        resume from the latest checkpoint in the workdir; recreate and rerun)
  --preemptible         the older preemptible model (preempted within 24 hours)
  --network NET         VPC network (default: gcloud's, 'default')
  --subnetwork SUBNET
  --service-account SA  the workers' service account (default: the Compute Engine default
                        account); it needs read access to the TFDS bucket and write access to
                        the workdir bucket
  --internal-ips        no external IPs (ssh then needs --internal-ip or IAP; installing
                        needs Cloud NAT for PyPI)
  --labels K=V,...      labels for billing reports

EOF
  tpu_common_help
  cat <<'EOF'

Examples:
  tpu/create.sh --project my-project                          # v5litepod-8 in us-central1-a
  tpu/create.sh --accelerator v4-32 --name vit-pod --spot     # 4 workers in us-central2-b
EOF
}

TPU_BOOL_FLAGS+=(spot preemptible internal-ips)
TPU_VALUE_FLAGS+=(network subnetwork service-account labels)
tpu_parse_args "$@"
((${#TPU_ARGS[@]} == 0)) || tpu_die "unexpected argument '${TPU_ARGS[0]}' (see --help)"
[[ ${OPT_SPOT:-0} == 1 && ${OPT_PREEMPTIBLE:-0} == 1 ]] &&
  tpu_die "--spot and --preemptible exclude each other: pick one"
tpu_require_gcloud
tpu_require_project
tpu_where

create=(gcloud compute tpus tpu-vm create "$OPT_NAME" "${TPU_WHERE[@]}"
  "--accelerator-type=$OPT_ACCELERATOR" "--version=$OPT_VERSION")
[[ ${OPT_SPOT:-0} == 1 ]] && create+=(--spot)
[[ ${OPT_PREEMPTIBLE:-0} == 1 ]] && create+=(--preemptible)
[[ ${OPT_INTERNAL_IPS:-0} == 1 ]] && create+=(--internal-ips)
[[ -n ${OPT_NETWORK:-} ]] && create+=("--network=$OPT_NETWORK")
[[ -n ${OPT_SUBNETWORK:-} ]] && create+=("--subnetwork=$OPT_SUBNETWORK")
[[ -n ${OPT_SERVICE_ACCOUNT:-} ]] && create+=("--service-account=$OPT_SERVICE_ACCOUNT")
[[ -n ${OPT_LABELS:-} ]] && create+=("--labels=$OPT_LABELS")

tpu_exec "${create[@]}"
if ((!OPT_DRY_RUN)); then
  tpu_note "created '$OPT_NAME' ($OPT_ACCELERATOR in $OPT_ZONE); it bills until" \
    "'tpu/delete.sh --name $OPT_NAME --zone $OPT_ZONE'. Next: tpu/install.sh"
fi
