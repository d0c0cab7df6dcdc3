"""vision_core.gpu_target (compiling for an H100 without one), bench/gpu_aot_check.py's
readers of what XLA and ptxas write, and smoke runs of the GPU benches. The compiles
themselves need jax's CUDA plugin (~5 GB, not a project dependency): those tests skip
without it; the rest run anywhere."""

import importlib.util
import re

import jax
import jax.numpy as jnp
import pytest

from bench import gpu_aot_check, igpt_train_step, profile_train_step
from igpt_jax import model as igpt_model
from tests import vit_train_helpers as helpers
from tests.test_vit_model import tiny_config
from vision_core import (flash_attention, fused_mlp, fused_norm, gpu_target, mesh as mesh_lib,
                         optim)
from vision_core.errors import UserInputError
from vit_jax import models_vit, ops, train

HAS_CUDA_PLUGIN = importlib.util.find_spec('jax_cuda12_plugin') is not None


def test_building_for_a_gpu_target_sets_backend_and_sm_count():
  assert gpu_target.backend() == jax.default_backend()
  with gpu_target.building_for('h200'):
    assert gpu_target.backend() == 'gpu'
    assert gpu_target.sm_count() == 132
  assert gpu_target.backend() == jax.default_backend()  # restored on the way out
  with pytest.raises(UserInputError, match=r"GPU target 'a100': expected one of h100, h200"):
    with gpu_target.building_for('a100'):
      pass
  with pytest.raises(UserInputError, match=r"GPU target 'v100'"):
    gpu_target.target_config('v100')


def test_target_config_names_the_hopper_part():
  text = gpu_target.target_config('h100')
  for line in ('core_count: 132', 'shared_memory_per_block_optin: 232448',
               'cuda_compute_capability { major: 9 minor: 0 }',
               'device_description_str: "NVIDIA H100 80GB HBM3"', 'platform_name: "CUDA"'):
    assert line in text
  assert 'memory_bandwidth: 4800000000000' in gpu_target.target_config('h200')


def test_gpu_only_mlp_kernels_pass_their_check_when_building_for_a_gpu():
  """The fused MLP's Triton kernels refuse a CPU backend, unless the program is built for a
  GPU target (then the model traces; compiling it needs the CUDA plugin)."""
  config = tiny_config()
  config.hidden_size, config.transformer.mlp_dim = 64, 256
  model = models_vit.VisionTransformer(num_classes=3, mlp_impl='pallas', **config)
  init = lambda: model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 3)), train=False)
  if jax.default_backend() != 'gpu':
    with pytest.raises(ValueError, match="mlp_impl='pallas' runs on NVIDIA GPUs only"):
      jax.eval_shape(init)
  with gpu_target.building_for('h100'):
    shapes = jax.eval_shape(init)
  assert shapes['params']['head']['kernel'].shape == (64, 3)


def test_abstract_train_state_is_what_create_train_state_makes():
  model = models_vit.VisionTransformer(num_classes=3, **tiny_config())
  schedule = optim.make_schedule(base_lr=0.01, total_steps=10)
  tx = optim.make_optimizer(name='adamw', schedule=schedule, grad_norm_clip=1.0,
                            weight_decay=0.1)
  mesh = mesh_lib.make_mesh((1, 1), jax.devices()[:1])
  abstract, abstract_shardings = train.abstract_train_state(model=model, tx=tx,
                                                            image_shape=(16, 16, 3), mesh=mesh)
  state, shardings = train.create_train_state(model=model, tx=tx, image_shape=(16, 16, 3),
                                              mesh=mesh)
  shape = lambda tree: jax.tree.map(lambda a: (a.shape, a.dtype, a.sharding), tree)
  assert shape(abstract) == shape(state)
  assert abstract_shardings == shardings
  assert all(isinstance(a, jax.ShapeDtypeStruct) for a in jax.tree.leaves(abstract))


@pytest.mark.skipif(HAS_CUDA_PLUGIN, reason='the CUDA plugin is installed here')
def test_compiling_for_a_gpu_without_the_plugin_says_what_to_install():
  with pytest.raises(UserInputError, match=r"compiling for h100 needs jax's CUDA plugin "
                     r"\(pip install 'jax-cuda12-plugin\[with-cuda\]=="):
    gpu_target.compile_only_devices('h100')


def test_blocks_per_sm_follows_the_hopper_occupancy_rules():
  """Reference values worked by hand from the CUDA occupancy rules (registers allocated per
  warp in blocks of 256, 1 KiB of shared memory reserved per block)."""
  # 128 threads x 128 registers = 16,384 per block: 4 fit 65,536; shared 41 KiB: 5.
  assert gpu_aot_check.blocks_per_sm(128, 128, 40960) == 4
  # 181 registers -> 5,792 per warp, 5,888 allocated; x 4 warps = 23,552: 2 fit.
  assert gpu_aot_check.blocks_per_sm(128, 181, 49664) == 2
  # 57 registers are allocated as 64 (2,048 per warp): 16 blocks of 2 warps, not 17.
  assert gpu_aot_check.blocks_per_sm(64, 57, 0) == 16
  # Shared memory bound: 100 KiB + 1 KiB each, 228 KiB per SM: 2.
  assert gpu_aot_check.blocks_per_sm(128, 32, 102400) == 2
  # Thread bound: 1,024 threads, 2,048 per SM.
  assert gpu_aot_check.blocks_per_sm(1024, 16, 0) == 2
  # Block bound: 32 per SM.
  assert gpu_aot_check.blocks_per_sm(32, 16, 0) == 32


def test_thunk_list_and_ptxas_output_are_read():
  thunks = (
      '001: kCustomKernel   [source | next=4 (1)] loop_add_fusion grid: [6, 1, 1] threads: '
      '[128, 1, 1]  shared_memory: 0 bytes\n'
      '002: kGemm [prev=1 (1) | sink] custom-call.3\n'
      '166: kCustomKernel   [prev=165 (1)    | next=167 (1)    ] flash_attention_forward grid:'
      ' [4, 256, 12] threads: [128, 1, 1]  shared_memory: 40960 bytes\n'
      '170: kCustomKernel   [prev=169 (1)    | next=171 (1)    ] mlp_gemm_backward__1 grid:'
      ' [96, 1, 1] threads: [256, 1, 1]  shared_memory: 98304 bytes\n')
  kinds, ours = gpu_aot_check.parse_thunks(thunks)
  assert kinds == {'kCustomKernel': 3, 'kGemm': 1}
  assert ours == {'flash_attention_forward': {'grid': [4, 256, 12], 'threads': 128,
                                              'shared_bytes': 40960},
                  'mlp_gemm_backward__1': {'grid': [96, 1, 1], 'threads': 256,
                                           'shared_bytes': 98304}}
  ptxas = ("ptxas info    : Compiling entry function 'flash_attention_dq' for 'sm_90a'\n"
           'ptxas info    : Function properties for flash_attention_dq\n'
           '    0 bytes stack frame, 8 bytes spill stores, 12 bytes spill loads\n'
           'ptxas info    : Used 146 registers, used 1 barriers\n')
  assert gpu_aot_check.parse_ptxas(ptxas) == {'flash_attention_dq': {
      'registers': 146, 'spill_store_bytes': 8, 'spill_load_bytes': 12}}


def test_fused_mlp_kernels_are_named_as_gemms():
  """Named so that GPU profiles class them as matmuls and gpu_aot_check finds them."""
  shape = lambda *s: jax.ShapeDtypeStruct(s, jnp.bfloat16)
  tiles = fused_mlp.Tiles(block_m=64, block_n=64, block_k=32)
  forward = jax.jit(lambda x, w1, b1: fused_mlp.dense_gelu(x, w1, b1, tiles))
  text = forward.trace(shape(128, 64), shape(64, 128), shape(128)).lower(
      lowering_platforms=('cuda',)).as_text()
  assert 'mlp_gemm_forward' in text
  backward = jax.jit(lambda dy, w2, pre: fused_mlp.gelu_input_grad(dy, w2, pre, tiles))
  text = backward.trace(shape(128, 64), shape(128, 64), shape(128, 128)).lower(
      lowering_platforms=('cuda',)).as_text()
  assert 'mlp_gemm_backward' in text
  assert profile_train_step.kernel_class('mlp_gemm_backward') == 'gemm'


@pytest.mark.parametrize('name, kind', [
    # Kernel names from ViT-B/16 profiles on an H100 (session 18; the long ones cut short).
    ('cudnn_generated_fort_native_sdpa_sm90_flash_bprop_wgmma_f16_knob_26_64x64x64_1x4x1_'
     'cga1x1x1_kernel0_0', 'attention'),
    ('cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x64_4x1x1_'
     'cga1x1x1_kernel0_0', 'attention'),
    ('void cudnn::fusion::compute_dot_do_o_specialized<true, 64>(void const*', 'attention'),
    ('void cudnn::fusion::convert_dq_to_16bits<true>(void const*, void*', 'attention'),
    ('flash_attention_forward', 'attention'),
    ('sm80_xmma_fprop_implicit_gemm_indexed_bf16bf16_bf16f32_f32_nhwckrsc_nhwc_tilesize256x64x32'
     '_stage3_warpsize4x1x1_g1_tensor16x8x16_execute_kernel__5x_cudnn', 'convolution'),
    ('void cutlass__5x_cudnn::Kernel<cutlass_tensorop_bf16_s16816fprop_optimized_bf16_64x128_'
     '32x6_nhwc_align8>', 'convolution'),
    ('void nhwcAddPaddingKernel<__nv_bfloat16, __nv_bfloat16, float, true, '
     '(cudnnKernelDataType_t)0>(int', 'convolution'),
    ('nvjet_sm90_tst_192x192_64x3_2x1_v_bz_coopB_splitK_NTN', 'gemm'),
    ('input_add_reduce_fusion_8', 'reduction fusion'),
    ('loop_convert_multiply_fusion_11', 'elementwise fusion'),
    ('input_transpose_fusion_71', 'copy/transpose'),
    ('layer_norm_add_forward', 'layer norm (ours)'),  # vision_core.fused_norm, not XLA's
    ('layer_norm_backward', 'layer norm (ours)'),
])
def test_profile_kernel_classes(name, kind):
  """cuDNN's convolution kernels carry 'cudnn' in their names like its attention kernels,
  and the profile must not count the patch embedding as attention."""
  assert profile_train_step.kernel_class(name) == kind


@pytest.mark.skipif(not HAS_CUDA_PLUGIN, reason="needs jax's CUDA plugin (compile only)")
@pytest.mark.parametrize('packed', [False, True])
def test_flash_attention_compiles_for_h100_without_spills(packed):
  """The whole GPU pipeline down to ptxas, at ViT-B/16's shapes, q, k, v as three arrays
  or packed in one (attention_kvq): three kernels on Hopper's warpgroup matmuls, none
  spilling registers, each with two or more programs per SM."""
  device = gpu_target.compile_only_devices('h100')[0]
  if packed:
    args = [gpu_aot_check.on_device(device, (8, 197, 3, 12, 64), jnp.bfloat16)]
    attention = lambda kvq: flash_attention.attention_kvq(kvq, 197)
  else:
    args = [gpu_aot_check.on_device(device, (8, 197, 12, 64), jnp.bfloat16)] * 3
    attention = lambda q, k, v: flash_attention.attention(q, k, v, 197)
  loss = lambda *a: jnp.sum(attention(*a).astype(jnp.float32))
  report = gpu_aot_check.compile_report(jax.grad(loss, tuple(range(len(args)))), args, 'h100')
  kernels = report['kernels']
  assert sorted(kernels) == ['flash_attention_dkv' + ('_packed' if packed else ''),
                             'flash_attention_dq', 'flash_attention_forward']
  for info in kernels.values():
    assert info['grid'] == [4, 8, 12] and info['threads'] == 128
    assert info['registers'] > 0 and info['spill_store_bytes'] == 0
    assert info['blocks_per_sm'] >= 2
    assert info['wgmma'] > 0


@pytest.mark.skipif(not HAS_CUDA_PLUGIN, reason="needs jax's CUDA plugin (compile only)")
def test_fused_norm_kernels_compile_for_h100_without_spills():
  """vision_core.fused_norm's kernels down to ptxas at a ViT-B/16 layer's shape (8 images,
  197 tokens, width 768 in three 256-column chunks; bias included): no spills, and several
  programs per SM (the kernels are memory-bound: occupancy keeps loads in flight)."""
  device = gpu_target.compile_only_devices('h100')[0]
  x = gpu_aot_check.on_device(device, (8, 197, 768), jnp.bfloat16)
  bias = gpu_aot_check.on_device(device, (768,), jnp.bfloat16)

  def loss(x, y, bias):
    s, xn = fused_norm.add_normalize(x, y, bias, impl='pallas')
    return jnp.sum(s.astype(jnp.float32)) + jnp.sum(jnp.square(xn.astype(jnp.float32)))
  with gpu_target.building_for('h100'):
    report = gpu_aot_check.compile_report(jax.grad(loss, (0, 1, 2)), (x, x, bias), 'h100')
  kernels = report['kernels']
  assert sorted(kernels) == ['layer_norm_add_forward', 'layer_norm_backward']
  for info in kernels.values():
    assert info['grid'] == [8 * 197 // fused_norm.TILES.rows, 1, 1]
    assert info['registers'] > 0 and info['spill_store_bytes'] == 0
    assert info['blocks_per_sm'] >= 4


@pytest.mark.skipif(not HAS_CUDA_PLUGIN, reason="needs jax's CUDA plugin (compile only)")
def test_fsdp_tp_train_step_compiles_for_eight_h100s():
  """A (4, 2) data x model mesh of compile-only H100s: the sharded step lowers to NCCL
  collectives (what a multi-GPU run needs), with the parameters split as the rules say."""
  mesh = mesh_lib.make_mesh((4, 2), gpu_target.compile_only_devices('h100', 8))
  config = tiny_config()
  config.hidden_size, config.transformer.mlp_dim = 128, 256  # MLP kernels over fsdp's minimum
  model = models_vit.VisionTransformer(num_classes=10, dtype=jnp.bfloat16, **config)
  text, state = helpers.train_step_hlo(model, mesh, batch=16, side=16, strategy='fsdp_tp')
  ops = set(re.findall(r' (all-reduce|all-gather|reduce-scatter)(?:-start)?\(', text))
  assert {'all-reduce', 'all-gather'} <= ops, ops  # gradients summed, fsdp params gathered
  mlp_kernel = state.params['Transformer']['encoderblock_0']['MlpBlock_0']['Dense_0']['kernel']
  assert mlp_kernel.sharding.spec == jax.sharding.PartitionSpec('data', 'model')


@pytest.mark.skipif(not HAS_CUDA_PLUGIN, reason="needs jax's CUDA plugin (compile only)")
def test_our_kernels_run_on_each_devices_shard_on_eight_h100s():
  """Flash attention and the fused MLP in a data-parallel train step on 8 compile-only
  H100s: no all-gathers at all (each kernel runs on its device's share of the batch; before
  vision_core.pallas_sharding every device gathered q/k/v and the MLP's rows whole). The
  patch embedding is the matmul, whose output layout vision_core.layouts pins per device."""
  mesh = mesh_lib.make_mesh((8, 1), gpu_target.compile_only_devices('h100', 8))
  config = tiny_config()
  config.hidden_size, config.transformer.mlp_dim = 128, 256  # MLP kernels' least shapes
  with gpu_target.building_for('h100'):
    model = models_vit.VisionTransformer(num_classes=10, dtype=jnp.bfloat16,
                                         attention='pallas', mlp_impl='pallas',
                                         patch_embedding='matmul', **config)
    text, _ = helpers.train_step_hlo(model, mesh, batch=64, side=16)
  assert 'flash_attention_dkv_packed' in text and 'mlp_gemm_backward' in text
  assert re.findall(r'= (\S+) all-gather', text) == []
  assert ' all-reduce' in text or 'all-reduce-start' in text  # the gradients are summed


def test_igpt_train_step_bench_compares_both_attentions():
  """bench/igpt_train_step.py's GPU comparison, run small with interpreted kernels (any
  host): the same first steps with either attention; and its FLOP count: iGPT-S has 24
  blocks of 12 D^2 matmul weights plus the 512 x D output head."""
  rows = igpt_train_step.main(['--size', 'testing', '--image', '8', '--batch', '2', '--steps',
                               '1', '--attention', 'einsum', 'pallas_interpret'])
  assert [r['attention'] for r in rows] == ['einsum', 'pallas_interpret']
  assert all(r['step_s'] > 0 and r['tokens'] == 64 for r in rows)
  assert rows[0]['bits_per_dim'] == pytest.approx(rows[1]['bits_per_dim'], rel=1e-4)
  model = igpt_model.ImageGPT(**igpt_model.get_size('S'), n_ctx=1024)
  params = jax.eval_shape(lambda: igpt_model.init_params(model, jax.random.key(0)))
  assert igpt_train_step.matmul_params(params) == 24 * 12 * 512**2 + 512 * 512


@pytest.mark.skipif(not HAS_CUDA_PLUGIN, reason="needs jax's CUDA plugin (compile only)")
@pytest.mark.parametrize('pinned', [True, False])
def test_matmul_patch_embedding_keeps_the_residual_stream_row_major(monkeypatch, pinned):
  """Compiled for an H100, the train step with the patch embedding as a matmul keeps the
  token stream `[B, N, D]` row-major, as with the convolution: no array of the stream's
  size in another axis order. Unpinned (the control), XLA lays the stream out batch-minor
  and transposes it at every residual add (13 ms per ViT-B/16 step on an H100, session
  18). Shapes at which the unpinned compile shows it: 257 tokens of width 64, batch 32."""
  if not pinned:
    monkeypatch.setattr(ops, 'row_major', lambda x: x)
  mesh = mesh_lib.make_mesh((1, 1), gpu_target.compile_only_devices('h100', 1))
  config = tiny_config()
  config.hidden_size, config.transformer.mlp_dim = 64, 128
  batch_size, side = 32, 64
  with gpu_target.building_for('h100'):
    model = models_vit.VisionTransformer(num_classes=10, dtype=jnp.bfloat16,
                                         patch_embedding='matmul', **config)
    text, _ = helpers.train_step_hlo(model, mesh, batch=batch_size, side=side)
  tokens = (side // 4) ** 2 + 1
  assert f'[{batch_size},{tokens},64]' in text
  permuted = gpu_aot_check.permuted_stream_arrays(text, batch_size, (tokens,), 64)
  if pinned:
    assert permuted == 0
  else:
    assert permuted > 20  # the control: the check sees what the pin prevents


def test_memory_passes_count_xla_fusions_but_not_matmuls_or_custom_calls():
  hlo = """
HloModule m

%fused_add (p0: bf16[4,8], p1: bf16[4,8]) -> bf16[4,8] {
  ROOT %a = bf16[4,8]{1,0} add(bf16[4,8]{1,0} %p0, bf16[4,8]{1,0} %p1)
}

ENTRY %main (x: bf16[4,8], w: bf16[8,8]) -> f32[4] {
  %x = bf16[4,8]{1,0} parameter(0)
  %w = bf16[8,8]{1,0} parameter(1)
  %gemm_fusion_dot.1 = bf16[4,8]{1,0} fusion(bf16[4,8]{1,0} %x, bf16[8,8]{1,0} %w), kind=kCustom
  %loop_add_fusion = bf16[4,8]{1,0} fusion(bf16[4,8]{1,0} %gemm_fusion_dot.1, bf16[4,8]{1,0} %x), kind=kLoop, calls=%fused_add
  %ours = (bf16[4,8]{1,0}, f32[4]{0}) custom-call(bf16[4,8]{1,0} %loop_add_fusion), custom_call_target="__gpu$xla.gpu.triton"
  %gte = f32[4]{0} get-tuple-element(%ours), index=1
  ROOT %input_reduce_fusion = f32[4]{0} fusion(f32[4]{0} %gte), kind=kInput
}
"""
  # The add reads two [4, 8] bf16 arrays and writes one (192 bytes); the reduction reads
  # and writes [4] float32 (32 bytes); the matmul and the custom call are not counted.
  assert gpu_aot_check.memory_passes_gb(hlo) == pytest.approx(224 / 1e9)


def test_permuted_stream_arrays_counts_the_stream_in_another_axis_order():
  hlo = '''
  %a = bf16[8,197,64]{2,1,0} add(...)
  %b = bf16[197,64,8]{2,1,0} transpose(bf16[8,197,64]{2,1,0} %a)
  %c = f32[64,8,197]{2,1,0} fusion(bf16[197,64,8]{2,1,0} %b)
  %d = f32[4,8,64]{2,1,0} fusion(...)
  %e = bf16[8,200,64]{2,1,0} pad(...)'''
  assert gpu_aot_check.permuted_stream_arrays(hlo, 8, (197,), 64) == 3
  assert gpu_aot_check.permuted_stream_arrays(hlo, 8, (197, 200), 64) == 3
  assert gpu_aot_check.permuted_stream_arrays(hlo, 8, (196,), 64) == 0
