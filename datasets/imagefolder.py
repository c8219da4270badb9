"""Read a class-per-folder image tree (`root/<class name>/<image>`) as image-label samples.

Only the image-level label (and its one-hot multi-label) is known, so masks
and boxes are missing (None), never empty. Class index i is the i-th folder name in sorted order.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from datasets.image_io import first_readable, load_rgb
from datasets.record import RawRecord
from datasets.sample import Sample
from datasets.transforms import apply_transform, to_tensor_transform


IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"}


class ImageFolderDataset(Dataset):
    def __init__(self, root: Path, images_root: Path | None = None, transform=None, skip_invalid: bool = False):
        self.root = Path(root)
        if images_root is not None:
            raise ValueError(f"{self.root}: images_root: an image folder holds its own images; expected none")
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: expected a folder with one sub-folder of images per class")
        self.transform = transform if transform is not None else to_tensor_transform()
        self.skip_invalid = skip_invalid
        self.class_names = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.class_names:
            raise ValueError(f"{self.root}: expected one sub-folder per class, found none")
        self.category_ids = list(range(1, len(self.class_names) + 1))  # COCO-style ids, for results files
        self.files = [(path, label) for label, name in enumerate(self.class_names)
                      for path in self._images(self.root / name)]
        self.skipped = {"images": 0}

    def _images(self, folder: Path) -> list[Path]:
        root = self.root.resolve()
        found = []
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if not path.resolve().is_relative_to(root):  # a symlink must not lead outside the dataset
                raise ValueError(f"{path}: resolves outside the dataset root {root}")
            found.append(path)
        return found

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> Sample:
        return apply_transform(self.transform, self.read_record(index))

    def read_record(self, index: int) -> RawRecord:
        """An undecodable file raises, or with skip_invalid is replaced by the next one (counted, logged)."""
        return first_readable(index, len(self), self._record, self.skip_invalid, self.skipped, self.root)

    def _record(self, position: int) -> RawRecord:
        path, label = self.files[position]
        return RawRecord(image=load_rgb(path), image_id=position, label=label,
                         multi_label=np.eye(len(self.class_names), dtype=np.float32)[label])
