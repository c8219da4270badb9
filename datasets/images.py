"""Read a folder of unlabelled images (any image files under root, recursive, sorted by path).

Image only: every target is missing (None). For autoencoder pre-training, or as the
reconstruction-only part of a dataset mixture.
"""
from __future__ import annotations

from pathlib import Path

from datasets.image_io import IMAGE_SUFFIXES, ImagePolicy
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
        self.files = files_inside(self.root, IMAGE_SUFFIXES)
        if not self.files:
            raise ValueError(f"{self.root}: expected image files ({', '.join(sorted(IMAGE_SUFFIXES))}), found none")

    def __len__(self) -> int:
        return len(self.files)

    def image_path(self, position: int) -> Path:
        return self.files[position]

    def load(self, position: int) -> RawRecord:
        return RawRecord(image=self.read_image(self.files[position]), image_id=position)


def files_inside(folder: Path, suffixes: set[str]) -> list[Path]:
    """Files under `folder` with one of these (lower-case) suffixes, recursive, sorted; hidden files and
    folders skipped. A symlink that leads outside the folder is refused."""
    root = folder.resolve()
    found = []
    for path in sorted(folder.rglob("*")):
        if any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        if path.suffix.lower() not in suffixes:
            continue
        if not path.resolve().is_relative_to(root):
            raise ValueError(f"{path}: resolves outside the dataset root {root}")
        if path.is_file():
            found.append(path)
    return found
