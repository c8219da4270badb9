"""Read a class-per-folder image tree (`root/<class name>/<image>`) as image-label samples.

Only the image-level label (and its one-hot multi-label) is known, so masks
and boxes are missing (None), never empty. Class index i is the i-th folder name in sorted order
(or of `class_names`, e.g. the training split's, which a validation split may cover only in part).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from datasets.image_io import IMAGE_SUFFIXES, ImagePolicy
from datasets.paths import resolves_inside
from datasets.reader import IMAGE_LABELS, AnnotationIndex, Reader, count_per_class
from datasets.record import RawRecord
from datasets.transforms import SampleTransform


class ImageFolderDataset(Reader):
    def __init__(self, root: Path, images_root: Path | None = None, transform: SampleTransform | None = None,
                 skip_invalid: bool = False, policy: ImagePolicy = ImagePolicy(), split: str = "train",
                 class_names: list[str] | None = None):
        super().__init__(transform, skip_invalid, policy)
        self.root = Path(root)
        if images_root is not None:
            raise ValueError(f"{self.root}: images_root: an image folder holds its own images; expected none")
        if not self.root.is_dir():
            raise FileNotFoundError(f"{self.root}: expected a folder with one sub-folder of images per class")
        folders = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not folders:
            raise ValueError(f"{self.root}: expected one sub-folder per class, found none")
        unknown = sorted(set(folders) - set(class_names)) if class_names is not None else []
        if unknown:
            raise ValueError(f"{self.root}: class folders {unknown} are not among the classes {list(class_names)}")
        self.class_names = list(class_names) if class_names is not None else folders
        self.category_ids = list(range(1, len(self.class_names) + 1))  # COCO-style ids, for results files
        self.files = [(path, label) for label, name in enumerate(self.class_names)
                      for path in self._images(self.root / name)]
        self.log_skipped()

    def _images(self, folder: Path) -> list[Path]:
        if not folder.is_dir():
            return []
        found = []
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            if not resolves_inside(path, self.root):  # the policy of every reader: datasets/paths.py
                self.skip("images", ValueError(f"{path}: resolves outside the dataset root {self.root.resolve()}"))
                continue
            found.append(path)
        return found

    def _keep(self, positions: list[int]) -> None:
        self.files = [self.files[position] for position in positions]

    def __len__(self) -> int:
        return len(self.files)

    def image_path(self, position: int) -> Path:
        return self.files[position][0]

    def annotation_index(self) -> AnnotationIndex:
        labels = count_per_class([label for _, label in self.files], len(self.class_names))
        return AnnotationIndex({IMAGE_LABELS: labels}, ["labels"], unlabelled=[])

    def load(self, position: int) -> RawRecord:
        path, label = self.files[position]
        return RawRecord(image=self.read_image(path), image_id=position, label=label,
                         multi_label=np.eye(len(self.class_names), dtype=np.float32)[label])
