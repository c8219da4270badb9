"""Checkpoints: written atomically, read without executing pickled code; last, best and the last K."""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from backbones.weights import WeightsFileError, read_torch_file

log = logging.getLogger(__name__)


@contextmanager
def _replaced_atomically(path: Path) -> Iterator[str]:
    """Yield a temp file in `path`'s folder to write; it replaces `path` only once written, so a crash never
    leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    with _replaced_atomically(path) as tmp:
        torch.save(state, tmp)
    return path


def atomic_copy(source: Path, target: Path) -> Path:
    with _replaced_atomically(target) as tmp:
        shutil.copyfile(source, tmp)
    return target


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    state = read_torch_file(path)   # FileNotFoundError naming the path when it is not there
    if not isinstance(state, dict) or "model" not in state:
        raise WeightsFileError(f"{path}: expected a training checkpoint of this pipeline (a mapping with 'model', "
                               f"'config', ...), got {type(state).__name__}"
                               + (f" with keys {sorted(map(str, state))[:6]}" if isinstance(state, dict) else ""))
    return state


class CheckpointFolder:
    """One run's folder: last.pt (always the newest), best.pt (best monitored value so far) and, with
    keep_last K, step-<global step>.pt for the K newest."""

    def __init__(self, folder: Path, keep_last: int = 0) -> None:
        self.folder, self.keep_last = Path(folder), keep_last
        self.last, self.best = self.folder / "last.pt", self.folder / "best.pt"

    def write(self, state: dict[str, Any], global_step: int, is_best: bool) -> Path:
        try:
            save_checkpoint(state, self.last)
        except OSError as error:
            kept = f"the previous one is kept: {self.last}" if self.last.exists() else "no earlier checkpoint exists"
            raise OSError(f"could not write the checkpoint of step {global_step} to {self.last} ({error}); "
                          f"{kept}") from error
        if is_best:
            atomic_copy(self.last, self.best)
        if self.keep_last > 0:
            atomic_copy(self.last, self.folder / f"step-{global_step}.pt")
            for old in self.step_files()[:-self.keep_last]:
                old.unlink()
        return self.last

    def step_files(self) -> list[Path]:
        return sorted(self.folder.glob("step-*.pt"), key=lambda p: int(p.stem.removeprefix("step-")))


def newest_readable_checkpoint(path: Path) -> tuple[Path, dict[str, Any]]:
    """`path` and its state; when it cannot be read, the newest readable checkpoint in its folder (step-N.pt,
    best.pt), with a warning. Raises the original error when none is readable; FileNotFoundError when `path`
    is not there at all (a wrong path is not a damaged run)."""
    try:
        return path, load_checkpoint(path)
    except WeightsFileError as error:
        for candidate in sorted((p for p in Path(path).parent.glob("*.pt") if p != Path(path)),
                                key=lambda p: p.stat().st_mtime, reverse=True):
            try:
                state = load_checkpoint(candidate)
            except WeightsFileError:
                continue
            log.warning("%s; resuming from %s instead, the newest readable checkpoint beside it (step %d)",
                        error, candidate, state["position"]["global_step"])
            return candidate, state
        raise WeightsFileError(f"{error}; no other readable checkpoint in {Path(path).parent}") from error


def latest_checkpoint(runs_folder: Path) -> Path | None:
    """The newest `<runs_folder>/<run>/last.pt`: what `--resume auto` continues."""
    candidates = list(Path(runs_folder).glob("*/last.pt"))
    return max(candidates, key=lambda p: p.stat().st_mtime) if candidates else None
