"""Datasets and loaders for a config, generating the synthetic shapes set when asked to."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import DataLoader, Dataset

from datasets.build import build_dataset, build_loader
from datasets.shapes import generate_shapes
from pipeline.config import DataConfig
from pipeline.typed_config import ConfigError

log = logging.getLogger(__name__)

# Different seeds per split so validation images are never copies of training images.
SPLIT_SEED_OFFSET = {"train": 0, "val": 1_000_003}


@dataclass
class DataSplits:
    train: Dataset
    val: Dataset
    class_names: list[str]
    category_ids: list[int]


def ensure_shapes(config: DataConfig) -> None:
    """Write the shapes set at the configured annotation paths if it is not there yet."""
    if config.shapes is None:
        return
    for split, count in (("train", config.shapes.train_images), ("val", config.shapes.val_images)):
        annotations = Path(getattr(config, split))
        if annotations.name != "annotations.json":
            raise ConfigError(f"data.{split}: the shapes generator writes <folder>/annotations.json, got {annotations}")
        if not annotations.exists():
            log.info("generating %d shapes images in %s", count, annotations.parent)
            generate_shapes(annotations.parent, num_images=count, image_size=config.image_size,
                            seed=config.shapes.seed + SPLIT_SEED_OFFSET[split])


def build_splits(config: DataConfig) -> DataSplits:
    ensure_shapes(config)
    common = dict(format=config.format, images_root=None, image_size=config.image_size,
                  augment=config.augment, skip_invalid=config.skip_invalid)
    train = build_dataset(annotations=Path(config.train), train=True, **common)
    val = build_dataset(annotations=Path(config.val), train=False, **common)
    if train.class_names != val.class_names:
        raise ConfigError(f"data.val: classes {val.class_names} differ from data.train's {train.class_names}")
    return DataSplits(train, val, list(train.class_names), list(train.category_ids))


def train_loader(dataset: Dataset, config: DataConfig, seed: int) -> DataLoader:
    return build_loader(dataset, config.batch_size, shuffle=True, num_workers=config.num_workers, seed=seed,
                        drop_last=len(dataset) > config.batch_size)


def eval_loader(dataset: Dataset, config: DataConfig, seed: int) -> DataLoader:
    return build_loader(dataset, config.batch_size, shuffle=False, num_workers=config.num_workers, seed=seed)
