"""The FID Inception-v3 and the pytorch-fid weights importer against a torch forward pass.

The reference forward pass below is written here with torch.nn.functional, from the layout of
pytorch-fid's FIDInceptionV3 (torchvision Inception3 with FIDInceptionA/C/E_1/E_2); it also
creates the random state dict, in pytorch-fid's key names, that the importer has to read.
"""

import functools

import jax
import numpy as np
import pytest

from vision_core.errors import UserInputError
from vit_jax import metrics
from vit_jax.metrics import inception
from vit_jax.metrics import inception_import

torch = pytest.importorskip('torch')
F = torch.nn.functional


class _TorchReference:
  """pytorch-fid's FID Inception-v3 in functional torch; creates its weights on first use."""

  def __init__(self, seed=0):
    self.sd = {}
    self.gen = torch.Generator().manual_seed(seed)

  def _rand(self, *shape):
    return torch.rand(*shape, generator=self.gen)

  def conv(self, x, name, out, k, stride=1, pad=0):
    k = (k, k) if isinstance(k, int) else k
    pad = (pad, pad) if isinstance(pad, int) else pad
    if f'{name}.conv.weight' not in self.sd:
      fan_in = x.shape[1] * k[0] * k[1]
      self.sd[f'{name}.conv.weight'] = (
          torch.randn(out, x.shape[1], *k, generator=self.gen) * np.sqrt(2.0 / fan_in))
      self.sd[f'{name}.bn.weight'] = 0.8 + 0.4 * self._rand(out)
      self.sd[f'{name}.bn.bias'] = 0.1 * torch.randn(out, generator=self.gen)
      self.sd[f'{name}.bn.running_mean'] = 0.1 * torch.randn(out, generator=self.gen)
      self.sd[f'{name}.bn.running_var'] = 0.5 + self._rand(out)
      self.sd[f'{name}.bn.num_batches_tracked'] = torch.tensor(0)
    y = F.conv2d(x, self.sd[f'{name}.conv.weight'], stride=stride, padding=pad)
    y = F.batch_norm(y, self.sd[f'{name}.bn.running_mean'], self.sd[f'{name}.bn.running_var'],
                     self.sd[f'{name}.bn.weight'], self.sd[f'{name}.bn.bias'], training=False,
                     eps=1e-3)
    return F.relu(y)

  def block_a(self, x, n, pool_features):
    c = self.conv
    b5 = c(c(x, f'{n}.branch5x5_1', 48, 1), f'{n}.branch5x5_2', 64, 5, pad=2)
    b3 = c(x, f'{n}.branch3x3dbl_1', 64, 1)
    b3 = c(c(b3, f'{n}.branch3x3dbl_2', 96, 3, pad=1), f'{n}.branch3x3dbl_3', 96, 3, pad=1)
    bp = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    return torch.cat([c(x, f'{n}.branch1x1', 64, 1), b5, b3,
                      c(bp, f'{n}.branch_pool', pool_features, 1)], 1)

  def block_b(self, x, n):
    c = self.conv
    bd = c(c(x, f'{n}.branch3x3dbl_1', 64, 1), f'{n}.branch3x3dbl_2', 96, 3, pad=1)
    return torch.cat([c(x, f'{n}.branch3x3', 384, 3, stride=2),
                      c(bd, f'{n}.branch3x3dbl_3', 96, 3, stride=2), F.max_pool2d(x, 3, 2)], 1)

  def block_c(self, x, n, c7):
    c = self.conv
    b7 = c(x, f'{n}.branch7x7_1', c7, 1)
    b7 = c(b7, f'{n}.branch7x7_2', c7, (1, 7), pad=(0, 3))
    b7 = c(b7, f'{n}.branch7x7_3', 192, (7, 1), pad=(3, 0))
    bd = c(x, f'{n}.branch7x7dbl_1', c7, 1)
    for i, (k, p, o) in enumerate([((7, 1), (3, 0), c7), ((1, 7), (0, 3), c7),
                                   ((7, 1), (3, 0), c7), ((1, 7), (0, 3), 192)]):
      bd = c(bd, f'{n}.branch7x7dbl_{i + 2}', o, k, pad=p)
    bp = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    return torch.cat([c(x, f'{n}.branch1x1', 192, 1), b7, bd,
                      c(bp, f'{n}.branch_pool', 192, 1)], 1)

  def block_d(self, x, n):
    c = self.conv
    b3 = c(c(x, f'{n}.branch3x3_1', 192, 1), f'{n}.branch3x3_2', 320, 3, stride=2)
    b7 = c(x, f'{n}.branch7x7x3_1', 192, 1)
    b7 = c(b7, f'{n}.branch7x7x3_2', 192, (1, 7), pad=(0, 3))
    b7 = c(b7, f'{n}.branch7x7x3_3', 192, (7, 1), pad=(3, 0))
    b7 = c(b7, f'{n}.branch7x7x3_4', 192, 3, stride=2)
    return torch.cat([b3, b7, F.max_pool2d(x, 3, 2)], 1)

  def block_e(self, x, n, pool):
    c = self.conv
    b3 = c(x, f'{n}.branch3x3_1', 384, 1)
    b3 = torch.cat([c(b3, f'{n}.branch3x3_2a', 384, (1, 3), pad=(0, 1)),
                    c(b3, f'{n}.branch3x3_2b', 384, (3, 1), pad=(1, 0))], 1)
    bd = c(c(x, f'{n}.branch3x3dbl_1', 448, 1), f'{n}.branch3x3dbl_2', 384, 3, pad=1)
    bd = torch.cat([c(bd, f'{n}.branch3x3dbl_3a', 384, (1, 3), pad=(0, 1)),
                    c(bd, f'{n}.branch3x3dbl_3b', 384, (3, 1), pad=(1, 0))], 1)
    if pool == 'max':
      bp = F.max_pool2d(x, 3, stride=1, padding=1)
    else:
      bp = F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)
    return torch.cat([c(x, f'{n}.branch1x1', 320, 1), b3, bd,
                      c(bp, f'{n}.branch_pool', 192, 1)], 1)

  def __call__(self, images_nhwc_01, resize=True):
    x = torch.from_numpy(images_nhwc_01).permute(0, 3, 1, 2).float()
    if resize:
      x = F.interpolate(x, size=(299, 299), mode='bilinear', align_corners=False)
    x = 2 * x - 1
    c = self.conv
    x = c(x, 'Conv2d_1a_3x3', 32, 3, stride=2)
    x = c(x, 'Conv2d_2a_3x3', 32, 3)
    x = F.max_pool2d(c(x, 'Conv2d_2b_3x3', 64, 3, pad=1), 3, 2)
    x = F.max_pool2d(c(c(x, 'Conv2d_3b_1x1', 80, 1), 'Conv2d_4a_3x3', 192, 3), 3, 2)
    for n, pf in (('Mixed_5b', 32), ('Mixed_5c', 64), ('Mixed_5d', 64)):
      x = self.block_a(x, n, pf)
    x = self.block_b(x, 'Mixed_6a')
    for n, c7 in (('Mixed_6b', 128), ('Mixed_6c', 160), ('Mixed_6d', 160), ('Mixed_6e', 192)):
      x = self.block_c(x, n, c7)
    x = self.block_d(x, 'Mixed_7a')
    x = self.block_e(self.block_e(x, 'Mixed_7b', 'avg'), 'Mixed_7c', 'max')
    return F.adaptive_avg_pool2d(x, 1).flatten(1).numpy()


def test_imported_random_weights_match_torch_forward(tmp_path, monkeypatch):
  # The model's tree of shapes, traced once for the five loads below: each load traced the
  # whole Inception afresh for it (2-3 s each on a 2-core CPU).
  monkeypatch.setattr(inception_import, 'expected_shapes',
                      functools.lru_cache(inception_import.expected_shapes))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (2, 83, 79, 3)).astype(np.uint8)  # odd sizes: pooling edges
  ref = _TorchReference()
  with torch.no_grad():
    want = ref(images.astype(np.float32) / 255.0, resize=False)  # pytorch-fid's ToTensor
  state = dict(ref.sd)
  state['fc.weight'] = torch.randn(1008, 2048)  # in the real file; unused for pool3
  state['fc.bias'] = torch.zeros(1008)
  path = tmp_path / 'pt_inception-2015-12-05-6726825d.pth'
  torch.save(state, path)

  variables = inception_import.load_inception(path)
  got = metrics.inception_extractor(variables, resize_input=False)(images)
  assert got.shape == (2, 2048)
  # [0, 1] floats with the default data_range=255 would be taken as black images.
  with pytest.raises(UserInputError, match=r'inception_extractor input: image 0 .*\[0, 1\]'):
    metrics.inception_extractor(variables, resize_input=False)(images / 255.0)
  assert np.abs(want).max() > 0.1  # the random network did not die out
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())

  # Converting to .npz once gives the same variables, loadable without torch.
  npz_path = tmp_path / 'inception.npz'
  inception_import.main([str(path), str(npz_path)])
  again = inception_import.load_inception(npz_path)
  jax.tree.map(np.testing.assert_array_equal, again, variables)
  with pytest.raises(UserInputError, match='already exists'):
    inception_import.main([str(path), str(npz_path)])

  # A damaged state dict is named key by key.
  del state['Mixed_6c.branch7x7_2.conv.weight']
  state['Mixed_7c.branch_pool.bn.running_var'] = torch.ones(7)
  torch.save(state, tmp_path / 'bad.pth')
  with pytest.raises(UserInputError, match=r'(?s)bad\.pth.*shape +batch_stats/Mixed_7c/branch_pool'
                     r'/bn/var.*missing +params/Mixed_6c/branch7x7_2/conv/kernel'):
    inception_import.load_inception(tmp_path / 'bad.pth')
  torch.save({'encoder.weight': torch.ones(3)}, tmp_path / 'other.pth')
  with pytest.raises(UserInputError, match='not part of the FID Inception'):
    inception_import.load_inception(tmp_path / 'other.pth')


@pytest.mark.parametrize('shape', [(37, 52), (512, 384), (299, 299)])
def test_resize_matches_torch_bilinear(shape):
  image = np.random.default_rng(1).uniform(0, 1, (1, *shape, 3)).astype(np.float32)
  want = F.interpolate(torch.from_numpy(image).permute(0, 3, 1, 2), size=(299, 299),
                       mode='bilinear', align_corners=False).permute(0, 2, 3, 1).numpy()
  got = np.asarray(inception.resize_bilinear(image))
  np.testing.assert_allclose(got, want, atol=2e-6)


def test_cli_help_prints_the_usage(capsys):
  inception_import.main(['--help'])  # returns, so the CLI exits 0 rather than with an error
  out = capsys.readouterr().out
  assert 'usage: python -m vit_jax.metrics.inception_import IN.pth OUT.npz' in out


def test_values_outside_data_range_are_refused():
  """Dividing by the wrong data_range used to give features of a saturated image silently:
  uint8 levels with pytorch-fid's data_range=1.0, or 16-bit levels with the default 255.
  (Refused before the network runs, so no weights are needed here.)"""
  images = np.random.default_rng(0).integers(0, 256, (2, 75, 75, 3)).astype(np.uint8)
  unit = metrics.inception_extractor(None, data_range=1.0, resize_input=False)
  default = metrics.inception_extractor(None, resize_input=False)
  with pytest.raises(UserInputError, match=r'values span \[0, 255\] \(uint8\), not \[0, data_'
                     r'range=1\]'):
    unit(images)
  with pytest.raises(UserInputError, match=r'span \[0, 65535\] \(uint16\).*=255\]'):
    default(images.astype(np.uint16) * 257)
  with pytest.raises(UserInputError, match='NaN'):
    unit(np.full((1, 75, 75, 3), np.nan, np.float32))
