"""The bench/ command lines: help, bad arguments and off-GPU runs, without a GPU."""

from __future__ import annotations

import ast
import json
import os
import pathlib
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def forbidden_python(tmp_path):
  """A `python` first on PATH that fails loudly: what must not start anything must not call
  it. Returns the environment to run the script with."""
  marker = tmp_path / 'python-was-called'
  stub = tmp_path / 'forbidden' / 'python'
  stub.parent.mkdir()
  stub.write_text(f'#!/bin/sh\ntouch {marker}\necho "python called: $*" >&2\nexit 97\n')
  stub.chmod(0o755)
  yield dict(os.environ, PATH=f'{stub.parent}{os.pathsep}{os.environ["PATH"]}')
  assert not marker.exists(), 'the script started python'


def _variants(*args: str, env: dict[str, str], cwd: pathlib.Path):
  return subprocess.run(['bash', str(REPO / 'bench' / 'gpu_vit_variants.sh'), *args],
                        capture_output=True, text=True, env=env, cwd=cwd, timeout=60,
                        check=False)


@pytest.mark.parametrize('flag', ['--help', '-h'])
def test_gpu_vit_variants_help_prints_the_usage(flag, forbidden_python, tmp_path):
  result = _variants(flag, env=forbidden_python, cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  assert result.stdout.startswith('ViT-B/16 training-step A/B on one GPU')
  assert 'bash bench/gpu_vit_variants.sh [OUT] [PROFILE_DIR]' in result.stdout
  assert 'timm ' in result.stdout and '#' not in result.stdout.split('\n', 1)[0]
  assert 'set -u' not in result.stdout and not list(tmp_path.glob('*help*'))


@pytest.mark.parametrize('args', [['--out'], ['out.jsonl', '-p'], ['a', 'b', 'c']])
def test_gpu_vit_variants_refuses_flags_as_paths(args, forbidden_python, tmp_path):
  result = _variants(*args, env=forbidden_python, cwd=tmp_path)
  assert result.returncode == 2
  assert result.stdout == '' and len(result.stderr.strip().splitlines()) == 1, result.stderr
  assert 'error' in result.stderr and '--help' in result.stderr


def test_gpu_mlp_kernels_quick_off_gpu_skips_mosaic_without_error_rows(tmp_path):
  """--quick runs anywhere: off a GPU the Mosaic candidates are skipped with a note, not
  recorded as error rows, and the Triton (interpreted) and XLA rows are all there."""
  out = tmp_path / 'rows.jsonl'
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO))
  result = subprocess.run([sys.executable, str(REPO / 'bench' / 'gpu_mlp_kernels.py'),
                           '--quick', '--out', str(out)], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300, check=False)
  assert result.returncode == 0, result.stderr
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert not [r for r in rows if 'error' in r], rows
  assert {(r['kernel'], r['impl']) for r in rows} == {
      ('forward', 'xla'), ('backward', 'xla'), ('forward', 'pallas'), ('backward', 'pallas'),
      ('mlp value_and_grad', 'xla'), ('mlp value_and_grad', 'fused')}
  [note] = [line for line in result.stderr.splitlines() if 'mosaic:' in line]
  assert 'skipped: Mosaic GPU needs a GPU' in note


def test_gpu_aot_check_without_the_cuda_plugin_says_so_in_one_line(monkeypatch, capsys):
  """The topology lookup's failure (no jax CUDA plugin here, or made so) is one line and
  status 2, not a chained traceback."""
  from bench import gpu_aot_check  # pylint: disable=g-import-not-at-top
  from vision_core.errors import UserInputError  # pylint: disable=g-import-not-at-top

  def no_plugin(name, count=1):
    del count
    raise UserInputError(f"compiling for {name} needs jax's CUDA plugin (test)")
  monkeypatch.setattr(gpu_aot_check.gpu_target, 'compile_only_devices', no_plugin)
  monkeypatch.setattr(sys, 'argv', ['gpu_aot_check.py', '--sections', 'kernels'])
  with pytest.raises(SystemExit) as exit_info:
    gpu_aot_check.main()
  assert exit_info.value.code == 2
  captured = capsys.readouterr()
  assert captured.err == ("gpu_aot_check.py: error: compiling for h100 needs jax's CUDA "
                          'plugin (test)\n')
  assert captured.out == ''


def test_gpu_suite_quick_uses_a_small_vit_batch():
  """--quick is a CPU smoke test: a small ViT batch unless --vit-batch says otherwise."""
  from bench import gpu_suite  # pylint: disable=g-import-not-at-top
  assert gpu_suite.parse_args([]).vit_batch == 256
  assert gpu_suite.parse_args(['--quick']).vit_batch == gpu_suite.QUICK_VIT_BATCH <= 16
  assert gpu_suite.parse_args(['--quick', '--vit-batch', '32']).vit_batch == 32
  assert gpu_suite.parse_args(['--vit-batch', '64']).vit_batch == 64


def _first_paragraph(path: pathlib.Path) -> str:
  return (ast.get_docstring(ast.parse(path.read_text())) or '').split('\n\n', maxsplit=1)[0]


# The bench scripts whose --help describes them with their docstring and whose first
# paragraph runs over more than one line: the ones a first-line description would cut short.
_MULTILINE_DESCRIPTIONS = sorted(
    p.name for p in (REPO / 'bench').glob('*.py')
    if 'description=__doc__' in p.read_text() and '\n' in _first_paragraph(p))


def test_multiline_descriptions_found():
  # An empty list would make the test below vacuous.
  assert {'igpt_probe.py', 'gpu_aot_check.py', 'pgan_conv_layers.py'} <= set(
      _MULTILINE_DESCRIPTIONS)


@pytest.mark.parametrize('name', _MULTILINE_DESCRIPTIONS)
def test_help_describes_the_script_with_its_whole_first_paragraph(name):
  result = subprocess.run([sys.executable, str(REPO / 'bench' / name), '--help'],
                          capture_output=True, text=True, timeout=120, check=False,
                          env=dict(os.environ, JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO)))
  assert result.returncode == 0, result.stderr
  # argparse rewraps the description: compare the words.
  assert ' '.join(_first_paragraph(REPO / 'bench' / name).split()) in ' '.join(
      result.stdout.split())
