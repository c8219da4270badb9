"""`predict`'s image arguments -> the images to predict, each once, each with a unique output name.

An argument is a file, a folder (every image under it, recursive, sorted, hidden files skipped) or a glob
pattern (quoted, so the shell leaves it alone: "data/**/*.tif"). Names are what output files are called
(`masks/<task>/<name>.png`): relative to the folder argument for files found in one ("site_b/tile_003"), the
stem otherwise. Names that would collide (a.png and a.tif; x.png in two folders) are widened until they do not:
first with the folders they came from ("site_a/x", "site_b/x"), then with the suffix ("a_png", "a_tif"), last
with a counter ("a_2"). Names are compared case-insensitively, so outputs never overwrite each other on a
case-insensitive disk either.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

from datasets.image_io import IMAGE_SUFFIXES
from datasets.images import files_inside
from pipeline.config.typed import DataCheckError
from pipeline.inference.predictions import InputImage

SUFFIX_LIST = ", ".join(sorted(IMAGE_SUFFIXES))


@dataclass
class _Found:
    path: Path
    name: str       # before disambiguation
    anchor: Path    # the folder the name is relative to (absolute, normalised): widened with its parts on a clash


def expand_inputs(items: list[str]) -> list[InputImage]:
    """Every image the arguments name, in argument order (each argument's own files sorted), each file once
    (by resolved path: the first argument naming it gives its name). Raises DataCheckError naming the argument
    for a missing path, a folder or pattern without images, or a file that is not an image."""
    if not items:
        raise DataCheckError(f"no images given; expected image files, folders or patterns ({SUFFIX_LIST})")
    found: list[_Found] = []
    seen: set[Path] = set()
    for item in items:
        for entry in _expand(item):
            key = entry.path.resolve()
            if key not in seen:
                seen.add(key)
                found.append(entry)
    names = _unique_names(found)
    return [InputImage(path=entry.path, name=name) for entry, name in zip(found, names)]


def _expand(item: str) -> list[_Found]:
    path = Path(item)
    if path.is_dir():
        return _folder(item, path)
    if path.is_file():
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            raise DataCheckError(f"{item}: not an image file; expected one of {SUFFIX_LIST}")
        return [_Found(path, path.stem, _absolute(path.parent))]
    return _pattern(item)


def _folder(item: str, folder: Path) -> list[_Found]:
    def refuse(error: Exception) -> None:
        # files_inside's dataset rule: a link leading out of the folder is not taken silently.
        raise DataCheckError(f"{item}: {error}; give that file (or its target) as an argument of its own")

    files = files_inside(folder, IMAGE_SUFFIXES, refuse)
    if not files:
        raise DataCheckError(f"{item}: no image files ({SUFFIX_LIST}) found")
    anchor = _absolute(folder)
    return [_Found(file, file.relative_to(folder).with_suffix("").as_posix(), anchor) for file in files]


def _pattern(item: str) -> list[_Found]:
    matches = sorted(glob.glob(item, recursive=True))
    if not matches:
        raise DataCheckError(f"{item}: no such file or folder, and no file matches it as a pattern")
    files = [Path(m) for m in matches if Path(m).suffix.lower() in IMAGE_SUFFIXES and Path(m).is_file()]
    if not files:
        folders = sum(Path(m).is_dir() for m in matches)
        hint = f" (it matches {folders} folder(s): give each folder, or a pattern of files such as dir/**/*.png)" \
            if folders else ""
        raise DataCheckError(f"{item}: no image files ({SUFFIX_LIST}) found{hint}")
    return [_Found(file, file.stem, _absolute(file.parent)) for file in files]


def _absolute(folder: Path) -> Path:
    # abspath, not resolve: a folder reached through a link keeps the name the user knows it by, and ".." goes.
    return Path(os.path.abspath(folder))


def _unique_names(found: list[_Found]) -> list[str]:
    names = [_safe(entry.name) for entry in found]
    for widen in (_with_folders, _with_suffix):
        for group in _clashes(names):
            widened = widen([found[i] for i in group], [names[i] for i in group])
            for i, name in zip(group, widened):
                names[i] = _safe(name)
    return _with_counters(names)


def _clashes(names: list[str]) -> list[list[int]]:
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name.casefold(), []).append(i)
    return [group for group in groups.values() if len(group) > 1]


def _with_folders(entries: list[_Found], names: list[str]) -> list[str]:
    """Prefix each name with as many trailing parts of its anchor folder as tell the anchors apart."""
    anchors = [entry.anchor.parts[1:] for entry in entries]  # without the root ("/", "C:\\")
    if len(set(anchors)) == 1:
        return names
    for depth in range(1, max(len(a) for a in anchors) + 1):
        prefixes = [a[-depth:] for a in anchors]
        if len(set(prefixes)) == len(set(anchors)):
            break
    return ["/".join((*prefix, name)) for prefix, name in zip(prefixes, names)]


def _with_suffix(entries: list[_Found], names: list[str]) -> list[str]:
    suffixes = [entry.path.suffix.lower().lstrip(".") for entry in entries]
    if len(set(suffixes)) == 1:
        return names
    return [f"{name}_{suffix}" for name, suffix in zip(names, suffixes)]


def _with_counters(names: list[str]) -> list[str]:
    """The last resort (x.png and X.PNG side by side): the first keeps its name, the others get _2, _3, ..."""
    taken: set[str] = set()
    unique = []
    for name in names:
        candidate, count = name, 1
        while candidate.casefold() in taken:
            count += 1
            candidate = f"{name}_{count}"
        taken.add(candidate.casefold())
        unique.append(candidate)
    return unique


def _safe(name: str) -> str:
    """Outputs stay inside --out whatever a file is called ("...png" has the stem ".."): no part is "", "." or
    "..", and the name is relative."""
    parts = [part if part not in ("", ".", "..") else "_" for part in name.replace("\\", "/").split("/")]
    return "/".join(parts)

