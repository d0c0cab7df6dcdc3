"""vision_core.torch_io: PyTorch weight files as numpy, with weights_only=True."""

import os

import numpy as np
import pytest

from vision_core import torch_io
from vision_core.errors import UserInputError

torch = pytest.importorskip('torch')


class TrainingConfig:
  """A config object of the kind training scripts pickle beside their weights."""

  def __init__(self, depth=3):
    self.depth = depth


class Payload:
  """Runs code when unpickled: a weights-only reader must refuse it, not run it."""

  def __reduce__(self):
    return (os.mkdir, ('/tmp/torch_io_payload_ran',))


def test_tensors_come_back_as_numpy(tmp_path):
  w = torch.randn(3, 4)
  state = {'w': w, 'b16': w.to(torch.bfloat16), 'step': torch.tensor(7),
           'nested': {'layers': [torch.ones(2), torch.zeros(1)]}, 'note': 'kept'}
  torch.save(state, tmp_path / 'a.pth')
  got = torch_io.read(tmp_path / 'a.pth')
  np.testing.assert_array_equal(got['w'], w.numpy())
  assert got['b16'].dtype == np.float32  # numpy has no bfloat16
  np.testing.assert_array_equal(got['b16'], w.to(torch.bfloat16).float().numpy())
  assert got['step'] == 7 and got['note'] == 'kept'
  np.testing.assert_array_equal(got['nested']['layers'][0], [1.0, 1.0])


def test_safe_globals_come_back_as_dicts(tmp_path):
  torch.save({'config': TrainingConfig(5), 'w': torch.ones(1)}, tmp_path / 'c.pth')
  with pytest.raises(UserInputError, match=r'c\.pth: holds Python objects other than'):
    torch_io.read(tmp_path / 'c.pth')  # Not allowed unless named.
  got = torch_io.read(tmp_path / 'c.pth',
                      safe_globals=[(TrainingConfig, f'{__name__}.TrainingConfig')])
  assert got['config'] == {'depth': 5}


def test_code_in_the_pickle_never_runs(tmp_path):
  marker = '/tmp/torch_io_payload_ran'
  if os.path.isdir(marker):
    os.rmdir(marker)
  torch.save({'w': torch.ones(1), 'x': Payload()}, tmp_path / 'evil.bin')
  with pytest.raises(UserInputError, match=r'evil\.bin: holds Python objects other than '
                     r'tensors \(Unsupported global: GLOBAL (posix|nt)\.mkdir\)'):
    torch_io.read(tmp_path / 'evil.bin')
  assert not os.path.exists(marker)


@pytest.mark.parametrize('stored, culprit', [
    (TrainingConfig(), f'{__name__}.TrainingConfig'),
    (np.ones(3), 'numpy._core.multiarray._reconstruct'),
], ids=['custom-class', 'numpy-array'])
def test_refusal_names_the_file_and_the_culprit_in_one_plain_line(tmp_path, stored, culprit):
  """torch's refusal is many lines with terminal escapes, advises turning weights_only off,
  and names the culprit only after its first line, which was all that was kept."""
  torch.save({'w': torch.ones(1), 'extra': stored}, tmp_path / 'extra.bin')
  with pytest.raises(UserInputError) as e:
    torch_io.read(tmp_path / 'extra.bin')
  assert str(e.value) == (
      f'{tmp_path / "extra.bin"}: holds Python objects other than tensors (Unsupported '
      f'global: GLOBAL {culprit}), which cannot be loaded without running code from the '
      'file; only tensors and plain containers are read.')


def test_state_dict_unwrapped_and_checked(tmp_path):
  torch.save({'state_dict': {'a': torch.ones(2)}, 'epoch': 3}, tmp_path / 'ckpt.pth')
  assert list(torch_io.read_state_dict(tmp_path / 'ckpt.pth')) == ['a']
  torch.save([torch.ones(2)], tmp_path / 'list.pth')
  with pytest.raises(UserInputError, match=r'list\.pth: expected a state dict .* got list'):
    torch_io.read_state_dict(tmp_path / 'list.pth')


def test_missing_and_damaged_files_are_named(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'gone\.pth: no such weights file'):
    torch_io.read(tmp_path / 'gone.pth')
  torch.save({'w': torch.randn(64, 64)}, tmp_path / 'cut.pth')
  data = (tmp_path / 'cut.pth').read_bytes()
  (tmp_path / 'cut.pth').write_bytes(data[:len(data) // 3])
  with pytest.raises(UserInputError, match=r'cut\.pth: not a readable weights-only PyTorch'):
    torch_io.read(tmp_path / 'cut.pth')
  # Before: torch's "KeyError: 101" for the first, "EOFError" for the second.
  (tmp_path / 'page.pth').write_text('<html>Not Found</html>')
  with pytest.raises(UserInputError, match=r"page\.pth: not a PyTorch file \(it starts with "
                     r"b'<html>Not Found<'\); expected one written by torch\.save"):
    torch_io.read(tmp_path / 'page.pth')
  (tmp_path / 'empty.pth').write_bytes(b'')
  with pytest.raises(UserInputError, match=r'empty\.pth: not a PyTorch file \(it is empty\)'):
    torch_io.read(tmp_path / 'empty.pth')
