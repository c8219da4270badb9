"""Entry point for the pipeline: a dataset by format name, and a reproducible loader.

A new format is one reader file (a `datasets.reader.Reader`) plus one FORMATS entry.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from datasets.coco import CocoDataset
from datasets.collate import collate
from datasets.image_io import ImagePolicy
from datasets.imagefolder import ImageFolderDataset
from datasets.images import ImageOnlyDataset
from datasets.masks import MaskFolderDataset
from datasets.palette_masks import PaletteMaskDataset
from datasets.reader import Reader
from datasets.transforms import AugmentOptions, Resize, build_transform
from datasets.voc import VocDataset
from datasets.yolo_txt import YoloTxtDataset

FORMATS: dict[str, type[Reader]] = {
    "coco": CocoDataset,
    "imagefolder": ImageFolderDataset,
    "masks": MaskFolderDataset,   # root/images, root/masks/*.png, root/classes.txt: semantic masks only
    "images": ImageOnlyDataset,   # any images under root: no targets (reconstruction, pre-training)
    "yolo": YoloTxtDataset,       # Ultralytics data.yaml + labels/*.txt: boxes, or YOLO-seg polygons (+ masks)
    "voc": VocDataset,            # Pascal VOC XML (ImageSets list or a folder of XMLs): boxes, difficult = ignore
    "palette_masks": PaletteMaskDataset,  # like masks, colour PNGs + class_dict.csv / labelmap.txt
}


@dataclass
class ReadOptions:
    """How every split of a dataset is read and shaped, whatever its format."""
    image_size: int
    augment: AugmentOptions
    skip_invalid: bool = False
    policy: ImagePolicy = ImagePolicy()
    resize: Resize = "stretch"


def build_dataset(format: str, annotations: Path, images_root: Path | None, train: bool, options: ReadOptions,
                  split: str = "train", class_names: list[str] | None = None) -> Reader:
    """The `format` reader of one split: `annotations` (file or folder, as the format expects), its images
    under `images_root` (None: the format's default place)."""
    if format not in FORMATS:
        raise ValueError(f"data format: expected one of {sorted(FORMATS)}, got {format!r}")
    transform = build_transform(options.image_size, train, options.augment, options.resize, options.policy.channels)
    return FORMATS[format](
        Path(annotations), Path(images_root) if images_root is not None else None,
        transform=transform, skip_invalid=options.skip_invalid, policy=options.policy, split=split,
        class_names=class_names,
    )


def build_loader(
    dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int, seed: int, drop_last: bool = False,
    sampler: Sampler | None = None, pin_memory: bool = False,
) -> DataLoader:
    """Same seed, same batches and augmentations, for any num_workers. A `sampler` replaces `shuffle`.
    `pin_memory`: page-locked batches, for asynchronous copies to a CUDA device."""
    generator = torch.Generator().manual_seed(seed)
    if num_workers == 0:
        seed_augmentations(dataset, seed)
    return DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else None, sampler=sampler,
        num_workers=num_workers, collate_fn=collate, generator=generator, worker_init_fn=_seed_worker,
        drop_last=drop_last, persistent_workers=num_workers > 0, pin_memory=pin_memory,
    )


def seed_augmentations(dataset: Dataset, seed: int) -> None:
    """Albumentations keeps its own RNG (global seeds do not reach it), so seed each Compose directly.
    Walks Subset (.dataset) and ConcatDataset (.datasets) wrappers."""
    transform = getattr(dataset, "transform", None)
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(seed)
    for inner in [getattr(dataset, "dataset", None), *getattr(dataset, "datasets", [])]:
        if inner is not None:
            seed_augmentations(inner, seed)


def _seed_worker(worker_id: int) -> None:
    # torch gives each worker base_seed + worker_id, with base_seed drawn from the loader's generator;
    # without this, forked workers would share one copy of the augmentation RNG and repeat each other.
    # OpenCV's own thread pool in every worker would oversubscribe the cores the workers already share.
    cv2.setNumThreads(0)
    worker_seed = torch.initial_seed() % 2**32
    np.random.seed(worker_seed)
    random.seed(worker_seed)
    seed_augmentations(torch.utils.data.get_worker_info().dataset, worker_seed)
