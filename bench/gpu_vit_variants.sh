#!/usr/bin/env bash
# ViT-B/16 training-step A/B on one GPU: each variant in its own process (XLA_FLAGS are read
# once per process, and timm's peer gets the whole memory), all in one run so the numbers
# are comparable. One JSON line per measurement goes to OUT (default gpu_vit_variants.jsonl);
# stdout has the progress. About 8-9 minutes on an H100; variants that would start after
# BUDGET_S seconds (default 360) are skipped, so the run fits a short lease. VARIANTS (a
# space-separated list of the names below; default all) runs only those, so a lease can go
# to the candidates still open.
#
#   bash bench/gpu_vit_variants.sh [OUT] [PROFILE_DIR]
#   VARIANTS="ours flash patch_matmul all profile" bash bench/gpu_vit_variants.sh OUT DIR
#
# Before a lease, bench/gpu_aot_check.py compiles every variant below for an H100 on a CPU
# host (no GPU): compile errors, register spills and shared-memory overflows show there.
#
# Batch 512, bf16 compute, attention='cudnn', 30 timed steps. Variants:
#   mlp_kernels     bench/gpu_mlp_kernels.py: vision_core.fused_mlp's kernels against XLA
#                   for several tile shapes; the fastest go to OUT.best_tiles
#   ours            the default (the token stream padded to 200 once, in the encoder)
#   flash, flash_whole  ours with attention='pallas': vision_core.flash_attention's
#                   Triton kernels, the 197 tokens read in place (no padding); 64-row
#                   tiles, 4 warps, 3 stages. flash shrinks the last, partial tile to 16
#                   rows (the default); flash_whole keeps it at 64 (min_tail=64: session
#                   18's kernels, 134.4 ms against cuDNN's 134.9). cuDNN's kernels take
#                   20.1 ms per step with their dO.O and dq conversions, ours 21.9 ms
#                   (session 18); 128-row tiles were 2.5 ms slower (session 18)
#   fused_mlp       ours with mlp_impl='pallas' and the fastest kernels of mlp_kernels,
#                   Triton's or Mosaic GPU's (XLA's forward where it was faster; in session
#                   13 Triton's fused forward was slower, its matmul at half cuBLAS's speed)
#   patch_matmul    ours with patch_embedding='matmul' (the patch embedding as one matmul;
#                   the strided convolution's forward runs on an sm80 implicit-GEMM kernel at
#                   ~28 TFLOP/s: 4.2 ms, plus 0.8 ms for its weight gradient, session 13)
#   all             patch_matmul plus fused_mlp (where mlp_kernels found working kernels)
#                   plus the faster flash tiles (where flash beat ours)
#   profile         (with PROFILE_DIR) kernel time by class of `all`, HLO, per-kernel ms
#   timm            timm's vit_base_patch16_224, eager, bf16 autocast, fused AdamW
# Tried and dropped (docs/benchmarks.md): q/k/v padded in every layer (token_multiple=1),
# --xla_gpu_enable_cublaslt=true, biases inside the matmuls and a GELU keeping its input
# (session 8, commit ee6c53b has that code and its variant list),
# --xla_gpu_triton_gemm_any=true, --xla_gpu_cudnn_gemm_fusion_level=2,
# --xla_gpu_cublas_fallback=false (does not compile: no Triton config for one dot).
set -u
OUT=${1:-gpu_vit_variants.jsonl}
PROFILE_DIR=${2:-}
BUDGET_S=${BUDGET_S:-360}
SIZE=(--attention cudnn --vit-batch 512)
# QUICK=1: a smoke test of the script anywhere (ViT-Ti at 64 px, batch 8, XLA attention).
[ -n "${QUICK:-}" ] && SIZE=(--quick --attention xla --vit-batch 8)
COMMON=(--sections vit_train "${SIZE[@]}" --steps 30 --out "$OUT")
START=$(date +%s)
run() {  # name, then the command (env assignments first, as for env(1))
  local name=$1
  shift
  if [ -n "${VARIANTS:-}" ] && [[ " $VARIANTS " != *" $name "* ]]; then
    echo "## $name skipped: not in VARIANTS"
    return
  fi
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
BEST="$OUT.best_tiles"
rm -f "$BEST"
run mlp_kernels timeout 150 python bench/gpu_mlp_kernels.py --out "$OUT" --best "$BEST" \
  ${QUICK:+--quick}
run ours timeout 150 python bench/gpu_suite.py "${COMMON[@]}" --no-peer
FLASH=(--attention pallas --token-multiple 1)
[ -n "${QUICK:-}" ] && FLASH=(--attention pallas_interpret --token-multiple 1)
run flash timeout 150 python bench/gpu_suite.py "${COMMON[@]}" --no-peer "${FLASH[@]}" \
  --flash-tiles 64,64,64,64,4,3
run flash_whole timeout 150 python bench/gpu_suite.py "${COMMON[@]}" --no-peer "${FLASH[@]}" \
  --flash-tiles 64,64,64,64,4,3,64
MLP=(--mlp-impl pallas)
[ -n "${QUICK:-}" ] && MLP=(--mlp-impl pallas_interpret)
if [ -s "$BEST" ]; then
  run fused_mlp timeout 150 python bench/gpu_suite.py "${COMMON[@]}" --no-peer "${MLP[@]}" \
    --mlp-tiles "$(cat "$BEST")"
else
  echo "## fused_mlp skipped: no working kernels from mlp_kernels"
fi
run patch_matmul timeout 150 python bench/gpu_suite.py "${COMMON[@]}" --no-peer \
  --patch-embedding matmul
# The flash tiles of the fastest flash run, where it beat ours (any working one with QUICK).
FLASH_BEST=$(python - "$OUT" "${QUICK:-}" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
rows = [r for r in rows if r.get('section') == 'vit_train' and 'step_s' in r
        and r.get('mlp_impl') == 'xla' and r.get('patch_embedding') == 'conv']
ours = [r['step_s'] for r in rows if not r.get('flash_tiles')]
flash = sorted((r['step_s'], r['flash_tiles']) for r in rows if r.get('flash_tiles'))
if flash and (sys.argv[2] or (ours and flash[0][0] < min(ours))):
  print(flash[0][1])
EOF
)
ALL=(--patch-embedding matmul)
[ -s "$BEST" ] && ALL+=("${MLP[@]}" --mlp-tiles "$(cat "$BEST")")
[ -n "$FLASH_BEST" ] && ALL+=("${FLASH[@]}" --flash-tiles "$FLASH_BEST")
if (( ${#ALL[@]} > 2 )); then
  run all timeout 150 python bench/gpu_suite.py "${COMMON[@]}" --no-peer "${ALL[@]}"
fi
if [ -n "$PROFILE_DIR" ]; then
  run profile timeout 150 python bench/gpu_suite.py --sections vit_profile "${SIZE[@]}" \
    "${ALL[@]}" --profile-dir "$PROFILE_DIR" --out "$OUT"
fi
# Last: the peer was measured in sessions 3, 5, 8 and 13 (1.40x in 13).
run timm timeout 150 python bench/gpu_suite.py "${COMMON[@]}" --peer-only
echo "## done after $(( $(date +%s) - START )) s"
python - "$OUT" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
  r = json.loads(line)
  if 'kernel' in r:
    what = f"{r['kernel']} {r['impl']} {r.get('tiles', '')}"
    if 'error' in r:
      print(f"{what:70s} ERROR {r['error'][-300:]}")
    else:
      print(f"{what:70s} {r['ms']:7.3f} ms  rel_err {r.get('rel_err', '')}")
    continue
  if r.get('section') != 'vit_train':
    continue
  what = (r.get('impl', '').replace('ours jax ', '') + ' mlp=' + str(r.get('mlp_impl'))
          + ' ' + str(r.get('mlp_tiles') or '') + ' patch=' + str(r.get('patch_embedding'))
          + ' flash=' + str(r.get('flash_tiles')) + ' ' + r.get('xla_flags', ''))
  if 'error' in r:
    print(f"{what:70s} ERROR {r['error'][:200]}")
  else:
    print(f"{what:70s} {r['step_s'] * 1e3:7.1f} ms {r['img_per_s']:7.0f} img/s "
          f"MFU {r['mfu_datasheet']:.1%}")
EOF
