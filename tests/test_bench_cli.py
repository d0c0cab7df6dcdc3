"""The bench/ command lines: help, bad arguments and off-GPU runs, without a GPU."""

from __future__ import annotations

import os
import pathlib
import subprocess

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
