"""Read a folder of unlabelled images (any image files under root, recursive, sorted by path).

Image only: every target is missing (None). For autoencoder pre-training, or as the
reconstruction-only part of a dataset mixture.
"""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from datasets.image_io import first_readable, load_rgb
from datasets.imagefolder import IMAGE_SUFFIXES
from datasets.record import RawRecord
from datasets.sample import Sample
from datasets.transforms import apply_transform, to_tensor_transform



class ImageOnlyDataset(Dataset):
    def __init__(self, root: Path, images_root: Path | None = None, transform=None, skip_invalid: bool = False):
        self.root = Path(root)
        if images_root is not None:
            raise ValueError(f"{self.root}: images_root: an image folder holds its own images; expected none")
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: expected a folder of images")
        self.transform = transform if transform is not None else to_tensor_transform()
        self.skip_invalid = skip_invalid
        self.class_names: list[str] = []
        self.category_ids: list[int] = []
        self.files = files_inside(self.root, IMAGE_SUFFIXES)
        if not self.files:
            raise ValueError(f"{self.root}: expected image files ({', '.join(sorted(IMAGE_SUFFIXES))}), found none")
        self.skipped = {"images": 0}

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:
        return apply_transform(self.transform, self.read_record(index))

    def read_record(self, index: int) -> RawRecord:
        """An undecodable file raises, or with skip_invalid is replaced by the next one (counted, logged)."""
        return first_readable(index, len(self), lambda i: RawRecord(image=load_rgb(self.files[i]), image_id=i),
                              self.skip_invalid, self.skipped, self.root)


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
