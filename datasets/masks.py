"""Read a mask folder as semantic-segmentation samples.

Layout (the common export of labelling tools and of Pascal VOC / Cityscapes-style sets):

    root/classes.txt            one class name per line; line i is pixel value i (1-based)
    root/images/<name>.<ext>    any image format, sub-folders allowed
    root/masks/<name>.png       single-channel PNG (grey or palette indices): 0 background,
                                1..C the classes of classes.txt, 255 ignore

Binary masks, the usual medical export (0 background, 255 object): when classes.txt names one class (or
is absent: the class is then "foreground") and the masks hold only 0 and 255, 255 means that class, not
"ignore". This is decided once from the first non-empty masks and logged.

Only the semantic mask is known, so label, boxes and multi-label are missing (None).
The pairing, classes.txt and paths are checked eagerly; pixel values and sizes when a
sample is read (decoding every mask up front would make opening a large set slow).
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from datasets.image_header import header_size
from datasets.image_io import ImagePolicy, read_label_image
from datasets.images import IMAGE_SUFFIXES, files_inside
from datasets.reader import Reader
from datasets.record import RawRecord
from datasets.sample import IGNORE_INDEX
from datasets.transforms import SampleTransform

logger = logging.getLogger(__name__)

MAX_CLASSES = 254          # 0 is the background and 255 the ignore value of a uint8 mask
MASK_SUFFIXES = {".png", ".tif", ".tiff", ".bmp"}
BINARY_CLASS = "foreground"
BINARY_PEEK = 20           # masks looked at to decide whether a one-class set is binary 0/255


class MaskFolderDataset(Reader):
    def __init__(self, root: Path, images_root: Path | None = None, transform: SampleTransform | None = None,
                 skip_invalid: bool = False, policy: ImagePolicy = ImagePolicy(), split: str = "train",
                 class_names: list[str] | None = None):
        super().__init__(transform, skip_invalid, policy)
        self.root = Path(root)
        self.images_root = Path(images_root) if images_root is not None else self.root / "images"
        self.masks_root = self.root / "masks"
        for folder in (self.images_root, self.masks_root):
            if not folder.is_dir():
                raise FileNotFoundError(f"{folder}: expected a folder (mask-folder layout: root/images, root/masks, "
                                        f"root/classes.txt)")
        self.skipped = {"images": 0, "masks": 0}
        self.pairs = self._pairs()
        if not self.pairs:
            raise ValueError(f"{self.images_root}: expected at least one image with a mask in {self.masks_root}")
        self.class_names, self.binary = self._classes(class_names)
        self.category_ids = list(range(1, len(self.class_names) + 1))  # COCO-style ids, for results files

    def __len__(self) -> int:
        return len(self.pairs)

    def image_path(self, position: int) -> Path:
        return self.pairs[position][0]

    def load(self, position: int) -> RawRecord:
        image_path, mask_path = self.pairs[position]
        image = self.read_image(image_path)
        mask = self.read_mask(mask_path)
        _check_same_size(image_path, image.shape[:2], mask_path, mask.shape)
        return RawRecord(image=image, image_id=position, mask=mask)

    def check_files(self, position: int) -> None:
        """Both headers decode, at the same size (as read: EXIF orientation turns images and masks alike)."""
        image_path, mask_path = self.pairs[position]
        image_size = header_size(image_path, self.policy.exif_orientation)
        _check_same_size(image_path, image_size, mask_path, header_size(mask_path, self.policy.exif_orientation))

    def _keep(self, positions: list[int]) -> None:
        self.pairs = [self.pairs[position] for position in positions]

    def read_mask(self, path: Path) -> np.ndarray:
        mask = read_mask(path, len(self.class_names), self.policy.exif_orientation)
        if self.binary:
            mask = np.where(mask == IGNORE_INDEX, np.uint8(1), mask)
        return mask

    def _classes(self, given: list[str] | None) -> tuple[list[str], bool]:
        """(class names, binary 0/255 masks?)."""
        listed = self.root / "classes.txt"
        names = read_class_names(listed) if listed.is_file() else None
        if given is not None and names is not None and list(given) != names:
            raise ValueError(f"{listed}: expected the classes {list(given)} (the training split's), got {names}")
        names = names or (list(given) if given is not None else None)
        if names is not None and len(names) > 1:
            return names, False
        binary = self._looks_binary()
        if names is None and not binary:
            raise FileNotFoundError(f"{listed}: expected a class list, one name per line (line i = pixel value i); "
                                    f"only masks holding just 0 and 255 (binary) can do without one")
        names = names or [BINARY_CLASS]
        if binary:
            logger.info("%s: binary masks (only 0 and 255): 255 is class %r, not 'ignore'", self.masks_root, names[0])
        return names, binary

    def _looks_binary(self) -> bool:
        """True when the first non-empty masks hold exactly the values 0 and 255."""
        for _, mask_path in self.pairs[:BINARY_PEEK]:
            values = set(np.unique(read_label_image(mask_path, exif_orientation=False)).tolist())
            if values - {0}:
                return values == {0, 255}
        return False

    def _pairs(self) -> list[tuple[Path, Path]]:
        images = files_inside(self.images_root, IMAGE_SUFFIXES, lambda error: self.skip("images", error))
        mask_files = files_inside(self.masks_root, MASK_SUFFIXES, lambda error: self.skip("masks", error))
        masks = {path.relative_to(self.masks_root).with_suffix(""): path for path in mask_files}
        pairs, used = [], {}
        for image in images:
            key = image.relative_to(self.images_root).with_suffix("")
            if key in used:
                raise ValueError(f"{image}: expected one image per name, {used[key].name} has the same name "
                                 f"(both would use the mask {self.masks_root / key}.png)")
            used[key] = image
            if key not in masks:
                self.skip("images", FileNotFoundError(f"{image}: expected its mask {self.masks_root / key}.png, not found"))
                continue
            pairs.append((image, masks[key]))
        for key, path in masks.items():
            if key not in used:
                self.skip("masks", ValueError(f"{path}: expected an image named {key} in {self.images_root}, found none"))
        self.log_skipped()
        return pairs


def _check_same_size(image_path: Path, image_size: tuple[int, ...], mask_path: Path,
                     mask_size: tuple[int, ...]) -> None:
    if tuple(mask_size[:2]) != tuple(image_size[:2]):
        raise ValueError(f"{mask_path}: expected the size of its image {image_path.name}, "
                         f"{image_size[1]}x{image_size[0]}, got {mask_size[1]}x{mask_size[0]}")


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


def read_mask(path: Path, num_classes: int, exif_orientation: bool = True) -> np.ndarray:
    """HxW uint8 with values in 0..num_classes or IGNORE_INDEX; anything else raises, naming the file.
    Grey masks saved with three equal channels are accepted as grey."""
    try:
        mask = read_label_image(path, exif_orientation)
    except ValueError as error:
        raise ValueError(f"{path}: expected a single-channel PNG mask: {error}") from error
    if mask.ndim == 3 and mask.shape[2] in (3, 4) and (mask[..., :3] == mask[..., :1]).all():
        mask = mask[..., 0]
    if mask.ndim != 2 or not np.issubdtype(mask.dtype, np.integer):
        raise ValueError(f"{path}: expected a single-channel integer mask (grey or palette), got shape "
                         f"{mask.shape} of {mask.dtype}; colour masks need the palette_masks format")
    values = np.unique(mask)
    bad = values[((values < 0) | (values > num_classes)) & (values != IGNORE_INDEX)]
    if bad.size:
        raise ValueError(f"{path}: expected pixel values 0 (background), 1..{num_classes} (classes.txt) or "
                         f"{IGNORE_INDEX} (ignore), found {bad[:5].tolist()}")
    return mask.astype(np.uint8)
