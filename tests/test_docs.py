"""The user docs do not rot: their config specs and fields exist, and their links resolve."""

import glob
import importlib.util
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKDOWN = ['README.md', 'docs/vit.md', 'docs/igpt.md', 'docs/metrics.md', 'docs/study.md',
            'docs/results.md', 'tpu/README.md']
SOURCES = MARKDOWN + ['tpu/*.sh', 'configs/*.py']
# Words that stand for a value in `configs/X.py:ARGS` (MODEL,DATASET, ...), not a real value.
PLACEHOLDERS = {'MODEL', 'DATASET', 'SIZE', 'OBJECTIVE', 'PRESET', 'FOLDER', 'CIFAR10', 'ARGS'}
_MENTION = re.compile(r'configs/(\w+)\.py(?::([\w.,/+-]*[\w/]))?|--config\.([\w.]+)=')


def _sources():
  for pattern in SOURCES:
    yield from sorted(glob.glob(os.path.join(ROOT, pattern)))


def _load(name, arg):
  spec = importlib.util.spec_from_file_location(f'_docs_config_{name}',
                                                os.path.join(ROOT, 'configs', f'{name}.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def _fields(config, prefix=''):
  for key, value in config.items():
    if hasattr(value, 'items'):
      yield from _fields(value, f'{prefix}{key}.')
    else:
      yield prefix + key


@pytest.mark.parametrize('path', list(_sources()), ids=lambda p: os.path.relpath(p, ROOT))
def test_documented_configs_and_fields_exist(path, monkeypatch):
  """Each `configs/X.py:ARGS` loads, and each `--config.FIELD=` after it is a field of it."""
  monkeypatch.chdir(ROOT)  # configs read ../shared relative to the project root
  with open(path, encoding='utf-8') as f:
    text = f.read().replace('\\\n', ' ')
  fields, problems = None, []
  for match in _MENTION.finditer(text):
    name, arg, field = match.groups()
    if name:
      if not os.path.isfile(os.path.join(ROOT, 'configs', f'{name}.py')):
        fields = None
        continue
      if arg and PLACEHOLDERS.intersection(re.split(r'[,\[\]]', arg)):
        arg = None
      try:
        fields = set(_fields(_load(name, arg)))
      except Exception as e:  # pylint: disable=broad-except
        problems.append(f'{match.group(0)}: {e}')
        fields = None
    elif fields is not None and field != 'FIELD' and field not in fields:
      problems.append(f'--config.{field}= is no field of the config named before it')
  assert not problems, problems


def _anchors(path):
  with open(path, encoding='utf-8') as f:
    headings = [m.group(1) for m in re.finditer(r'^#+ (.*)$', f.read(), re.M)]
  return {re.sub(r'[^\w\- ]', '', h.strip().lower()).replace(' ', '-') for h in headings}


@pytest.mark.parametrize('doc', MARKDOWN)
def test_relative_links_resolve(doc):
  """Links and images to files of the project exist, and so do their #anchors."""
  with open(os.path.join(ROOT, doc), encoding='utf-8') as f:
    text = f.read()
  broken = []
  for match in re.finditer(r'\]\(([^)\s]+)\)|src="([^"]+)"', text):
    target = match.group(1) or match.group(2)
    if re.match(r'[a-z]+:', target):
      continue
    file, _, anchor = target.partition('#')
    resolved = os.path.normpath(os.path.join(ROOT, os.path.dirname(doc), file or doc))
    if not os.path.exists(resolved):
      broken.append(target)
    elif anchor and resolved.endswith('.md') and anchor not in _anchors(resolved):
      broken.append(target)
  assert not broken, broken
