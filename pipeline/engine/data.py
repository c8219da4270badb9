"""Datasets and loaders for a config, generating the synthetic shapes set when asked to."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset

from datasets.build import ReadOptions, build_dataset, build_loader
from datasets.image_io import ImagePolicy, dataset_range
from datasets.mixture import MixtureDataset, MixtureSampler, build_mixture, source_ratios
from datasets.sampling import EpochSeeded, ResumableDistributedSampler, ShardSampler
from datasets.shapes import generate_shapes
from datasets.shapes_variants import write_shapes_variant_splits
from pipeline.config.schema import DataConfig, split_paths
from pipeline.runtime.distributed import DistInfo
from pipeline.config.typed import ConfigError, DataCheckError

log = logging.getLogger(__name__)

# Different seeds per split so validation images are never copies of training images.
SPLIT_SEED_OFFSET = {"train": 0, "val": 1_000_003}


@dataclass
class DataSplits:
    train: Dataset
    val: Dataset
    class_names: list[str]
    category_ids: list[int]
    image_policy: ImagePolicy            # resolved: a 'dataset' intensity holds its computed range


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
                            seed=config.shapes.seed + SPLIT_SEED_OFFSET[split], max_shapes=config.shapes.max_shapes)


def build_splits(config: DataConfig, image_policy: ImagePolicy | None = None) -> DataSplits:
    """Both splits, the validation one in the training split's classes. `image_policy`: a checkpoint's
    resolved policy, to read exactly as in training (default: the config's, resolved on the training split)."""
    ensure_shapes(config)
    options = read_options(config, image_policy)
    if config.sources:
        with data_errors("data.sources"):
            mixture = build_mixture(config.sources, options)
        train, val = mixture.train, mixture.val
    else:
        with data_errors("data.train"):
            train = build_dataset(config.format, *split_paths(config.train), train=True, options=options,
                                  split="train")
        with data_errors("data.val"):
            val = build_dataset(config.format, *split_paths(config.val), train=False, options=options, split="val",
                                class_names=list(train.class_names))
    with data_errors("data.train"):
        policy = resolved_policy(options.policy, train)
    for dataset in (train, val):
        set_policy(dataset, policy)
    return DataSplits(train, val, list(train.class_names), list(train.category_ids), policy)


@contextmanager
def data_errors(key: str) -> Iterator[None]:
    """A reader's ValueError (by the reader contract: bad data, naming the file and what was expected) raised as
    the DataCheckError the CLI reports as a user error, exit status 2 without a traceback, under the config key
    of the split it came from."""
    try:
        yield
    except (ConfigError, DataCheckError):
        raise
    except ValueError as error:
        raise DataCheckError(f"{key}: {error}") from error


def stored_image_policy(state: dict) -> ImagePolicy | None:
    """The resolved image policy a checkpoint was trained with (None for checkpoints from before it was kept)."""
    stored = state.get("image_policy")
    return ImagePolicy.from_dict(stored) if stored is not None else None


def read_options(config: DataConfig, image_policy: ImagePolicy | None = None) -> ReadOptions:
    return ReadOptions(image_size=config.image_size, augment=config.augment, skip_invalid=config.skip_invalid,
                       policy=image_policy or config.image_policy(), resize=config.resize)


def resolved_policy(policy: ImagePolicy, train: Dataset) -> ImagePolicy:
    """'dataset' intensity: the fixed range measured on the training images; any other policy as it is."""
    if policy.intensity != "dataset":
        return policy
    lo, hi = dataset_range(image_paths(train), policy)
    log.info("intensity 'dataset': the training images map [%g, %g] to [0, 1]", lo, hi)
    return dataclasses.replace(policy, intensity=(lo, hi))


def image_paths(dataset: Dataset) -> list[Path]:
    """Every image file of a reader or of a mixture's readers."""
    parts = getattr(dataset, "datasets", None)
    if parts is not None:
        return [path for part in parts for path in image_paths(part)]
    return dataset.image_paths()


def set_policy(dataset: Dataset, policy: ImagePolicy) -> None:
    for part in getattr(dataset, "datasets", [dataset]):
        part.set_policy(policy)


def train_loader(dataset: Dataset, config: DataConfig, seed: int, dist: DistInfo = DistInfo()) -> DataLoader:
    """This rank's shard, reshuffled every epoch (a mixture: drawn by the sources' ratios); augmentation seeded
    per (seed, epoch, sample)."""
    if isinstance(dataset, MixtureDataset):
        sampler = MixtureSampler(dataset, dist.world_size, dist.rank, seed, ratios=source_ratios(config.sources),
                                 length=config.epoch_length)
    else:
        sampler = ResumableDistributedSampler(dataset, dist.world_size, dist.rank, seed)
    return build_loader(EpochSeeded(dataset, seed), config.batch_size, shuffle=False, num_workers=config.num_workers,
                        seed=seed, drop_last=sampler.num_samples > config.batch_size, sampler=sampler,
                        pin_memory=torch.cuda.is_available())


def eval_loader(dataset: Dataset, config: DataConfig, seed: int, dist: DistInfo = DistInfo()) -> DataLoader:
    """In order; under DDP each rank reads every world_size-th sample, so all ranks together read each once."""
    sampler = ShardSampler(len(dataset), dist.world_size, dist.rank) if dist.enabled else None
    return build_loader(dataset, config.batch_size, shuffle=False, num_workers=config.num_workers, seed=seed,
                        sampler=sampler, pin_memory=torch.cuda.is_available())
