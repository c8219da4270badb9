"""Read a mask folder whose masks are colour images, with a table from colours to classes.

Layout: the mask folder's (`datasets.masks`: root/images/<name>.<ext>, root/masks/<name>.png, paired by
name), with the colour table instead of classes.txt, one of:

    root/class_dict.csv     CamVid style: a header `name,r,g,b`, then one row per colour
    root/labelmap.txt       CVAT / VOC export style: `name:r,g,b:parts:actions` per line; lines starting
                            with # are comments

Rules, in the table's order:
- a row named `background` (any case) is mask value 0;
- rows named `void`, `ignore`, `unlabelled` or `unlabeled` (any case) are 255, ignored by losses and metrics;
- every other row is a class, numbered 1..C in order of first appearance (`class_names`); rows repeating a
  name give that class another colour;
- a pixel whose colour is in no row is 255 (ignore) and counted in `unknown_pixels`. More than 5% of an
  image's pixels in unknown colours raises a ValueError naming the mask file and its commonest unknown colours:
  the table is likely wrong, or the masks were JPEG-compressed (which blends colours at every edge).

Masks are read as colours: a palette PNG gives its palette's colours, not its indices (use `masks` for
index masks); an alpha channel is dropped; a grey mask matches the rows with r = g = b.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from datasets.image_io import decode
from datasets.masks import MAX_CLASSES, MaskFolderDataset
from datasets.sample import IGNORE_INDEX

logger = logging.getLogger(__name__)

BACKGROUND_NAMES = {"background"}
IGNORE_NAMES = {"void", "ignore", "unlabelled", "unlabeled"}
MAX_UNKNOWN_FRACTION = 0.05
TABLES = ("class_dict.csv", "labelmap.txt")


class PaletteMaskDataset(MaskFolderDataset):
    """MaskFolderDataset with the class list and mask values taken from a colour table."""
    table: Path               # the colour table read
    colours: dict[int, int]   # packed 0xRRGGBB -> mask value

    unknown_pixels = 0  # pixels read as ignore because their colour is in no row (this process)

    def _classes(self, given: list[str] | None) -> tuple[list[str], bool]:
        """(class names, binary?): binary 0/255 masks are a grey-mask notion, never the case here."""
        self.table = table = self._table_file()
        rows = read_class_dict(table) if table.name == "class_dict.csv" else read_labelmap(table)
        names, self.colours = colour_values(rows, table)
        if given is not None and list(given) != names:
            raise ValueError(f"{table}: expected the classes {list(given)} (the training split's), got {names}")
        return names, False

    def read_mask(self, path: Path) -> np.ndarray:
        try:
            colour = decode(path, self.policy.exif_orientation)
        except ValueError as error:
            raise ValueError(f"{path}: expected a colour mask image: {error}") from error
        if colour.ndim == 3 and colour.shape[2] < 3:  # grey, or grey + alpha
            colour = colour[..., 0]
        if colour.dtype != np.uint8 or colour.ndim not in (2, 3):
            raise ValueError(f"{path}: expected an 8-bit RGB colour mask, got shape {colour.shape} of {colour.dtype}")
        rgb = np.repeat(colour[..., None], 3, axis=2) if colour.ndim == 2 else colour[..., :3]
        packed = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
        keys, inverse, counts = np.unique(packed, return_inverse=True, return_counts=True)
        values = np.array([self.colours.get(int(key), -1) for key in keys])
        unknown = values < 0
        if unknown.any():
            self._unknown(path, keys[unknown], counts[unknown], packed.size)
        return np.where(unknown, IGNORE_INDEX, values).astype(np.uint8)[inverse.reshape(packed.shape)]

    def _unknown(self, path: Path, keys: np.ndarray, counts: np.ndarray, pixels: int) -> None:
        order = np.argsort(-counts, kind="stable")[:5]
        common = ", ".join(f"{_rgb(keys[i])} ({counts[i]} px)" for i in order)
        if counts.sum() > MAX_UNKNOWN_FRACTION * pixels:
            raise ValueError(f"{path}: expected the colours of {self.table.name}, but "
                             f"{counts.sum() / pixels:.1%} of the pixels have other colours, most often {common}: "
                             f"a wrong colour table, or JPEG-compressed masks?")
        if not self.unknown_pixels:
            logger.warning("%s: %d pixels of colours not in the table read as ignore (%s); counted in unknown_pixels",
                           path, counts.sum(), common)
        self.unknown_pixels += int(counts.sum())

    def _table_file(self) -> Path:
        found = [self.root / name for name in TABLES if (self.root / name).is_file()]
        if len(found) != 1:
            raise (FileNotFoundError if not found else ValueError)(
                f"{self.root}: expected one colour table, {' or '.join(TABLES)}, found "
                f"{[path.name for path in found] or 'none'}")
        return found[0]


def read_class_dict(path: Path) -> list[tuple[str, tuple[int, int, int], int]]:
    """(name, colour, line) rows of a CamVid class_dict.csv."""
    lines = path.read_text().splitlines()
    header = [cell.strip().lower() for cell in next(csv.reader(lines[:1]), [])]
    if header != ["name", "r", "g", "b"]:
        raise ValueError(f"{path}: line 1: expected the header name,r,g,b, got {lines[:1]}")
    rows = []
    for number, cells in enumerate(csv.reader(lines[1:]), start=2):
        if cells and any(cell.strip() for cell in cells):
            if len(cells) != 4:
                raise ValueError(f"{path}: line {number}: expected name,r,g,b, got {','.join(cells)!r}")
            rows.append((cells[0].strip(), _colour(cells[1:], path, number), number))
    return rows


def read_labelmap(path: Path) -> list[tuple[str, tuple[int, int, int], int]]:
    """(name, colour, line) rows of a CVAT / VOC labelmap.txt (`name:r,g,b:parts:actions`)."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = line.split(":")
        if len(fields) < 2:
            raise ValueError(f"{path}: line {number}: expected name:r,g,b:parts:actions, got {line!r}")
        rows.append((fields[0].strip(), _colour(fields[1].split(","), path, number), number))
    return rows


def colour_values(rows: list[tuple[str, tuple[int, int, int], int]], path: Path) -> tuple[list[str], dict[int, int]]:
    """(class names, packed colour -> mask value) by the module's rules."""
    names: list[str] = []
    values: dict[int, int] = {}
    first_line: dict[int, int] = {}
    for name, (r, g, b), number in rows:
        if not name:
            raise ValueError(f"{path}: line {number}: expected a class name, got none")
        key = (r << 16) | (g << 8) | b
        if key in values:
            raise ValueError(f"{path}: line {number}: expected each colour once, {(r, g, b)} is also on line "
                             f"{first_line[key]}")
        first_line[key] = number
        if name.casefold() in BACKGROUND_NAMES:
            values[key] = 0
        elif name.casefold() in IGNORE_NAMES:
            values[key] = IGNORE_INDEX
        else:
            if name not in names:
                names.append(name)
            values[key] = names.index(name) + 1
    if not names:
        raise ValueError(f"{path}: expected at least one class row besides background and void, found none")
    if len(names) > MAX_CLASSES:
        raise ValueError(f"{path}: expected at most {MAX_CLASSES} classes (0 = background, 255 = ignore), "
                         f"got {len(names)}")
    return names, values


def _colour(cells: list[str], path: Path, number: int) -> tuple[int, int, int]:
    try:
        colour = tuple(int(cell.strip()) for cell in cells)
    except ValueError:
        colour = ()
    if len(colour) != 3 or not all(0 <= c <= 255 for c in colour):
        raise ValueError(f"{path}: line {number}: expected a colour r,g,b of integers 0..255, got {','.join(cells)!r}")
    return colour


def _rgb(key: int) -> tuple[int, int, int]:
    return (int(key) >> 16) & 255, (int(key) >> 8) & 255, int(key) & 255
