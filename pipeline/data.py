"""Datasets and loaders for a config, generating the synthetic shapes set when asked to."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import DataLoader, Dataset

from datasets.build import build_dataset, build_loader
from datasets.mixture import MixtureDataset, MixtureSampler, build_mixture, source_ratios
from datasets.sampling import EpochSeeded, ResumableDistributedSampler, ShardSampler
from datasets.shapes import generate_shapes
from datasets.shapes_variants import write_shapes_variant_splits
from pipeline.config import DataConfig
from pipeline.distributed import DistInfo
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
    """Write the shapes set at the configured annotation paths (or its three-way split for a mixture) if it
    is not there yet."""
    if config.shapes_variants is not None:
        variants = config.shapes_variants
        write_shapes_variant_splits(Path(variants.root), variants.train_images, variants.val_images,
                                    config.image_size, variants.seed)
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
    if config.sources:
        mixture = build_mixture(config.sources, config.image_size, config.augment, config.skip_invalid)
        return DataSplits(mixture.train, mixture.val, list(mixture.train.class_names),
                          list(mixture.train.category_ids))
    common = dict(format=config.format, images_root=None, image_size=config.image_size,
                  augment=config.augment, skip_invalid=config.skip_invalid)
    train = build_dataset(annotations=Path(config.train), train=True, **common)
    val = build_dataset(annotations=Path(config.val), train=False, **common)
    if train.class_names != val.class_names:
        raise ConfigError(f"data.val: classes {val.class_names} differ from data.train's {train.class_names}")
    return DataSplits(train, val, list(train.class_names), list(train.category_ids))


def train_loader(dataset: Dataset, config: DataConfig, seed: int, dist: DistInfo = DistInfo()) -> DataLoader:
    """This rank's shard, reshuffled every epoch (a mixture: drawn by the sources' ratios); augmentation seeded
    per (seed, epoch, sample)."""
    if isinstance(dataset, MixtureDataset):
        sampler = MixtureSampler(dataset, dist.world_size, dist.rank, seed, ratios=source_ratios(config.sources),
                                 length=config.epoch_length)
    else:
        sampler = ResumableDistributedSampler(dataset, dist.world_size, dist.rank, seed)
    return build_loader(EpochSeeded(dataset, seed), config.batch_size, shuffle=False, num_workers=config.num_workers,
                        seed=seed, drop_last=sampler.num_samples > config.batch_size, sampler=sampler)


def eval_loader(dataset: Dataset, config: DataConfig, seed: int, dist: DistInfo = DistInfo()) -> DataLoader:
    """In order; under DDP each rank reads every world_size-th sample, so all ranks together read each once."""
    sampler = ShardSampler(len(dataset), dist.world_size, dist.rank) if dist.enabled else None
    return build_loader(dataset, config.batch_size, shuffle=False, num_workers=config.num_workers, seed=seed,
                        sampler=sampler)
