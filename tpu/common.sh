# shellcheck shell=bash
# shellcheck disable=SC2034  # the settings here are read by the scripts that source it
# Shared by the tpu/*.sh scripts (sourced, not run): flag parsing, defaults, quoting, and the
# one place where gcloud is called, so that --dry-run covers every command.
#
# A script declares its own flags before calling `tpu_parse_args "$@"`:
#   TPU_VALUE_FLAGS+=(workdir)   # --workdir VALUE or --workdir=VALUE -> $OPT_WORKDIR
#   TPU_BOOL_FLAGS+=(yes)        # --yes -> OPT_YES=1
# and a `usage` function that prints its help.

# Flags every script takes. Settings come from the flag, else the environment variable named
# in `tpu_common_help`, else a default.
TPU_VALUE_FLAGS=(name zone accelerator version project worker-ips)
TPU_BOOL_FLAGS=(dry-run internal-ip)
TPU_ARGS=()

# The project's layout on every worker, relative to the home directory (see install.sh).
TPU_REMOTE_DIR_DEFAULT=jax-vision-toolkit
TPU_VENV_DEFAULT=vision-venv
TPU_LOG_DIR_REMOTE=vision-logs
# The port jax uses for its coordinator on Cloud TPU (jax/_src/clusters/cloud_tpu_cluster.py).
TPU_COORDINATOR_PORT=8482

PROG=${PROG:-$(basename "$0")}

tpu_die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  exit 2
}

tpu_note() {
  printf '%s: %s\n' "$PROG" "$*" >&2
}

tpu_common_help() {
  cat <<'EOF'
Settings shared by all tpu/ scripts (flag, else environment variable, else default):
  --name NAME           TPU VM name (TPU_NAME; default vision-tpu)
  --accelerator TYPE    accelerator type, e.g. v5litepod-8, v4-8, v4-32, v5litepod-16, v6e-8
                        (TPU_ACCELERATOR; default v5litepod-8)
  --zone ZONE           (TPU_ZONE; default by accelerator family: v4 us-central2-b,
                        v5litepod us-central1-a, v5p us-east5-a, v6e us-east5-b)
  --version VERSION     TPU runtime version (TPU_VERSION; default by family: v4
                        tpu-ubuntu2204-base, v5litepod v2-alpha-tpuv5-lite, v5p
                        v2-alpha-tpuv5, v6e v2-alpha-tpuv6e)
  --project ID          Google Cloud project (TPU_PROJECT; default: gcloud config's project)
  --worker-ips IPS      comma-separated internal IPs of the workers (TPU_WORKER_IPS; default:
                        looked up with 'gcloud compute tpus tpu-vm describe')
  --internal-ip         ssh/scp to the workers' internal IPs (TPU_INTERNAL_IP=1)
  --dry-run             print the gcloud commands instead of running them (TPU_DRY_RUN=1)
  -h, --help            this help
  TPU_GCLOUD            the gcloud binary to run (default: gcloud on PATH)
EOF
}

tpu_in_list() {
  local needle=$1 item
  shift
  for item in "$@"; do
    [[ $item == "$needle" ]] && return 0
  done
  return 1
}

# Parses "$@" into OPT_* variables; words after `--` (and other non-flag words) go to TPU_ARGS.
tpu_parse_args() {
  local arg name value var has_value
  TPU_ARGS=()
  while (($#)); do
    arg=$1
    shift
    case $arg in
      --) TPU_ARGS+=("$@"); break ;;
      -h | --help) usage; exit 0 ;;
      --?*) ;;
      -*) tpu_die "unknown flag $arg (see --help)" ;;
      *) TPU_ARGS+=("$arg"); continue ;;
    esac
    name=${arg#--}
    has_value=0
    if [[ $name == *=* ]]; then
      value=${name#*=}
      name=${name%%=*}
      has_value=1
    fi
    var=OPT_$(tr 'a-z-' 'A-Z_' <<<"$name")
    if tpu_in_list "$name" "${TPU_BOOL_FLAGS[@]}"; then
      ((has_value)) && tpu_die "--$name takes no value"
      printf -v "$var" 1
    elif tpu_in_list "$name" "${TPU_VALUE_FLAGS[@]}"; then
      if ((!has_value)); then
        (($#)) || tpu_die "--$name needs a value"
        value=$1
        shift
      fi
      [[ -n $value ]] || tpu_die "--$name needs a non-empty value"
      printf -v "$var" '%s' "$value"
    else
      tpu_die "unknown flag --$name (see --help)"
    fi
  done
  tpu_settle_settings
}

tpu_settle_settings() {
  OPT_NAME=${OPT_NAME:-${TPU_NAME:-vision-tpu}}
  OPT_ACCELERATOR=${OPT_ACCELERATOR:-${TPU_ACCELERATOR:-v5litepod-8}}
  OPT_PROJECT=${OPT_PROJECT:-${TPU_PROJECT:-}}
  OPT_WORKER_IPS=${OPT_WORKER_IPS:-${TPU_WORKER_IPS:-}}
  OPT_DRY_RUN=${OPT_DRY_RUN:-${TPU_DRY_RUN:-0}}
  OPT_INTERNAL_IP=${OPT_INTERNAL_IP:-${TPU_INTERNAL_IP:-0}}
  [[ $OPT_DRY_RUN == 1 ]] || OPT_DRY_RUN=0
  [[ $OPT_INTERNAL_IP == 1 ]] || OPT_INTERNAL_IP=0
  # Cloud TPU names: lowercase letters, digits and hyphens, starting with a letter.
  [[ $OPT_NAME =~ ^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$ ]] ||
    tpu_die "TPU name '$OPT_NAME': expected lowercase letters, digits and hyphens," \
      "starting with a letter (e.g. vision-tpu)"
  local family_zone='' family_version=''
  case $OPT_ACCELERATOR in
    v4-[0-9]*) family_zone=us-central2-b family_version=tpu-ubuntu2204-base ;;
    v5litepod-[0-9]*) family_zone=us-central1-a family_version=v2-alpha-tpuv5-lite ;;
    v5p-[0-9]*) family_zone=us-east5-a family_version=v2-alpha-tpuv5 ;;
    v6e-[0-9]*) family_zone=us-east5-b family_version=v2-alpha-tpuv6e ;;
    v5e-*) tpu_die "accelerator '$OPT_ACCELERATOR': Cloud TPU calls v5e 'v5litepod'" \
      "(e.g. v5litepod-8)" ;;
  esac
  OPT_ZONE=${OPT_ZONE:-${TPU_ZONE:-$family_zone}}
  OPT_VERSION=${OPT_VERSION:-${TPU_VERSION:-$family_version}}
  [[ -n $OPT_ZONE ]] || tpu_die "no zone for accelerator '$OPT_ACCELERATOR':" \
    "pass --zone (or set TPU_ZONE)"
  [[ -n $OPT_VERSION ]] || tpu_die "no runtime version for accelerator '$OPT_ACCELERATOR':" \
    "pass --version (or set TPU_VERSION); see 'gcloud compute tpus tpu-vm versions list'"
  TPU_GCLOUD=${TPU_GCLOUD:-gcloud}
}

# Fails with a clear message when gcloud is needed and absent (never in --dry-run).
tpu_require_gcloud() {
  ((OPT_DRY_RUN)) && return 0
  command -v "$TPU_GCLOUD" >/dev/null 2>&1 ||
    tpu_die "'$TPU_GCLOUD' not found: install the Google Cloud CLI" \
      "(https://cloud.google.com/sdk/docs/install), run 'gcloud auth login', or set TPU_GCLOUD"
}

# Fills OPT_PROJECT from gcloud's configuration when no flag or variable gave one.
tpu_require_project() {
  [[ -n $OPT_PROJECT ]] && return 0
  if command -v "$TPU_GCLOUD" >/dev/null 2>&1; then
    OPT_PROJECT=$("$TPU_GCLOUD" config get-value project 2>/dev/null || true)
  fi
  [[ -n $OPT_PROJECT && $OPT_PROJECT != '(unset)' ]] ||
    tpu_die "no Google Cloud project: pass --project ID, set TPU_PROJECT," \
      "or run 'gcloud config set project ID'"
}

# POSIX shell quoting: words made of safe characters stay as they are, others are
# single-quoted, so both a remote shell and Python's shlex read them back unchanged.
tpu_quote() {
  local word out=()
  for word in "$@"; do
    if [[ $word =~ ^[A-Za-z0-9_./:=,@%+^-]+$ ]]; then
      out+=("$word")
    else
      out+=("'${word//\'/\'\\\'\'}'")
    fi
  done
  local IFS=' '
  printf '%s' "${out[*]}"
}

# A path on a worker: relative paths are taken from the home directory.
tpu_remote_path() {
  if [[ $1 == /* ]]; then
    tpu_quote "$1"
  else
    # shellcheck disable=SC2016  # $HOME is for the remote shell to expand
    printf '"$HOME"/%s' "$(tpu_quote "$1")"
  fi
}

# Runs a command (gcloud as argv[0] runs $TPU_GCLOUD), or prints it under --dry-run.
tpu_exec() {
  if ((OPT_DRY_RUN)); then
    printf '%s\n' "$(tpu_quote "$@")"
    return 0
  fi
  printf '+ %s\n' "$(tpu_quote "$@")" >&2
  if [[ $1 == gcloud ]]; then
    shift
    "$TPU_GCLOUD" "$@"
  else
    "$@"
  fi
}

# The flags that place every `gcloud compute tpus tpu-vm` command.
tpu_where() {
  TPU_WHERE=("--zone=$OPT_ZONE")
  [[ -n $OPT_PROJECT ]] && TPU_WHERE+=("--project=$OPT_PROJECT")
  return 0
}

tpu_ssh_flags() {
  TPU_SSH=()
  ((OPT_INTERNAL_IP)) && TPU_SSH+=(--internal-ip)
  return 0
}

# Runs REMOTE_COMMAND on the given workers ("all", "0", "1-3").
tpu_ssh() {
  local workers=$1 remote=$2
  shift 2
  tpu_where
  tpu_ssh_flags
  tpu_exec gcloud compute tpus tpu-vm ssh "$OPT_NAME" "${TPU_WHERE[@]}" "--worker=$workers" \
    "${TPU_SSH[@]}" "$@" "--command=$remote"
}

# Sets TPU_IPS to the workers' internal IPs, worker 0 first. Under --dry-run without
# --worker-ips, prints the lookup and assumes one worker.
tpu_lookup_workers() {
  local raw
  tpu_where
  local describe=(gcloud compute tpus tpu-vm describe "$OPT_NAME" "${TPU_WHERE[@]}"
    '--format=value(networkEndpoints[].ipAddress)')
  if [[ -n $OPT_WORKER_IPS ]]; then
    raw=$OPT_WORKER_IPS
  elif ((OPT_DRY_RUN)); then
    printf '%s\n' "$(tpu_quote "${describe[@]}")"
    printf '# --dry-run: one worker assumed (pass --worker-ips to preview a pod slice)\n'
    raw=WORKER0_IP
  else
    raw=$(tpu_exec "${describe[@]}") ||
      tpu_die "could not describe TPU VM '$OPT_NAME' in $OPT_ZONE (does it exist?" \
        "see 'gcloud compute tpus tpu-vm list --zone=$OPT_ZONE')"
  fi
  read -r -a TPU_IPS <<<"$(tr ';,' '  ' <<<"$raw")"
  ((${#TPU_IPS[@]})) || tpu_die "TPU VM '$OPT_NAME' reports no workers (is it READY?)"
}
