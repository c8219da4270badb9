"""The reader contract: what every dataset format provides, and the skip-and-retry policy in one place.

A format is one subclass of `Reader` plus one line in `datasets.build.FORMATS`. Its constructor takes

    (annotations, images_root=None, transform=None, skip_invalid=False, policy=ImagePolicy(),
     split="train", class_names=None)

(`annotations`: the format's annotation file or dataset folder; `images_root`: where images are, when not
the format's default; `split`: which split of a multi-split description, e.g. a YOLO data.yaml; `class_names`:
a class list to read in, e.g. the training split's, when the split's own files do not fix one), validates
what is cheap to validate eagerly, calls `super().__init__` and sets:

    class_names     list[str]: class index i is class_names[i]
    category_ids    list[int]: the id written for class i in COCO results files

and implements:

    __len__()                 the number of images
    image_path(position)      the image file of one entry
    load(position)            -> RawRecord, decoding with `self.read_image`; raises ValueError or OSError,
                              naming the file, for an entry that cannot be read
    _keep(positions)          keep only the entries at these positions, in order (how `drop` removes bad ones)

and optionally `box_sizes()` ([N, 4] box w, h and image w, h on disk, for anchor fitting and check-data),
`annotation_index()` (per-class counts from the annotations of every image, without decoding: lets
check-data and the training guard say "class X has no instance" for certain, cheaply) and, where an entry has
more files or declared sizes than its image, `check_files(position)` (the training guard's cheap check).

The base class turns records into `Sample`s with the transform and handles bad entries the same way for
every format: without `skip_invalid` the first one raises; with it, each is counted in `skipped`, its
reason kept in `problems`, and the next readable entry is read instead, so no sample is silently lost.
Entries found bad before training (`check_files`, run on every entry by the guard) are `drop`ped instead,
counted the same way, so the loader never meets them.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from datasets.image_header import header_size
from datasets.image_io import ImagePolicy, read_image
from datasets.record import RawRecord
from datasets.sample import Sample
from datasets.transforms import SampleTransform, to_tensor_transform

logger = logging.getLogger(__name__)

MAX_LOGGED_REASONS = 5  # enough to diagnose a pattern without flooding the log

# Kinds of per-class counts an AnnotationIndex may hold.
BOXES, IGNORE_REGIONS, IMAGE_LABELS = "boxes", "ignore_regions", "image_labels"


@dataclass
class AnnotationIndex:
    """Per-class counts over every image of a split, read from its annotations without decoding any image.
    The counts a reader gives cover every instance of that kind; what it cannot know cheaply it leaves out."""
    counts: dict[str, np.ndarray]     # BOXES | IGNORE_REGIONS | IMAGE_LABELS -> [C] counts
    targets: list[str]                # the targets the annotations give: "boxes", "masks", "labels"
    unlabelled: list[int] | None      # positions of images without any annotation; None: not known


def count_per_class(labels: list[int] | np.ndarray, num_classes: int) -> np.ndarray:
    return np.bincount(np.asarray(labels, np.int64).reshape(-1), minlength=num_classes)


class Reader(Dataset):
    class_names: list[str]
    category_ids: list[int]

    def __init__(self, transform: SampleTransform | None, skip_invalid: bool, policy: ImagePolicy) -> None:
        self.transform = transform if transform is not None else to_tensor_transform()
        self.skip_invalid = skip_invalid
        self.policy = policy
        self.skipped: dict[str, int] = {"images": 0}
        self.problems: list[str] = []  # the reason of every skipped entry, in the order found

    # ---- what a format implements ---------------------------------------------------------------

    def __len__(self) -> int:
        raise NotImplementedError

    def image_path(self, position: int) -> Path:
        raise NotImplementedError

    def load(self, position: int) -> RawRecord:
        raise NotImplementedError

    def _keep(self, positions: list[int]) -> None:
        raise NotImplementedError(f"{type(self).__name__}: cannot drop entries")

    def check_files(self, position: int) -> None:
        """The cheap check that load(position) finds files it can read: the image's header
        (datasets/image_header.py), not its pixels. Raises ValueError or OSError naming the file, as load would."""
        header_size(self.image_path(position), self.policy.exif_orientation)

    def box_sizes(self) -> np.ndarray:
        """[N, 4] (w, h, image w, image h) of every box, in pixels on disk; none for formats without boxes."""
        return np.zeros((0, 4), np.float32)

    def annotation_index(self) -> AnnotationIndex | None:
        """Per-class counts from the annotations alone; None: this format only knows by decoding."""
        return None

    # ---- shared --------------------------------------------------------------------------------

    def __getitem__(self, index: int) -> Sample:
        record = self.read_record(index)
        # A Mosaic or MixUp / CutMix step that fires this time takes other records of this split as well.
        partners = self.transform.draw_partners(len(self))
        others = [self.read_record(position) for position in partners.positions]
        return self.transform(record, partners, others, num_classes=len(self.class_names))

    def read_record(self, index: int) -> RawRecord:
        """The untransformed record; a bad entry raises, or with skip_invalid is replaced by the next readable
        one (counted in `skipped`, per worker process)."""
        for attempt in range(len(self)):
            position = (index + attempt) % len(self)
            try:
                return self.load(position)
            except (OSError, ValueError) as error:
                self.skip("images", error)
                logger.warning("skipping an unreadable entry: %s", error)
        raise ValueError(f"{self.where()}: no entry could be read")

    def read_image(self, path: Path) -> np.ndarray:
        return read_image(path, self.policy)

    def image_paths(self) -> list[Path]:
        return [self.image_path(position) for position in range(len(self))]

    def set_policy(self, policy: ImagePolicy) -> None:
        """Replace the image policy, e.g. once 'dataset' intensity statistics are known."""
        self.policy = policy

    def skip(self, kind: str, error: Exception) -> None:
        """An entry of `kind` is bad: raise, or with skip_invalid count it and keep its reason."""
        if not self.skip_invalid:
            raise error
        self.skipped[kind] = self.skipped.get(kind, 0) + 1
        self.problems.append(str(error))

    def drop(self, bad: dict[int, Exception]) -> None:
        """Remove the entries at these positions, found bad before training: each is skipped like a bad entry
        (raises without skip_invalid; with it counted as an image and its reason kept), then logged once."""
        for error in bad.values():
            self.skip("images", error)
        self._keep([position for position in range(len(self)) if position not in bad])
        logger.warning("%s: dropped %d unreadable image(s) before training, %d left; first reasons:\n  %s",
                       self.where(), len(bad), len(self),
                       "\n  ".join(str(error) for error in list(bad.values())[:MAX_LOGGED_REASONS]))

    def log_skipped(self) -> None:
        """One warning for the entries skipped while opening the dataset."""
        if self.problems:
            logger.warning("%s: skipped %s; first reasons:\n  %s", self.where(), self.skipped,
                           "\n  ".join(self.problems[:MAX_LOGGED_REASONS]))

    def where(self) -> str:
        """What to name in messages: the annotation file or dataset folder."""
        return str(getattr(self, "annotations", getattr(self, "root", type(self).__name__)))
