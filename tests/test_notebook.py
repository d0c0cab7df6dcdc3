"""Runs notebooks/quickstart.ipynb top to bottom on CPU with tiny settings, so it cannot rot."""

import pytest

from tests.study_helpers import ROOT
from tests.subprocess_env import xla_flags

nbformat = pytest.importorskip('nbformat')
nbclient = pytest.importorskip('nbclient')


def test_quickstart_notebook_runs(monkeypatch):
  notebook = nbformat.read(ROOT / 'notebooks' / 'quickstart.ipynb', as_version=4)
  monkeypatch.setenv('QUICKSTART_TINY', '1')
  monkeypatch.setenv('JAX_PLATFORMS', 'cpu')
  # One CPU device, as on a user's laptop or a Colab CPU runtime, not the suite's 8: the
  # notebook ran in 39 s instead of 72 s. And LLVM at -O0 where the suite compiles at -O1
  # (tests/conftest.py): the notebook's numbers are checked against no reference (conftest's
  # reason for -O1), and compiling is most of its time (82 s of CPU at -O1, 44 s at -O0).
  monkeypatch.setenv('XLA_FLAGS', xla_flags(1).replace('--xla_backend_optimization_level=1',
                                                       '--xla_backend_optimization_level=0'))
  monkeypatch.setenv('PYTHONPATH', str(ROOT))
  client = nbclient.NotebookClient(notebook, timeout=300, kernel_name='python3',
                                   resources={'metadata': {'path': str(ROOT / 'notebooks')}})
  client.execute()
  outputs = {i: ''.join(o.get('text', '') for o in cell.get('outputs', []))
             for i, cell in enumerate(notebook.cells) if cell.cell_type == 'code'}
  text = '\n'.join(outputs.values())
  assert 'backend: cpu [CpuDevice(id=0)]' in text  # one device
  assert 'test_accuracy' in text  # the ViT fine-tuning ran and evaluated
  assert '| GAN latents (8bit .ganz) |' in text and '| astronaut |' in text  # the report
  images = [o for cell in notebook.cells for o in cell.get('outputs', [])
            if 'image/png' in o.get('data', {})]
  assert len(images) == 2  # the iGPT completion grid and the study figure
