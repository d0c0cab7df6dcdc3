#!/usr/bin/env bash
# Installs the project on every worker of the TPU VM: the code (copied from this checkout, or
# cloned from git), a Python virtual environment, and the project with jax[tpu].
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
PROG=install.sh
# shellcheck source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<'EOF'
Usage: tpu/install.sh [flags]

On every worker (--worker=all): puts the project in ~/jax-vision-toolkit (copied over an earlier
install there), creates ~/vision-venv with uv (the TPU images ship Python 3.10; jax needs a
newer one), and runs 'uv pip install -e ~/jax-vision-toolkit jax[tpu] gcsfs'. gcsfs lets
tensorflow-datasets read gs:// data dirs without TensorFlow. Run it again after changing the
code. The workers need internet access (PyPI, and GitHub for uv's Python builds).

  --source DIR          the checkout to copy: its tracked and untracked, not ignored files,
                        uncommitted changes included, tpu-results/ left out (default: the
                        checkout holding tpu/)
  --git URL             clone URL on every worker instead of copying a local checkout
  --ref REF             branch, tag or commit to check out with --git (default: the remote's
                        default branch)
  --python VERSION      Python for the virtual environment (default 3.12)
  --jax-version X.Y.Z   pin jax[tpu]==X.Y.Z (default: the newest)

EOF
  tpu_common_help
  cat <<'EOF'

Examples:
  tpu/install.sh --name vit-pod --accelerator v4-32
  tpu/install.sh --git https://github.com/OWNER/jax-vision-toolkit.git --ref v0.1.0
EOF
}

TPU_VALUE_FLAGS+=(source git ref python jax-version)
tpu_parse_args "$@"
((${#TPU_ARGS[@]} == 0)) || tpu_die "unexpected argument '${TPU_ARGS[0]}' (see --help)"
[[ -n ${OPT_REF:-} && -z ${OPT_GIT:-} ]] && tpu_die "--ref needs --git URL"
[[ -n ${OPT_GIT:-} && -n ${OPT_SOURCE:-} ]] && tpu_die "--source and --git exclude each other"
python_version=${OPT_PYTHON:-3.12}
[[ $python_version =~ ^3\.[0-9]+$ ]] || tpu_die "--python '$python_version': expected 3.N"
jax_req='jax[tpu]'
if [[ -n ${OPT_JAX_VERSION:-} ]]; then
  [[ $OPT_JAX_VERSION =~ ^[0-9]+(\.[0-9]+)*$ ]] ||
    tpu_die "--jax-version '$OPT_JAX_VERSION': expected a version such as 0.6.2"
  jax_req="jax[tpu]==$OPT_JAX_VERSION"
fi
tpu_require_gcloud
tpu_require_project

dir=$(tpu_remote_path "$TPU_REMOTE_DIR_DEFAULT")
venv=$(tpu_remote_path "$TPU_VENV_DEFAULT")
staging=$(tpu_remote_path "$TPU_REMOTE_DIR_DEFAULT.new")
archive_name=$TPU_REMOTE_DIR_DEFAULT.tar.gz

# 1. The code, into a staging folder first, so a failed download leaves the install as it was.
if [[ -n ${OPT_GIT:-} ]]; then
  fetch="rm -rf $staging && git clone --quiet $(tpu_quote "$OPT_GIT") $staging"
  [[ -n ${OPT_REF:-} ]] && fetch+=" && git -C $staging checkout --quiet $(tpu_quote "$OPT_REF")"
else
  source_dir=${OPT_SOURCE:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
  [[ -f $source_dir/pyproject.toml ]] ||
    tpu_die "--source '$source_dir': no pyproject.toml there (expected the project's checkout)"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  archive=$tmp/$archive_name
  if ((OPT_DRY_RUN)); then
    printf '# pack %s (git ls-files --cached --others --exclude-standard) into %s\n' \
      "$source_dir" "$archive_name"
  elif git -C "$source_dir" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    # Tracked and untracked-but-not-ignored files that exist (a deleted file is still listed),
    # less the results tpu/fetch.sh copied back.
    git -C "$source_dir" ls-files -z --cached --others --exclude-standard |
      while IFS= read -r -d '' file; do
        [[ -e $source_dir/$file && $file != tpu-results/* ]] && printf '%s\0' "$file"
      done | tar -czf "$archive" -C "$source_dir" --null -T -
  else
    tar -czf "$archive" -C "$source_dir" --exclude=.git --exclude=__pycache__ \
      --exclude='*.egg-info' --exclude=.venv --exclude=./tpu-results .
  fi
  tpu_where
  tpu_ssh_flags
  tpu_exec gcloud compute tpus tpu-vm scp "$archive" "$OPT_NAME:$archive_name" \
    "${TPU_WHERE[@]}" --worker=all "${TPU_SSH[@]}"
  home_archive=$(tpu_remote_path "$archive_name")
  fetch="rm -rf $staging && mkdir -p $staging && tar -xzf $home_archive -C $staging"
  fetch+=" && rm -f $home_archive"
fi

# 2. The environment. uv brings its own Python build, so the image's Python does not matter.
# The staged code is copied over the install folder rather than replacing it, so that nothing
# a run left there (a relative --workdir, say) is lost; files deleted from the project linger.
# shellcheck disable=SC2016  # $HOME is for the remote shell to expand
uv='"$HOME"/.local/bin/uv'
remote="$fetch && mkdir -p $dir && cp -a $staging/. $dir/ && rm -rf $staging"
remote+=" && { python3 -m pip install --quiet --user --upgrade uv"
remote+=" || curl -LsSf https://astral.sh/uv/install.sh | sh; }"
remote+=" && { [ -x $venv/bin/python ] || $uv venv --quiet --python $python_version $venv; }"
remote+=" && $uv pip install --quiet --python $venv/bin/python -e $dir $(tpu_quote "$jax_req") gcsfs"
remote+=" && $venv/bin/python -c $(tpu_quote 'import jax, vit_jax; print("jax", jax.__version__, "installed")')"
tpu_ssh all "$remote"
if ((!OPT_DRY_RUN)); then
  tpu_note "installed on every worker of '$OPT_NAME'. Next: tpu/run.sh -- python -m ..."
fi
