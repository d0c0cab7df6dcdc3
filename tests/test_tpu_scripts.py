"""Tests for the Cloud TPU scripts in tpu/: no gcloud, no network.

`--dry-run` output is parsed back with shlex and the remote command it would send is run here
with bash, in a fake home with a stub `python`, so the tests see the very argv a worker would
get. The non-dry-run paths run against a fake `gcloud` (TPU_GCLOUD) that plays the workers:
`ssh --command` runs the command with bash in a fake home, `scp` copies files to and from it.
"""

from __future__ import annotations

import json
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
TPU = REPO / 'tpu'
SCRIPTS = ['create.sh', 'install.sh', 'run.sh', 'fetch.sh', 'logs.sh', 'delete.sh']
SSH = ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh']

# Arguments that break naive quoting: spaces, both quote kinds, $, globs, backslashes, empty.
TRICKY_ARGS = ['--config', 'configs/vit.py:ViT-B_16,cifar10', '--workdir', 'gs://b/run 1',
               "--config.note=it's a \"test\"", '$HOME', '`id`', '*.py', 'back\\slash', '',
               '--config.tfds_data_dir=gs://b/tensorflow datasets']

FAKE_GCLOUD = '''\
#!{python}
"""A stand-in for gcloud: logs its argv and plays the TPU workers in $FAKE_HOME."""
import json, os, re, shutil, subprocess, sys
args = sys.argv[1:]
with open(os.environ['FAKE_GCLOUD_LOG'], 'a') as f:
  f.write(json.dumps(args) + '\\n')
home = os.environ['FAKE_HOME']
if args[:2] == ['config', 'get-value']:
  print(os.environ.get('FAKE_PROJECT', ''))
elif args[:4] == ['compute', 'tpus', 'tpu-vm', 'describe']:
  print(os.environ.get('FAKE_IPS', '10.0.0.2'))
elif args[:4] == ['compute', 'tpus', 'tpu-vm', 'ssh']:
  command = [a for a in args if a.startswith('--command=')][0][len('--command='):]
  sys.exit(subprocess.run(['bash', '-c', command], cwd=home,
                          env=dict(os.environ, HOME=home)).returncode)
elif args[:4] == ['compute', 'tpus', 'tpu-vm', 'scp']:
  src, dst = [re.sub(r'^[a-z][-a-z0-9]*:', home + '/', a)
              for a in args[4:] if not a.startswith('--')]
  if os.path.isdir(src):
    if os.path.isdir(dst):
      dst = os.path.join(dst, os.path.basename(src))
    shutil.copytree(src, dst)
  else:
    shutil.copy(src, dst)
'''

STUB_PYTHON = '''\
#!{python}
import json, os, sys
with open(os.environ['STUB_OUT'], 'a') as f:
  f.write(json.dumps({{'argv': sys.argv[1:], 'cwd': os.getcwd(),
                       'coordinator': os.environ.get('JAX_COORDINATOR_ADDRESS')}}) + '\\n')
print('stub python ran')
'''


def _clean_env(**extra: str) -> dict[str, str]:
  env = {k: v for k, v in os.environ.items() if not k.startswith('TPU_')}
  env.update(extra)
  return env


def _script(path: pathlib.Path, text: str) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text)
  path.chmod(0o755)
  return path


@pytest.fixture
def forbidden_gcloud(tmp_path):
  """A gcloud that fails loudly: a --dry-run with every setting given must not call it."""
  marker = tmp_path / 'gcloud-was-called'
  gcloud = _script(tmp_path / 'forbidden' / 'gcloud',
                   f'#!/bin/sh\ntouch {marker}\necho "gcloud called: $*" >&2\nexit 97\n')
  yield gcloud
  assert not marker.exists(), '--dry-run called gcloud'


@pytest.fixture
def fake(tmp_path):
  """The fake gcloud and worker home; returns a namespace with helpers."""
  home = tmp_path / 'home'
  home.mkdir()
  log = tmp_path / 'gcloud-calls.jsonl'
  gcloud = _script(tmp_path / 'fakebin' / 'gcloud', FAKE_GCLOUD.format(python=sys.executable))

  class Fake:
    """Paths and environment of the fake gcloud."""
    env = _clean_env(TPU_GCLOUD=str(gcloud), FAKE_HOME=str(home), FAKE_GCLOUD_LOG=str(log))

    @staticmethod
    def calls() -> list[list[str]]:
      if not log.exists():
        return []
      return [json.loads(line) for line in log.read_text().splitlines()]

  Fake.home = home
  return Fake


def _run(script: str, *args: str, env: dict[str, str], cwd: pathlib.Path | None = None,
         stdin: str | None = None) -> subprocess.CompletedProcess:
  return subprocess.run(['bash', str(TPU / script), *args], capture_output=True, text=True,
                        env=env, cwd=cwd, input=stdin, timeout=60, check=False)


def _commands(stdout: str) -> list[list[str]]:
  """The command lines a --dry-run printed (comments skipped), each split back into argv."""
  return [shlex.split(line) for line in stdout.splitlines() if line and not line.startswith('#')]


def _remote_command(argv: list[str]) -> str:
  [command] = [a[len('--command='):] for a in argv if a.startswith('--command=')]
  return command


def _installed_home(home: pathlib.Path, stub_out: pathlib.Path) -> None:
  """What tpu/install.sh leaves on a worker, with a stub `python` in the virtual env."""
  (home / 'jax-vision-toolkit').mkdir(parents=True, exist_ok=True)
  bin_dir = home / 'vision-venv' / 'bin'
  _script(bin_dir / 'python', STUB_PYTHON.format(python=sys.executable))
  (bin_dir / 'activate').write_text(f'export PATH="{bin_dir}:$PATH"\nexport STUB_OUT={stub_out}\n')


def _stub_calls(stub_out: pathlib.Path) -> list[dict]:
  return [json.loads(line) for line in stub_out.read_text().splitlines()]


@pytest.mark.parametrize('name', SCRIPTS)
def test_help(name, forbidden_gcloud):
  for flag in ('--help', '-h'):
    result = _run(name, flag, env=_clean_env(TPU_GCLOUD=str(forbidden_gcloud)))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f'Usage: tpu/{name}')
    assert '--dry-run' in result.stdout and '--project' in result.stdout


def test_create_dry_run_pod_slice(forbidden_gcloud):
  result = _run('create.sh', '--dry-run', '--project', 'my-proj', '--name=vit-pod',
                '--accelerator', 'v4-32', '--spot',
                env=_clean_env(TPU_GCLOUD=str(forbidden_gcloud)))
  assert result.returncode == 0, result.stderr
  assert _commands(result.stdout) == [[
      'gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'vit-pod', '--zone=us-central2-b',
      '--project=my-proj', '--accelerator-type=v4-32', '--version=tpu-ubuntu2204-base',
      '--spot']]


def test_create_defaults_and_environment(forbidden_gcloud):
  env = _clean_env(TPU_GCLOUD=str(forbidden_gcloud), TPU_PROJECT='p1')
  [argv] = _commands(_run('create.sh', '--dry-run', env=env).stdout)
  assert argv[5:] == ['vision-tpu', '--zone=us-central1-a', '--project=p1',
                      '--accelerator-type=v5litepod-8', '--version=v2-alpha-tpuv5-lite']
  env.update(TPU_ACCELERATOR='v5litepod-16', TPU_ZONE='europe-west4-b', TPU_DRY_RUN='1')
  [argv] = _commands(_run('create.sh', '--preemptible', env=env).stdout)
  assert argv[5:] == ['vision-tpu', '--zone=europe-west4-b', '--project=p1',
                      '--accelerator-type=v5litepod-16', '--version=v2-alpha-tpuv5-lite',
                      '--preemptible']


def test_project_from_gcloud_config(fake):
  env = dict(fake.env, FAKE_PROJECT='configured-proj')
  [argv] = _commands(_run('create.sh', '--dry-run', env=env).stdout)
  assert '--project=configured-proj' in argv
  assert fake.calls() == [['config', 'get-value', 'project']]


@pytest.mark.parametrize('args, message', [
    (['create.sh', '--dry-run'], 'no Google Cloud project: pass --project'),
    (['create.sh', '--project=p'], "not found: install the Google Cloud CLI"),
    (['create.sh', '--dry-run', '--project=p', '--accelerator=v3-8'], 'no zone for accelerator'),
    (['create.sh', '--dry-run', '--project=p', '--accelerator=v5e-8'], "calls v5e 'v5litepod'"),
    (['create.sh', '--dry-run', '--project=p', '--name=My_TPU'], "TPU name 'My_TPU'"),
    (['create.sh', '--dry-run', '--project=p', '--spot', '--preemptible'], 'exclude each other'),
    (['create.sh', '--dry-run', '--project=p', '--zoen=x'], 'unknown flag --zoen'),
    (['create.sh', '--dry-run', '--project'], '--project needs a value'),
    (['run.sh', '--dry-run', '--project=p'], "no command to run: put it after '--'"),
    (['run.sh', '--dry-run', '--project=p', 'python', '--config', 'x'], 'unknown flag --config'),
    (['run.sh', '--dry-run', '--project=p', '--worker-ips=10.0.0.2,10.0.0.3', '--',
      'python', '-m', 'vit_jax.main', '--workdir', '/home/me/run'],
     '--workdir must be on GCS'),
    (['fetch.sh', '--dry-run', '--project=p'], 'nothing to copy: pass --workdir'),
    (['install.sh', '--dry-run', '--project=p', '--ref=v1'], '--ref needs --git'),
    (['install.sh', '--dry-run', '--project=p', '--jax-version=latest'], '--jax-version'),
    (['delete.sh', '--dry-run', '--project=p', 'extra'], "unexpected argument 'extra'"),
])
def test_bad_or_missing_settings_fail_clearly(tmp_path, args, message):
  env = _clean_env(TPU_GCLOUD=str(tmp_path / 'no-such-gcloud'))
  result = _run(*args, env=env)
  assert result.returncode != 0
  assert message in result.stderr
  assert result.stderr.startswith(args[0] + ': error: ')
  assert 'Traceback' not in result.stderr and result.stdout == ''


def test_run_dry_run_passes_the_command_through_intact(tmp_path, forbidden_gcloud):
  command = ['python', '-m', 'vit_jax.main', *TRICKY_ARGS]
  result = _run('run.sh', '--dry-run', '--project=p', '--zone=us-central2-b',
                '--accelerator=v4-8', '--name=vit-tpu', '--run-id=r1', '--', *command,
                env=_clean_env(TPU_GCLOUD=str(forbidden_gcloud)))
  assert result.returncode == 0, result.stderr
  describe, ssh = _commands(result.stdout)
  assert describe[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'describe', 'vit-tpu']
  assert ssh[:6] == SSH + ['vit-tpu']
  assert {'--zone=us-central2-b', '--project=p', '--worker=all'} <= set(ssh)

  # What every worker would run, run here: the stub python must see the argv given above.
  home, stub_out = tmp_path / 'worker', tmp_path / 'stub.jsonl'
  _installed_home(home, stub_out)
  remote = _remote_command(ssh)
  worker = subprocess.run(['bash', '-c', remote], cwd=home, capture_output=True, text=True,
                          env=_clean_env(HOME=str(home)), timeout=60, check=False)
  assert worker.returncode == 0, worker.stderr
  [call] = _stub_calls(stub_out)
  assert call['argv'] == command[1:]
  assert call['cwd'] == str(home / 'jax-vision-toolkit')
  assert call['coordinator'] is None  # one worker: no jax.distributed coordinator
  assert 'stub python ran' in worker.stdout
  assert 'stub python ran' in (home / 'vision-logs' / 'r1.log').read_text()


def test_run_pod_slice_sets_the_coordinator_and_keeps_the_exit_status(fake, tmp_path):
  stub_out = tmp_path / 'stub.jsonl'
  _installed_home(fake.home, stub_out)
  command = ['python', 'train.py', 'two\nlines', 'a  b', '--workdir=gs://bucket/x y']
  env = dict(fake.env, FAKE_IPS='10.1.0.7;10.1.0.8;10.1.0.9;10.1.0.10')
  result = _run('run.sh', '--project=p', '--accelerator=v4-32', '--run-id=pod', '--',
                *command, env=env)
  assert result.returncode == 0, result.stderr
  describe, ssh = fake.calls()
  assert describe[:5] == ['compute', 'tpus', 'tpu-vm', 'describe', 'vision-tpu']
  assert '--worker=all' in ssh and '--zone=us-central2-b' in ssh
  [call] = _stub_calls(stub_out)
  assert call['argv'] == command[1:]
  assert call['coordinator'] == '10.1.0.7:8482'

  # A failing trainer fails the script (pipefail through tee); one that wrote a gs:// path to
  # local disk is reported.
  (fake.home / 'vision-venv' / 'bin' / 'python').write_text('#!/bin/sh\nmkdir -p gs:/b/x\nexit 3\n')
  failed = _run('run.sh', '--project=p', '--run-id=pod', '--', 'python', 'x', env=env)
  assert failed.returncode == 3
  host = subprocess.run(['hostname'], capture_output=True, text=True, check=True).stdout.strip()
  warning = f'{host}: warning: ~/jax-vision-toolkit/gs: is a local folder'
  assert warning in failed.stderr and warning not in result.stderr


def test_run_detach_and_subset_of_workers(fake, tmp_path):
  stub_out = tmp_path / 'stub.jsonl'
  _installed_home(fake.home, stub_out)
  env = dict(fake.env, FAKE_IPS='10.0.0.2;10.0.0.3')
  result = _run('run.sh', '--project=p', '--detach', '--run-id=bg', '--', 'python', 'a b',
                env=env)
  assert result.returncode == 0, result.stderr
  assert 'started, log ~/vision-logs/bg.log' in result.stdout
  for _ in range(100):  # the command runs in the background
    if stub_out.exists() and 'ran' in (fake.home / 'vision-logs' / 'bg.log').read_text():
      break
    time.sleep(0.05)
  [call] = _stub_calls(stub_out)
  assert call['argv'] == ['a b'] and call['coordinator'] == '10.0.0.2:8482'

  # A subset of the workers is no JAX job: no coordinator, and a local workdir is fine.
  result = _run('run.sh', '--project=p', '--workers=0', '--run-id=one', '--', 'python',
                '--workdir', 'runs/x', env=env)
  assert result.returncode == 0, result.stderr
  assert _stub_calls(stub_out)[-1]['coordinator'] is None
  assert '--worker=0' in fake.calls()[-1]


def test_run_on_a_worker_without_install_says_so(fake):
  result = _run('run.sh', '--project=p', '--', 'python', 'x', env=fake.env)
  assert result.returncode == 1
  assert '~/vision-venv is missing: run tpu/install.sh first' in result.stderr


def _git(repo: pathlib.Path, *args: str) -> None:
  subprocess.run(['git', '-C', str(repo), *args], check=True, capture_output=True,
                 env=_clean_env(GIT_AUTHOR_NAME='t', GIT_AUTHOR_EMAIL='t@t',
                                GIT_COMMITTER_NAME='t', GIT_COMMITTER_EMAIL='t@t'))


def test_install_copies_the_checkout_and_installs_with_uv(fake, tmp_path):
  if shutil.which('git') is None:
    pytest.skip('git is not installed')
  src = tmp_path / 'src'
  (src / 'pkg').mkdir(parents=True)
  (src / 'pyproject.toml').write_text('[project]\nname = "x"\n')
  (src / 'pkg' / 'mod.py').write_text('A = 1\n')
  (src / 'gone.py').write_text('')
  (src / '.gitignore').write_text('*.log\n')
  _git(src, 'init', '-q')
  _git(src, 'add', '.')
  _git(src, 'commit', '-qm', 'x')
  (src / 'gone.py').unlink()                       # deleted but still tracked
  (src / 'pkg' / 'mod.py').write_text('A = 2\n')   # uncommitted change
  (src / 'new.py').write_text('')                  # untracked, not ignored
  (src / 'train.log').write_text('')               # ignored
  (src / 'tpu-results' / 'run').mkdir(parents=True)
  (src / 'tpu-results' / 'run' / 'big.npz').write_text('')
  # The worker: pip installs a stub uv that makes a stub venv and records its pip install.
  uv_log = tmp_path / 'uv.jsonl'
  uv = _script(tmp_path / 'stubs' / 'uv', textwrap.dedent(f'''\
      #!{sys.executable}
      import json, os, sys
      args = sys.argv[1:]
      with open({str(uv_log)!r}, 'a') as f:
        f.write(json.dumps(args) + '\\n')
      if args[0] == 'venv':
        bin_dir = os.path.join(args[-1], 'bin')
        os.makedirs(bin_dir)
        with open(os.path.join(bin_dir, 'python'), 'w') as f:
          f.write('#!/bin/sh\\necho "$@" > {tmp_path}/venv-python-args\\n')
        os.chmod(os.path.join(bin_dir, 'python'), 0o755)
      '''))
  _script(tmp_path / 'stubs' / 'python3',
          f'#!/bin/sh\nmkdir -p "$HOME/.local/bin" && cp {uv} "$HOME/.local/bin/uv"\n')
  env = dict(fake.env, PATH=f'{tmp_path / "stubs"}:{os.environ["PATH"]}')
  keep = fake.home / 'jax-vision-toolkit' / 'runs' / 'keep.txt'  # left by an earlier run
  keep.parent.mkdir(parents=True)
  keep.write_text('mine')

  result = _run('install.sh', '--project=p', '--source', str(src), '--python=3.11', env=env)
  assert result.returncode == 0, result.stderr
  scp, ssh = fake.calls()
  assert scp[:4] == ['compute', 'tpus', 'tpu-vm', 'scp'] and '--worker=all' in scp
  assert scp[5] == 'vision-tpu:jax-vision-toolkit.tar.gz'
  assert ssh[:5] == SSH[1:] + ['vision-tpu'] and '--worker=all' in ssh
  installed = fake.home / 'jax-vision-toolkit'
  files = {str(p.relative_to(installed)) for p in installed.rglob('*') if p.is_file()}
  assert files == {'pyproject.toml', 'pkg/mod.py', 'new.py', '.gitignore', 'runs/keep.txt'}
  assert (installed / 'pkg' / 'mod.py').read_text() == 'A = 2\n'
  assert not (fake.home / 'jax-vision-toolkit.tar.gz').exists()
  assert not (fake.home / 'jax-vision-toolkit.new').exists()
  venv, pip = [json.loads(line) for line in uv_log.read_text().splitlines()]
  assert venv == ['venv', '--quiet', '--python', '3.11', f'{fake.home}/vision-venv']
  assert pip == ['pip', 'install', '--quiet', '--python', f'{fake.home}/vision-venv/bin/python',
                 '-e', str(installed), 'jax[tpu]', 'gcsfs']
  assert (tmp_path / 'venv-python-args').read_text().startswith('-c import jax, vit_jax')


def test_install_from_git_dry_run(forbidden_gcloud):
  result = _run('install.sh', '--dry-run', '--project=p', '--git',
                'https://example.com/o/r.git', '--ref', 'v0.1', '--jax-version', '0.6.2',
                env=_clean_env(TPU_GCLOUD=str(forbidden_gcloud)))
  assert result.returncode == 0, result.stderr
  [ssh] = _commands(result.stdout)  # nothing to copy: only the ssh
  remote = _remote_command(ssh)
  assert '--worker=all' in ssh
  assert 'git clone --quiet https://example.com/o/r.git' in remote
  assert 'checkout --quiet v0.1' in remote and "'jax[tpu]==0.6.2'" in remote


def test_fetch_gcs_workdir_and_logs_dry_run(tmp_path, forbidden_gcloud):
  result = _run('fetch.sh', '--dry-run', '--project=p', '--workdir', 'gs://b/vit run/',
                '--logs', '--worker-ips=10.0.0.2,10.0.0.3',
                env=_clean_env(TPU_GCLOUD=str(forbidden_gcloud)), cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  commands = _commands(result.stdout)
  assert ['gcloud', 'storage', 'rsync', '--recursive', 'gs://b/vit run/',
          'tpu-results/vit run', '--project=p'] in commands
  scps = [c for c in commands if c[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp']]
  assert [c[c.index('--recurse') + 1] for c in scps] == ['vision-tpu:vision-logs'] * 2
  assert sorted(c[-1] for c in scps) == ['--worker=0', '--worker=1']
  assert not (tmp_path / 'tpu-results').exists()  # a dry run creates nothing


def test_fetch_local_workdir_never_overwrites_without_force(fake, tmp_path):
  run_dir = fake.home / 'jax-vision-toolkit' / 'runs' / 'cifar'
  (run_dir / 'ckpt').mkdir(parents=True)
  (run_dir / 'metrics.jsonl').write_text('{"step": 1}\n')
  (run_dir / 'ckpt' / 'state').write_text('s')
  (fake.home / 'vision-logs').mkdir()
  (fake.home / 'vision-logs' / 'r.log').write_text('log')
  env = dict(fake.env, FAKE_IPS='10.0.0.2;10.0.0.3')

  result = _run('fetch.sh', '--project=p', '--workdir=runs/cifar', '--logs', env=env,
                cwd=tmp_path)
  assert result.returncode == 0, result.stderr
  dest = tmp_path / 'tpu-results' / 'cifar'
  assert (dest / 'metrics.jsonl').read_text() == '{"step": 1}\n'
  assert (dest / 'ckpt' / 'state').read_text() == 's'
  assert (dest / 'logs' / 'worker-1' / 'r.log').read_text() == 'log'
  assert not list(dest.parent.glob('.*partial*'))

  (dest / 'notes.txt').write_text('my notes')
  again = _run('fetch.sh', '--project=p', '--workdir=runs/cifar', env=env, cwd=tmp_path)
  assert again.returncode != 0 and 'already has files' in again.stderr
  (run_dir / 'metrics.jsonl').write_text('{"step": 2}\n')
  forced = _run('fetch.sh', '--project=p', '--workdir=runs/cifar', '--force', env=env,
                cwd=tmp_path)
  assert forced.returncode == 0, forced.stderr
  assert (dest / 'metrics.jsonl').read_text() == '{"step": 2}\n'
  assert (dest / 'notes.txt').read_text() == 'my notes'


def test_logs_dry_run(forbidden_gcloud):
  env = _clean_env(TPU_GCLOUD=str(forbidden_gcloud))
  [ssh] = _commands(_run('logs.sh', '--dry-run', '--project=p', '--worker=3', '--follow',
                         'r1', env=env).stdout)
  assert '--worker=3' in ssh
  assert _remote_command(ssh) == 'tail -n 50 -f "$HOME"/vision-logs/r1.log'


@pytest.mark.parametrize('answer, deleted', [('y\n', True), ('yes\n', True), ('n\n', False),
                                             ('\n', False), ('', False)])
def test_delete_asks_first(fake, answer, deleted):
  result = _run('delete.sh', '--project=p', '--name=old-tpu', env=fake.env, stdin=answer)
  assert "Delete TPU VM 'old-tpu' in us-central1-a (project p)?" in result.stderr
  delete = ['compute', 'tpus', 'tpu-vm', 'delete', 'old-tpu', '--zone=us-central1-a',
            '--project=p', '--quiet']
  if deleted:
    assert result.returncode == 0 and fake.calls() == [delete]
  else:
    assert result.returncode == 1 and fake.calls() == []
    assert 'not deleted' in result.stderr


def test_delete_yes_and_dry_run(fake, forbidden_gcloud):
  result = _run('delete.sh', '--project=p', '--yes', '--async', env=fake.env, stdin='')
  assert result.returncode == 0 and 'Delete TPU VM' not in result.stderr
  assert fake.calls() == [['compute', 'tpus', 'tpu-vm', 'delete', 'vision-tpu',
                           '--zone=us-central1-a', '--project=p', '--quiet', '--async']]
  dry = _run('delete.sh', '--dry-run', '--project=p',
             env=_clean_env(TPU_GCLOUD=str(forbidden_gcloud)), stdin='')
  assert _commands(dry.stdout) == [['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete',
                                    'vision-tpu', '--zone=us-central1-a', '--project=p',
                                    '--quiet']]
