"""Read a folder of unlabelled images (any image files under root, recursive, sorted by path).

Image only: every target is missing (None). For autoencoder pre-training, or as the
reconstruction-only part of a dataset mixture.
"""
from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from datasets.image_io import IMAGE_SUFFIXES, ImagePolicy
from datasets.paths import resolves_inside
from datasets.reader import Reader
from datasets.record import RawRecord
from datasets.transforms import SampleTransform


class ImageOnlyDataset(Reader):
    def __init__(self, root: Path, images_root: Path | None = None, transform: SampleTransform | None = None,
                 skip_invalid: bool = False, policy: ImagePolicy = ImagePolicy(), split: str = "train",
                 class_names: list[str] | None = None):
        super().__init__(transform, skip_invalid, policy)
        self.root = Path(root)
        if images_root is not None:
            raise ValueError(f"{self.root}: images_root: an image folder holds its own images; expected none")
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: expected a folder of images")
        self.class_names: list[str] = list(class_names or [])
        self.category_ids: list[int] = list(range(1, len(self.class_names) + 1))
        self.files = files_inside(self.root, IMAGE_SUFFIXES, lambda error: self.skip("images", error))
        self.log_skipped()
        if not self.files:
            raise ValueError(f"{self.root}: expected image files ({', '.join(sorted(IMAGE_SUFFIXES))}), found none")

    def __len__(self) -> int:
        return len(self.files)

    def image_path(self, position: int) -> Path:
        return self.files[position]

    def load(self, position: int) -> RawRecord:
        return RawRecord(image=self.read_image(self.files[position]), image_id=position)

    def _keep(self, positions: list[int]) -> None:
        self.files = [self.files[position] for position in positions]


def _raise(error: Exception) -> None:
    raise error


def files_inside(folder: Path, suffixes: set[str], refuse: Callable[[Exception], None] = _raise) -> list[Path]:
    """Files under `folder` with one of these (lower-case) suffixes, recursive, sorted; hidden files and
    folders skipped. A file whose real path leaves the folder (a symlink out) is handed to `refuse` (a reader's
    `skip`: raise, or count it with skip_invalid) and left out."""
    found = []
    for path in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if path.suffix.lower() not in suffixes:
            continue
        if not resolves_inside(path, folder):
            refuse(ValueError(f"{path}: resolves outside the dataset root {folder.resolve()}"))
            continue
        if path.is_file():
            found.append(path)
    return found
