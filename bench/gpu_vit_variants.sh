#!/usr/bin/env bash
# ViT-B/16 training-step A/B on one GPU: each variant in its own process (XLA_FLAGS are read
# once per process, and timm's peer gets the whole memory), all in one run so the numbers
# are comparable. One JSON line per measurement goes to OUT (default gpu_vit_variants.jsonl);
# stdout has the progress. About 4 minutes on an H100.
#
#   bash bench/gpu_vit_variants.sh [OUT] [PROFILE_DIR]
#
# Batch 512, bf16 compute, attention='cudnn'. Variants:
#   per_layer_pad   token_multiple=1: q/k/v padded 197 -> 200 in every layer (session 3)
#   ours            the default: the token stream padded to 200 once, in the encoder
#   cublaslt        ours with XLA_FLAGS=--xla_gpu_enable_cublaslt=true
#   timm            timm's vit_base_patch16_224, eager, bf16 autocast, fused AdamW
# With PROFILE_DIR, a profile of `ours` too (kernel time by class, HLO, per-kernel ms).
set -u
OUT=${1:-gpu_vit_variants.jsonl}
PROFILE_DIR=${2:-}
COMMON=(--sections vit_train --attention cudnn --vit-batch 512 --steps 30 --out "$OUT")
run() {  # name, then the command (env assignments first, as for env(1))
  local name=$1
  shift
  echo "## $name ($(date -u +%H:%M:%S))"
  env "$@" || echo "## $name exited $?"
}
# JAX allocates on demand, the same for every variant.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
cd "$(dirname "$0")/.."
python bench/gpu_suite.py --sections env --out "$OUT"
run per_layer_pad timeout 150 python bench/gpu_suite.py "${COMMON[@]}" --no-peer \
  --token-multiple 1
run ours timeout 150 python bench/gpu_suite.py "${COMMON[@]}" --no-peer
run cublaslt XLA_FLAGS=--xla_gpu_enable_cublaslt=true \
  timeout 150 python bench/gpu_suite.py "${COMMON[@]}" --no-peer
run timm timeout 150 python bench/gpu_suite.py "${COMMON[@]}" --peer-only
if [ -n "$PROFILE_DIR" ]; then
  run profile timeout 150 python bench/gpu_suite.py --sections vit_profile \
    --attention cudnn --vit-batch 512 --profile-dir "$PROFILE_DIR" --out "$OUT"
fi
