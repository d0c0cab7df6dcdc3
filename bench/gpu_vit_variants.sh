#!/usr/bin/env bash
# ViT-B/16 training-step A/B on one GPU: each variant in its own process (XLA_FLAGS are read
# once per process, and timm's peer gets the whole memory), all in one run so the numbers
# are comparable. One JSON line per measurement goes to OUT (default gpu_vit_variants.jsonl);
# stdout has the progress. About 5 minutes on an H100; variants that would start after
# BUDGET_S seconds (default 450) are skipped, so the run fits a short lease.
#
#   bash bench/gpu_vit_variants.sh [OUT] [PROFILE_DIR]
#
# Batch 512, bf16 compute, attention='cudnn', 30 timed steps. Variants, most telling first:
#   ours                 the default: biases added after their matmuls
#   bias_qkv_mlpin_gelu  VisionTransformer(bias_in_matmul=('qkv', 'mlp_in')): the q/k/v and
#                        the first MLP matmul add their biases themselves
#                        (vit_jax.ops.matmul_bias), and the GELU keeps only its input for the
#                        backward (ops.gelu_keeping_input: that input is the matmul's output)
#   bias_qkv_mlpin       the same without the GELU change
#   bias_all_gelu        bias_qkv_mlpin_gelu plus the second MLP matmul
#   bias_qkv             only q/k/v (to split the gain between attention and MLP)
#   profile              (with PROFILE_DIR) kernel time by class of bias_qkv_mlpin_gelu, the
#                        optimised HLO and per-kernel ms
#   timm                 timm's vit_base_patch16_224, eager, bf16 autocast, fused AdamW
# Session 8 also tried --xla_gpu_triton_gemm_any=true and --xla_gpu_enable_cublaslt=true
# (docs/benchmarks.md): no gain.
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
run bias_qkv_mlpin_gelu timeout 150 python bench/gpu_suite.py "${COMMON[@]}" --no-peer \
  --bias-in-matmul qkv mlp_in --gelu-keeping-input
run bias_qkv_mlpin timeout 150 python bench/gpu_suite.py "${COMMON[@]}" --no-peer \
  --bias-in-matmul qkv mlp_in
run bias_all_gelu timeout 150 python bench/gpu_suite.py "${COMMON[@]}" --no-peer \
  --bias-in-matmul qkv mlp_in mlp_out --gelu-keeping-input
run bias_qkv timeout 150 python bench/gpu_suite.py "${COMMON[@]}" --no-peer \
  --bias-in-matmul qkv
if [ -n "$PROFILE_DIR" ]; then
  run profile timeout 150 python bench/gpu_suite.py --sections vit_profile "${SIZE[@]}" \
    --bias-in-matmul qkv mlp_in --gelu-keeping-input --profile-dir "$PROFILE_DIR" --out "$OUT"
fi
run timm timeout 150 python bench/gpu_suite.py "${COMMON[@]}" --peer-only
echo "## done after $(( $(date +%s) - START )) s"
python - "$OUT" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
  r = json.loads(line)
  if r.get('section') != 'vit_train':
    continue
  what = (r.get('impl', '')[:22] + ' bias=' + ','.join(r.get('bias_in_matmul') or []) + ' '
          + ('gelu_keeping_input ' if r.get('gelu_keeping_input') else '')
          + r.get('xla_flags', ''))
  if 'error' in r:
    print(f"{what:70s} ERROR {r['error'][:200]}")
  else:
    print(f"{what:70s} {r['step_s'] * 1e3:7.1f} ms {r['img_per_s']:7.0f} img/s "
          f"MFU {r['mfu_datasheet']:.1%}")
EOF
