"""What a run leaves in its workdir, for the tests that a refused or repeated run changes
nothing (tests/test_{vit,igpt,gan}_workdir.py)."""

import os


def tree(root):
  """Every file and folder under `root` (not `root` itself), with sizes: sorted pairs."""
  return sorted((os.path.relpath(os.path.join(d, n), root), os.path.getsize(os.path.join(d, n)))
                for d, _, names in os.walk(root) for n in names + ['']
                if n or d != str(root))


def snapshot(root):
  """Every file under `root` with its size and modification time: what a re-run may not
  change (a file rewritten with the same bytes counts as changed)."""
  return {os.path.relpath(os.path.join(d, n), root): (os.stat(os.path.join(d, n)).st_size,
                                                      os.stat(os.path.join(d, n)).st_mtime_ns)
          for d, _, names in os.walk(root) for n in names}
