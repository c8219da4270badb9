"""Read a mask folder as semantic-segmentation samples.

Layout (the common export of labelling tools and of Pascal VOC / Cityscapes-style sets):

    root/classes.txt            one class name per line; line i is pixel value i (1-based)
    root/images/<name>.<ext>    any image format, sub-folders allowed
    root/masks/<name>.png       single-channel 8-bit PNG (grey or palette): 0 background,
                                1..C the classes of classes.txt, 255 ignore

Only the semantic mask is known, so label, boxes and multi-label are missing (None).
The pairing, classes.txt and paths are checked eagerly; pixel values and sizes when a
sample is read (decoding every mask up front would make opening a large set slow).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from datasets.image_io import load_rgb
from datasets.images import files_inside
from datasets.imagefolder import IMAGE_SUFFIXES
from datasets.record import RawRecord
from datasets.sample import IGNORE_INDEX, Sample
from datasets.transforms import apply_transform, to_tensor_transform

logger = logging.getLogger(__name__)

MAX_CLASSES = 254          # 0 is the background and 255 the ignore value of a uint8 mask
MASK_MODES = {"L", "P"}    # PIL modes whose pixels are the stored 8-bit values (P: palette indices)
MAX_REASONS = 5


class MaskFolderDataset(Dataset):
    def __init__(self, root: Path, images_root: Path | None = None, transform=None, skip_invalid: bool = False):
        self.root = Path(root)
        self.images_root = Path(images_root) if images_root is not None else self.root / "images"
        self.masks_root = self.root / "masks"
        for folder in (self.images_root, self.masks_root):
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder}: expected a folder (mask-folder layout: root/images, root/masks, "
                                        f"root/classes.txt)")
        self.transform = transform if transform is not None else to_tensor_transform()
        self.skip_invalid = skip_invalid
        self.class_names = read_class_names(self.root / "classes.txt")
        self.category_ids = list(range(1, len(self.class_names) + 1))  # COCO-style ids, for results files
        self.skipped = {"images": 0, "masks": 0}
        self.pairs = self._pairs()
        if not self.pairs:
            raise ValueError(f"{self.images_root}: expected at least one image with a mask in {self.masks_root}")

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> Sample:
        return apply_transform(self.transform, self.read_record(index))

    def read_record(self, index: int) -> RawRecord:
        """A bad image or mask raises, or with skip_invalid is replaced by the next readable pair
        (counted in `skipped`, per worker process)."""
        for attempt in range(len(self)):
            position = (index + attempt) % len(self)
            try:
                image, mask = self._read_pair(position)
                return RawRecord(image=image, image_id=position, mask=mask)
            except (OSError, ValueError) as error:
                if not self.skip_invalid:
                    raise
                self.skipped["images"] += 1
                logger.warning("skipping an unreadable image/mask pair: %s", error)
        raise ValueError(f"{self.root}: no image/mask pair could be read")

    def _read_pair(self, position: int) -> tuple[np.ndarray, np.ndarray]:
        image_path, mask_path = self.pairs[position]
        image = load_rgb(image_path)
        mask = read_mask(mask_path, len(self.class_names))
        if mask.shape != image.shape[:2]:
            raise ValueError(f"{mask_path}: expected the size of its image {image_path.name}, "
                             f"{image.shape[1]}x{image.shape[0]}, got {mask.shape[1]}x{mask.shape[0]}")
        return image, mask

    def _pairs(self) -> list[tuple[Path, Path]]:
        images = files_inside(self.images_root, IMAGE_SUFFIXES)
        masks = {path.relative_to(self.masks_root).with_suffix(""): path
                 for path in files_inside(self.masks_root, {".png"})}
        pairs, used, problems = [], {}, []
        for image in images:
            key = image.relative_to(self.images_root).with_suffix("")
            if key in used:
                raise ValueError(f"{image}: expected one image per name, {used[key].name} has the same name "
                                 f"(both would use the mask {self.masks_root / key}.png)")
            used[key] = image
            if key not in masks:
                problems.append(("images", FileNotFoundError(
                    f"{image}: expected its mask {self.masks_root / key}.png, not found")))
                continue
            pairs.append((image, masks[key]))
        problems += [("masks", ValueError(f"{path}: expected an image named {key} in {self.images_root}, found none"))
                     for key, path in masks.items() if key not in used]
        self._record_problems(problems)
        return pairs

    def _record_problems(self, problems: list[tuple[str, Exception]]) -> None:
        if problems and not self.skip_invalid:
            raise problems[0][1]
        for kind, _ in problems:
            self.skipped[kind] += 1
        if problems:
            logger.warning("%s: skipped %s; first reasons:\n  %s", self.root, self.skipped,
                           "\n  ".join(str(error) for _, error in problems[:MAX_REASONS]))


def read_class_names(path: Path) -> list[str]:
    """Class names, one per line (surrounding spaces and trailing empty lines ignored), unique regardless of case."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: expected a class list, one name per line (line i = pixel value i)")
    names = [line.strip() for line in path.read_text().splitlines()]
    while names and not names[-1]:
        names.pop()
    if not names:
        raise ValueError(f"{path}: expected at least one class name, got an empty file")
    if len(names) > MAX_CLASSES:
        raise ValueError(f"{path}: expected at most {MAX_CLASSES} classes (0 = background, 255 = ignore), "
                         f"got {len(names)}")
    first_line: dict[str, int] = {}
    for line, name in enumerate(names, start=1):
        if not name:
            raise ValueError(f"{path}: line {line}: expected a class name, got an empty line")
        key = name.casefold()
        if key in first_line:
            raise ValueError(f"{path}: line {line}: expected unique class names, {name!r} repeats line "
                             f"{first_line[key]} ({names[first_line[key] - 1]!r})")
        first_line[key] = line
    return names


def read_mask(path: Path, num_classes: int) -> np.ndarray:
    """HxW uint8 with values in 0..num_classes or IGNORE_INDEX; anything else raises, naming the file."""
    try:
        with Image.open(path) as opened:
            mode = opened.mode
            mask = np.array(opened) if mode in MASK_MODES else None
    except OSError as error:
        raise ValueError(f"{path}: expected a single-channel 8-bit PNG mask: {error}") from error
    if mask is None:
        raise ValueError(f"{path}: expected a single-channel 8-bit PNG mask (grey or palette), got PIL mode {mode}")
    counts = np.bincount(mask.ravel(), minlength=256)
    counts[: num_classes + 1] = 0
    counts[IGNORE_INDEX] = 0
    bad = np.flatnonzero(counts)
    if bad.size:
        raise ValueError(f"{path}: expected pixel values 0 (background), 1..{num_classes} (classes.txt) or "
                         f"{IGNORE_INDEX} (ignore), found {bad[:5].tolist()}")
    return mask

