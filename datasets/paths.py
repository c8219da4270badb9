"""The one path policy of every reader: files named by annotations, and files found in dataset folders, stay
inside the dataset.

Two checks, because they catch different things:
- `is_inside(name)` is lexical: a name from an annotation file ('..', an absolute path) must not point out of
  the folder it is joined to. Lexical on purpose: an images folder that is itself a symlink to another disk is
  common and legitimate.
- `resolves_inside(path, root)`: a file inside the folder whose real path (through symlinks) leaves the root is
  refused too, by every reader; like any bad entry it raises, or with `skip_invalid` is a counted skip.
"""
from __future__ import annotations

import os
from pathlib import Path


def is_inside(file_name: str) -> bool:
    """True if file_name stays inside the folder it is joined to ('..' and absolute paths do not)."""
    normal = os.path.normpath(file_name)
    return not os.path.isabs(normal) and normal != ".." and not normal.startswith(".." + os.sep)


def resolves_inside(path: Path, root: Path) -> bool:
    """True if the real path of `path` (symlinks followed) is inside the real path of `root`."""
    return Path(path).resolve().is_relative_to(Path(root).resolve())
