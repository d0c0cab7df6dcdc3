#!/usr/bin/env bash
# ViT-B/16 training-step A/B on one GPU: each variant in its own process (XLA_FLAGS are read
# once per process, and timm's peer gets the whole memory), all in one run so the numbers
# are comparable. One JSON line per measurement goes to OUT (default gpu_vit_variants.jsonl);
# stdout has the progress. About 8-9 minutes on an H100; variants that would start after
# BUDGET_S seconds (default 360) are skipped, so the run fits a short lease. VARIANTS (a
# space-separated list of the names below; default all) runs only those, so a lease can go
# to the candidates still open. MLP_TILES (fused_mlp's --mlp-tiles, e.g. a past run's
# OUT.best_tiles) skips mlp_kernels and uses those tiles.
#
#   bash bench/gpu_vit_variants.sh [OUT] [PROFILE_DIR]     # -h, --help: this text
#   MLP_TILES=mosaic:128,128,64,3/128,128,64,8,3 VARIANTS="ours flash fused_mlp \
#     patch_matmul fused_norm all profile" BUDGET_S=420 bash bench/gpu_vit_variants.sh OUT DIR
#
# Before a lease, bench/gpu_aot_check.py compiles every variant below for an H100 on a CPU
# host (no GPU): compile errors, register spills and shared-memory overflows show there.
#
# Batch 512, bf16 compute, attention='cudnn', 30 timed steps. Variants:
#   mlp_kernels     bench/gpu_mlp_kernels.py: vision_core.fused_mlp's kernels against XLA
#                   for several tile shapes; the fastest go to OUT.best_tiles
#   ours            the default (the token stream padded to 200 once, in the encoder)
#   flash           ours with attention='pallas': vision_core.flash_attention's Triton
#                   kernels, the 197 tokens read in place (no padding), q/k/v biases added
#                   in the kernels, 64-row tiles with a 16-row last one, 4 warps, 3 stages
#                   (the default tiles); q, k, v from one matmul, packed [B, N, 3, H, Dh]
#                   (attention_kvq), its gradient written in place
#   flash_s2        flash with 2 stages (compiled for an H100, packed: dq takes 147
#                   registers and 3 programs per SM against 172 and 2 with 3 stages)
#   flash_unpacked  flash with q, k, v from three matmuls (session 19's measured kernels:
#                   132.5 ms against cuDNN's 136.8; 2 stages 132.8, a whole last tile 135.6)
#   fused_mlp       ours with mlp_impl='pallas' and the fastest kernels of mlp_kernels,
#                   Triton's or Mosaic GPU's (XLA's forward where it was faster; in session
#                   13 Triton's fused forward was slower, its matmul at half cuBLAS's speed)
#   patch_matmul    ours with patch_embedding='matmul' (the patch embedding as one matmul;
#                   the strided convolution's forward runs on an sm80 implicit-GEMM kernel at
#                   ~28 TFLOP/s: 4.2 ms, plus 0.8 ms for its weight gradient, session 13).
#                   Session 18 measured it 13 ms slower: XLA laid the residual stream out
#                   as [N, D, B]. Its layout is now pinned row-major (vision_core.layouts;
#                   no convolution, no batch-minor stream; 3.4 ms faster on an H200, session 28)
#   fused_norm      ours with norm_impl='pallas': vision_core.fused_norm's kernels do each
#                   residual add and the LayerNorm after it in one pass, forward and
#                   backward (compiled for an H100, XLA's memory passes per step: 124.3 ->
#                   81.5 GB alone, 54.0 -> 9.5 GB with the other kernels, which themselves
#                   move 29 GB; 3.0 ms faster on an H200, session 28). fused_norm_16:
#                   16 rows per program, not 8
#   all             every change above that beat ours alone (the fastest flash tiles), where
#                   two or more did
#   profile         (with PROFILE_DIR) kernel time by class of those changes together (ours
#                   where none won), HLO, per-kernel ms
#   timm            timm's vit_base_patch16_224, eager, bf16 autocast, fused AdamW
# Tried and dropped (docs/benchmarks.md): q/k/v padded in every layer (token_multiple=1),
# --xla_gpu_enable_cublaslt=true, biases inside the matmuls and a GELU keeping its input
# (session 8, commit ee6c53b has that code and its variant list),
# --xla_gpu_triton_gemm_any=true, --xla_gpu_cudnn_gemm_fusion_level=2,
# --xla_gpu_cublas_fallback=false (does not compile: no Triton config for one dot).
set -u
case ${1:-} in
  -h | --help)
    # The usage is the header comment above: every line from the second up to `set -u`.
    sed -n '2,/^set -u$/{/^#/s/^# \{0,1\}//p;}' "$0"
    exit 0
    ;;
esac
if (($# > 2)); then
  echo "$0: error: expected at most OUT and PROFILE_DIR, got $# arguments (see --help)" >&2
  exit 2
fi
# A word starting with '-' is a mistyped flag, not a path: taken as OUT it would start the
# whole run and `rm -f` a file named after it.
for arg in "$@"; do
  if [[ $arg == -* ]]; then
    echo "$0: error: unknown flag '$arg': the arguments are [OUT] [PROFILE_DIR]" \
      "(a path starting with '-': write ./$arg; see --help)" >&2
    exit 2
  fi
done
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
cd "$(dirname "$0")/.." || exit 1
python bench/gpu_suite.py --sections env --out "$OUT" ${QUICK:+--quick}
BEST="$OUT.best_tiles"
rm -f "$BEST"
if [ -n "${MLP_TILES:-}" ]; then
  echo "## mlp_kernels skipped: MLP_TILES=$MLP_TILES given"
  echo "$MLP_TILES" > "$BEST"
else
  run mlp_kernels timeout 150 python bench/gpu_mlp_kernels.py --out "$OUT" --best "$BEST" \
    ${QUICK:+--quick}
fi
run ours timeout 150 python bench/gpu_suite.py "${COMMON[@]}" --no-peer
FLASH=(--attention pallas --token-multiple 1)
[ -n "${QUICK:-}" ] && FLASH=(--attention pallas_interpret --token-multiple 1)
run flash timeout 150 python bench/gpu_suite.py "${COMMON[@]}" --no-peer "${FLASH[@]}" \
  --flash-tiles 64,64,64,64,4,3
run flash_s2 timeout 150 python bench/gpu_suite.py "${COMMON[@]}" --no-peer "${FLASH[@]}" \
  --flash-tiles 64,64,64,64,4,2
run flash_unpacked timeout 150 python bench/gpu_suite.py "${COMMON[@]}" --no-peer \
  "${FLASH[@]}" --flash-tiles 64,64,64,64,4,3 --flash-unpacked
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
NORM=(--norm-impl pallas)
[ -n "${QUICK:-}" ] && NORM=(--norm-impl pallas_interpret)
run fused_norm timeout 150 python bench/gpu_suite.py "${COMMON[@]}" --no-peer "${NORM[@]}" \
  --norm-tiles 8,4
run fused_norm_16 timeout 150 python bench/gpu_suite.py "${COMMON[@]}" --no-peer \
  "${NORM[@]}" --norm-tiles 16,4
# The variants that beat ours (with QUICK: every one that ran), one line each: 'flash TILES'
# (the fastest flash variant: its tiles, and --flash-unpacked where that was faster),
# 'fused_mlp', 'patch_matmul', 'fused_norm TILES'.
WINNERS=$(python - "$OUT" "${QUICK:-}" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
rows = [r for r in rows if r.get('section') == 'vit_train' and 'step_s' in r
        and not r.get('xla_flags') and r['impl'].startswith('ours')]
def change(r):  # what the row changes from ours, the default
  if r.get('flash_tiles'):
    return 'flash ' + r['flash_tiles'] + (' --flash-unpacked' if r.get('flash_unpacked') else '')
  if r.get('mlp_impl') != 'xla':
    return 'fused_mlp'
  if r.get('norm_impl', 'xla') != 'xla':
    return 'fused_norm ' + str(r.get('norm_tiles'))
  return 'patch_matmul' if r.get('patch_embedding') == 'matmul' else None
ours = min((r['step_s'] for r in rows if change(r) is None), default=None)
best = {}
for r in sorted(rows, key=lambda r: r['step_s']):
  what = change(r)
  if what and (sys.argv[2] or (ours and r['step_s'] < ours)):
    best.setdefault(what.split()[0], what)
print('\n'.join(best.values()))
EOF
)
BEAT=${WINNERS:-none}
echo "## beat ours: ${BEAT//$'\n'/ }"
ALL=()
while read -r what tiles; do
  case $what in
    flash) read -r -a extra <<< "$tiles"; ALL+=("${FLASH[@]}" --flash-tiles "${extra[@]}") ;;
    fused_mlp) ALL+=("${MLP[@]}" --mlp-tiles "$(cat "$BEST")") ;;
    patch_matmul) ALL+=(--patch-embedding matmul) ;;
    fused_norm) ALL+=("${NORM[@]}" --norm-tiles "$tiles") ;;
  esac
done <<< "$WINNERS"
if (( $(grep -c . <<< "$WINNERS") > 1 )); then
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
          + ' flash=' + str(r.get('flash_tiles')) + ' norm=' + str(r.get('norm_impl'))
          + ' ' + str(r.get('norm_tiles') or '') + ' ' + r.get('xla_flags', ''))
  if 'error' in r:
    print(f"{what:70s} ERROR {r['error'][:200]}")
  else:
    print(f"{what:70s} {r['step_s'] * 1e3:7.1f} ms {r['img_per_s']:7.0f} img/s "
          f"MFU {r['mfu_datasheet']:.1%}")
EOF
