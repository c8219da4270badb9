"""Tags that say where a run came from: code version, command line, and which data, down to its bytes.

Never fails the run: outside a git repository (or without git) the commit is "unknown".
"""
from __future__ import annotations

import hashlib
import json
import logging
import subprocess
from pathlib import Path

from pipeline.config.schema import Config, split_paths

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
GIT_TIMEOUT = 10.0                      # seconds; a hung git (network filesystem) must not hold up training
UNKNOWN = "unknown"


def run_tags(config: Config, argv: list[str], repo: Path = REPO) -> dict[str, str]:
    """MLflow tags: the git commit of `repo` and whether tracked files differ from it, the command line,
    and per split (data.train, data.val) its path, dataset name and the sha256 of what defines it."""
    commit = _git(repo, "rev-parse", "HEAD")
    status = _git(repo, "status", "--porcelain", "--untracked-files=no") if commit else None
    tags = {
        "mlflow.source.name": "python -m pipeline train",
        "mlflow.source.git.commit": commit or UNKNOWN,   # MLflow's own key: the UI shows it with the run
        "git.dirty": UNKNOWN if status is None else str(bool(status)).lower(),
        "command": " ".join(argv),
    }
    for split, location, format in data_splits(config):
        tags[f"data.{split}"] = str(location)
        tags[f"data.{split}.name"] = dataset_name(location, format)
        tags[f"data.{split}.sha256"] = dataset_digest(location, format)
    return tags


def data_splits(config: Config) -> list[tuple[str, Path, str]]:
    """(tag key, location, format) of every split: train and val, or each mixture source's ("<name>.train")."""
    if not config.data.sources:
        return [(split, split_paths(getattr(config.data, split))[0], config.data.format) for split in ("train", "val")]
    return [(f"{source.name}.{split}", Path(getattr(source, split)), source.format)
            for source in config.data.sources for split in ("train", "val") if getattr(source, split)]


def dataset_name(location: Path, format: str) -> str:
    """COCO: the file's info.description when it has one, else its folder's name; a folder: its name."""
    if format == "coco":
        try:
            description = json.loads(location.read_text(encoding="utf-8")).get("info", {}).get("description")
        except (OSError, ValueError, AttributeError):
            description = None
        return description or location.parent.name
    return location.name


def dataset_digest(location: Path, format: str) -> str:
    """An annotation file (COCO json, YOLO data.yaml, VOC list): its sha256. A folder (class-per-folder
    tree, mask folder) has no such file; the sorted list of its relative file paths stands for it."""
    try:
        if location.is_file():
            with location.open("rb") as f:
                return hashlib.file_digest(f, "sha256").hexdigest()
        listing = sorted(p.relative_to(location).as_posix() for p in location.rglob("*") if p.is_file())
        return hashlib.sha256("\n".join(listing).encode()).hexdigest()
    except OSError as error:
        log.warning("cannot hash %s for the run's tags: %s", location, error)
        return UNKNOWN


def _git(repo: Path, *args: str) -> str | None:
    """Output of one git command in `repo`, or None when it cannot tell (no git, not a repository, hung)."""
    try:
        done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=GIT_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
