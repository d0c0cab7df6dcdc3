#!/usr/bin/env bash
# ViT-B/16 training-step A/B on one GPU: each variant in its own process (XLA_FLAGS are read
# once per process, and timm's peer gets the whole memory), all in one run so the numbers
# are comparable. One JSON line per measurement goes to OUT (default gpu_vit_variants.jsonl);
# stdout has the progress. About 4 minutes on an H100; variants that would start after
# BUDGET_S seconds (default 450) are skipped, so the run fits a short lease.
#
#   bash bench/gpu_vit_variants.sh [OUT] [PROFILE_DIR]
#
# Batch 512, bf16 compute, attention='cudnn', 30 timed steps. Variants:
#   ours            the default (the token stream padded to 200 once, in the encoder)
#   per_layer_pad   token_multiple=1: q/k/v padded 197 -> 200 in every layer (session 3)
#   cublaslt        ours with XLA_FLAGS=--xla_gpu_enable_cublaslt=true
#   profile         (with PROFILE_DIR) kernel time by class of ours, HLO, per-kernel ms
#   timm            timm's vit_base_patch16_224, eager, bf16 autocast, fused AdamW
# Tried and dropped (docs/benchmarks.md): biases inside the matmuls and a GELU keeping its
# input (session 8, commit ee6c53b has that code and its variant list),
# --xla_gpu_triton_gemm_any=true, --xla_gpu_cudnn_gemm_fusion_level=2.
set -u
OUT=${1:-gpu_vit_variants.jsonl}
PROFILE_DIR=${2:-}
BUDGET_S=${BUDGET_S:-450}
SIZE=(--attention cudnn --vit-batch 512)
# QUICK=1: a smoke test of the script anywhere (ViT-Ti at 64 px, batch 8, XLA attention).
[ -n "${QUICK:-}" ] && SIZE=(--quick --attention xla --vit-batch 8)
COMMON=(--sections vit_train "${SIZE[@]}" --steps 30 --out "$OUT")
START=$(date +%s)
run() {  # name, then the command (env assignments first, as for env(1))
  local name=$1
  shift
  if (( $(date +%s) - START > BUDGET_S )); then
    echo "## $name skipped: over the ${BUDGET_S} s budget"
    return
  fi
  echo "## $name ($(date -u +%H:%M:%S))"
  env "$@" || echo "## $name exited $?"
}
# JAX allocates on demand, the same for every variant.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
cd "$(dirname "$0")/.."
python bench/gpu_suite.py --sections env --out "$OUT" ${QUICK:+--quick}
run ours timeout 150 python bench/gpu_suite.py "${COMMON[@]}" --no-peer
run timm timeout 150 python bench/gpu_suite.py "${COMMON[@]}" --peer-only
run per_layer_pad timeout 150 python bench/gpu_suite.py "${COMMON[@]}" --no-peer \
  --token-multiple 1
run cublaslt XLA_FLAGS=--xla_gpu_enable_cublaslt=true \
  timeout 150 python bench/gpu_suite.py "${COMMON[@]}" --no-peer
if [ -n "$PROFILE_DIR" ]; then
  run profile timeout 150 python bench/gpu_suite.py --sections vit_profile "${SIZE[@]}" \
    --profile-dir "$PROFILE_DIR" --out "$OUT"
fi
echo "## done after $(( $(date +%s) - START )) s"
python - "$OUT" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
  r = json.loads(line)
  if r.get('section') != 'vit_train':
    continue
  what = (r.get('impl', '')[:22] + ' multiple=' + str(r.get('token_multiple')) + ' '
          + r.get('xla_flags', ''))
  if 'error' in r:
    print(f"{what:70s} ERROR {r['error'][:200]}")
  else:
    print(f"{what:70s} {r['step_s'] * 1e3:7.1f} ms {r['img_per_s']:7.0f} img/s "
          f"MFU {r['mfu_datasheet']:.1%}")
EOF
