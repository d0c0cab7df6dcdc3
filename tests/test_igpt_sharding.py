"""Image GPT training over other meshes and sharding strategies: the arrays are split as the
strategy says, and training computes what it computes on one device."""

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from igpt_jax import checkpoint, train
from tests.test_igpt_train import image_folder, tiny_config
from vision_core import mesh as mesh_lib, metrics_log
from vision_core.errors import UserInputError

RUNS = [((1, 1), 'replicated'), ((4, 2), 'fsdp_tp'), ((2, 4), 'tp')]


def _config(tmp_path, mesh, strategy, **overrides):
  if not (tmp_path / 'data').exists():
    image_folder(tmp_path / 'data', per_class=8)
    np.save(tmp_path / 'palette.npy',
            np.random.default_rng(0).uniform(-1, 1, (512, 3)).astype(np.float32))
  return tiny_config(tmp_path / 'data', mesh=mesh, sharding=strategy, batch_size=16,
                     total_steps=3, log_every=1, eval_every=0, checkpoint_every=0,
                     eval_examples=0, palette=str(tmp_path / 'palette.npy'),
                     warmup_steps=1, sample_grid=False, **overrides)


def test_the_state_is_split_as_the_strategy_says(tmp_path):
  config = _config(tmp_path, (4, 2), 'fsdp_tp')
  model = train.build_model(config)
  params = train.initial_params(config, model, jax.random.PRNGKey(0))
  mesh = mesh_lib.make_config_mesh(config.mesh)
  state, shardings = train.place_state(config, params, train.make_optimizer(config), mesh)
  specs = jax.tree.map(lambda x: x.sharding.spec, state)
  assert jax.tree.map(lambda s: s.spec, shardings) == specs
  # Heads over 'model' (4 heads, 2 devices); the hidden axis of the MLP over 'model' and
  # its other axis over 'data' (c_fc is 32 x 128 = 2**12 values: below FSDP's 2**14, kept
  # whole there); the [512, 32] embeddings (2**14 values) over 'data'; gains replicated.
  assert specs['params']['h0']['attn']['q_proj'] == P('model', None, None)
  assert specs['params']['h1']['attn']['c_proj'] == P('model', None, None)
  assert specs['params']['h0']['mlp']['c_fc']['w'] == P(None, 'model')
  assert specs['params']['h0']['mlp']['c_proj']['w'] == P('model', None)
  assert specs['params']['wte'] == P('data', None)
  assert specs['params']['h0']['ln_1']['g'] in (P(), P(None))
  # AdamW's moments are split like the parameters they follow.
  mu = [s for s in jax.tree.leaves(specs['opt_state'], is_leaf=lambda x: isinstance(x, P))
        if s == P('model', None, None)]
  assert len(mu) == 2 * 2 * 4  # mu and nu of q, k, v, c_proj in 2 blocks


def test_every_mesh_and_strategy_trains_like_one_device(tmp_path):
  runs = {}
  for mesh, strategy in RUNS:
    workdir = tmp_path / f'{strategy}_{mesh[0]}x{mesh[1]}'
    result = train.train_and_evaluate(_config(tmp_path, mesh, strategy), workdir)
    rows = [r for r in metrics_log.read_jsonl(workdir / 'metrics.jsonl') if r['split'] == 'train']
    params, _ = checkpoint.load(workdir / 'params.npz')
    runs[mesh, strategy] = ([r['step'] for r in rows],
                            np.array([[r['bits_per_dim'], r['grad_norm']] for r in rows]),
                            result['test']['bits_per_dim'], params)
  steps, metrics, test, params = runs[RUNS[0]]
  assert steps == [1, 2, 3] and metrics[-1, 0] < metrics[0, 0]  # it trains
  for run in RUNS[1:]:
    assert runs[run][0] == steps
    np.testing.assert_allclose(runs[run][1], metrics, rtol=1e-5, err_msg=str(run))
    assert runs[run][2] == pytest.approx(test, rel=1e-5), run
    # AdamW moves each weight ~lr = 1e-2 a step whatever its gradient's size: where that
    # gradient is ~0, another order of float sums moves the weight ~1e-4 otherwise. A wrong
    # split (a gradient not summed over the devices) would be off by ~lr.
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=3e-4),
                 runs[run][3], params)


def test_an_unknown_strategy_or_a_mesh_that_does_not_fit_is_a_clear_error(tmp_path):
  with pytest.raises(UserInputError, match=r"sharding strategy 'zero3': expected one of "
                     'replicated, fsdp, tp, fsdp_tp'):
    train.train_and_evaluate(_config(tmp_path, (8, 1), 'zero3'), tmp_path / 'run')
  with pytest.raises(UserInputError, match=r'mesh shape \(3, 3\) needs 9 devices, but there '
                     r'are 8'):
    train.train_and_evaluate(_config(tmp_path, (3, 3), 'replicated'), tmp_path / 'run')
  assert not (tmp_path / 'run').exists()
