"""Train on several datasets at once, each providing only some tasks.

`MixtureDataset` concatenates sources and reconciles their class lists by name into one global list
(first source's order, then each later source's new names), remapping every sample's label, mask,
box labels and multi-hot after the source's own transform. Targets a source lacks stay None, so the
collated Batch marks them missing and each head averages its loss over the samples that have them.

`mixture_order` decides which samples an epoch reads: by per-source ratios or proportional to size,
deterministic in (seed, epoch); `MixtureSampler` shards that order by rank like DistributedSampler.

Known limit: a class a source does not list counts as absent in its samples (background in its masks,
0 in its multi-hot), since the data contract has no per-class "unknown".
"""
from __future__ import annotations

import bisect
import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import ConcatDataset, Dataset

from datasets.build import ReadOptions, build_dataset
from datasets.sample import IGNORE_INDEX, Sample
from datasets.sampling import ResumableDistributedSampler


@dataclass
class MixtureSource:
    """One dataset of a mixture, as a config names it."""
    name: str
    train: str                          # annotation file (coco) or folder (imagefolder, masks, images)
    val: str | None = None              # its validation split, if it has one
    format: str = "coco"                # a datasets.build.FORMATS key
    images_root: str | None = None      # coco/masks: images folder of the train split, if not the default
    val_images_root: str | None = None  # likewise for the val split
    ratio: float | None = None          # share of each epoch's samples; all sources or none set it


@dataclass
class MixtureSplits:
    train: "MixtureDataset"
    val: "MixtureDataset"               # every source's val split, in the train split's class list
    ratios: list[float] | None          # for MixtureSampler; None: proportional to size


@dataclass
class ClassMap:
    """A source's class indices -> global indices, as tensors so remapping a sample is a lookup."""
    index: Tensor      # [C_source] int64: source class i -> global class index[i]
    mask_lut: Tensor   # [256] int64: source mask value -> global mask value (0 and IGNORE_INDEX kept)
    num_classes: int   # global C

    @staticmethod
    def between(source: list[str], global_names: list[str]) -> "ClassMap":
        index = torch.tensor([global_names.index(name) for name in source], dtype=torch.int64)
        # Values the source does not define cannot occur (its reader validates masks); ignore them regardless.
        lut = torch.full((256,), IGNORE_INDEX, dtype=torch.int64)
        lut[0] = 0
        lut[1 : len(source) + 1] = index + 1
        return ClassMap(index=index, mask_lut=lut, num_classes=len(global_names))

    def apply(self, sample: Sample) -> Sample:
        multi_label = None
        if sample.multi_label is not None:
            multi_label = torch.zeros(self.num_classes, dtype=torch.float32)
            multi_label[self.index] = sample.multi_label.float()
        return dataclasses.replace(
            sample,
            label=int(self.index[sample.label]) if sample.label is not None else None,
            mask=self.mask_lut[sample.mask] if sample.mask is not None else None,
            box_labels=self.index[sample.box_labels] if sample.box_labels is not None else None,
            ignore_labels=self.index[sample.ignore_labels] if sample.ignore_labels is not None else None,
            multi_label=multi_label,
        )


class MixtureDataset(ConcatDataset):
    """Sources concatenated (global index = source offset + local index), classes in one global list.

    `class_names` fixes the global list (e.g. a validation mixture in the training classes); every
    source's classes must then be in it. Otherwise it is the union by name in order of first appearance.
    """

    def __init__(self, sources: list[Dataset], names: list[str], class_names: list[str] | None = None) -> None:
        if not sources:
            raise ValueError("mixture: expected at least one source, got none")
        if len(names) != len(sources):
            raise ValueError(f"mixture: expected one name per source, got {len(names)} names for {len(sources)} sources")
        if len(set(names)) != len(names):
            raise ValueError(f"mixture: expected unique source names, got {names}")
        super().__init__(sources)  # `datasets`, so seed_augmentations reaches every source's transform
        self.names = list(names)
        self.sizes = [len(source) for source in sources]
        source_classes = [list(getattr(source, "class_names", [])) for source in sources]
        self.class_names = reconcile_class_names(self.names, source_classes, class_names)
        self.category_ids = list(range(1, len(self.class_names) + 1))
        self.class_maps = [ClassMap.between(classes, self.class_names) for classes in source_classes]

    def sources_changed(self) -> None:
        """Recount after entries were dropped from sources (the training guard drops unreadable images)."""
        self.sizes = [len(source) for source in self.datasets]
        self.cumulative_sizes = self.cumsum(self.datasets)

    def locate(self, index: int) -> tuple[int, int]:
        """(source number, index within that source) of a global index."""
        if not 0 <= index < len(self):
            raise IndexError(f"mixture: index {index} out of range for {len(self)} samples")
        source = bisect.bisect_right(self.cumulative_sizes, index)
        return source, index - (self.cumulative_sizes[source - 1] if source else 0)

    def __getitem__(self, index: int) -> Sample:
        source, local = self.locate(index)
        return self.class_maps[source].apply(self.datasets[source][local])

    def box_sizes(self) -> np.ndarray:
        """[N, 4] (w, h, image w, image h) of the boxes of every source that has them (see datasets.summary)."""
        parts = [np.asarray(source.box_sizes(), np.float32).reshape(-1, 4)
                 for source in self.datasets if hasattr(source, "box_sizes")]
        return np.concatenate(parts) if parts else np.zeros((0, 4), np.float32)


def reconcile_class_names(names: list[str], class_lists: list[list[str]], fixed: list[str] | None = None) -> list[str]:
    """The global class list: `fixed`, or the union in order of first appearance. Names must match exactly;
    two that differ only in case are an error (within a source, or across sources), as are duplicates."""
    for name, classes in zip(names, class_lists):
        _check_unique(name, classes)
    if fixed is not None:
        for name, classes in zip(names, class_lists):
            unknown = [c for c in classes if c not in fixed]
            if unknown:
                raise ValueError(f"mixture source {name!r}: classes {unknown} are not in the class list {fixed}")
        return list(fixed)
    merged: list[str] = []
    first_seen: dict[str, tuple[str, str]] = {}  # casefolded name -> (spelling, source)
    for name, classes in zip(names, class_lists):
        for cls in classes:
            seen = first_seen.get(cls.casefold())
            if seen is None:
                first_seen[cls.casefold()] = (cls, name)
                merged.append(cls)
            elif seen[0] != cls:
                raise ValueError(f"mixture source {name!r}: class {cls!r} differs only in case from {seen[0]!r} of "
                                 f"source {seen[1]!r}; rename one so that the same class has the same name")
    return merged


def _check_unique(source: str, classes: list[str]) -> None:
    first: dict[str, str] = {}
    for cls in classes:
        if not isinstance(cls, str) or not cls.strip():
            raise ValueError(f"mixture source {source!r}: expected non-empty class names, got {cls!r} in {classes}")
        if cls.casefold() in first:
            raise ValueError(f"mixture source {source!r}: expected unique class names (ignoring case), got "
                             f"{first[cls.casefold()]!r} and {cls!r} in {classes}")
        first[cls.casefold()] = cls


# ---- order -----------------------------------------------------------------


def mixture_order(sizes: list[int], ratios: list[float] | None, length: int, seed: int, epoch: int) -> list[int]:
    """The global indices epoch `epoch` reads, `length` of them, identical on every rank.

    With ratios, source s gets round(length * ratio_s / sum) samples (largest remainders, so the counts sum
    to `length`), taken from its own stream of shuffled passes (without replacement within a pass; epoch e
    continues where epoch e-1 stopped, so a source is covered before it repeats), randomly interleaved.
    Without, every sample is one source: a plain shuffle of everything, continued likewise.
    """
    _check_order_args(sizes, ratios, length)
    if ratios is None:
        return _stream(sum(sizes), [seed, 0], epoch * length, length).tolist()
    counts = _counts(ratios, length)
    which = np.random.default_rng([seed, 1, epoch]).permutation(np.repeat(np.arange(len(sizes)), counts))
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    order = np.empty(length, np.int64)
    for source, count in enumerate(counts):
        if count:
            order[which == source] = offsets[source] + _stream(sizes[source], [seed, 2, source], epoch * count, count)
    return order.tolist()


def _check_order_args(sizes: list[int], ratios: list[float] | None, length: int) -> None:
    if length < 1:
        raise ValueError(f"mixture: epoch length: expected a positive number of samples, got {length}")
    if ratios is None:
        if sum(sizes) < 1:
            raise ValueError(f"mixture: expected at least one sample, got source sizes {sizes}")
        return
    if len(ratios) != len(sizes):
        raise ValueError(f"mixture: expected one ratio per source ({len(sizes)}), got {ratios}")
    if any(not np.isfinite(r) or r < 0 for r in ratios) or sum(ratios) <= 0:
        raise ValueError(f"mixture: ratios: expected finite numbers >= 0 with a positive sum, got {ratios}")
    empty = [i for i, (size, ratio) in enumerate(zip(sizes, ratios)) if ratio > 0 and size == 0]
    if empty:
        raise ValueError(f"mixture: sources {empty} have a positive ratio but no samples")


def _counts(ratios: Sequence[float], length: int) -> np.ndarray:
    """Per-source sample counts proportional to ratios, summing to length (largest-remainder rounding)."""
    exact = np.asarray(ratios, np.float64) / sum(ratios) * length
    counts = np.floor(exact).astype(np.int64)
    by_remainder = np.argsort(-(exact - counts), kind="stable")
    counts[by_remainder[: length - counts.sum()]] += 1
    return counts


def _stream(size: int, key: list[int], start: int, count: int) -> np.ndarray:
    """Items start .. start+count-1 of an endless sequence of shuffled passes over range(size);
    pass p is shuffled by the generator seeded with key + [p]."""
    first, last = start // size, (start + count - 1) // size
    passes = np.concatenate([np.random.default_rng([*key, p]).permutation(size) for p in range(first, last + 1)])
    begin = start - first * size
    return passes[begin : begin + count]


class MixtureSampler(ResumableDistributedSampler):
    """ResumableDistributedSampler whose per-epoch order is `mixture_order`: `length` samples per epoch
    (default: the mixture's total size), split across ranks like DistributedSampler (with several ranks the
    tail is dropped so every rank gets the same count). Same `(epoch, index)` keys and `set_position` resume."""

    def __init__(self, dataset: MixtureDataset, num_replicas: int, rank: int, seed: int,
                 ratios: list[float] | None = None, length: int | None = None) -> None:
        self.sizes = list(dataset.sizes)
        self.ratios = list(ratios) if ratios is not None else None
        self.length = length if length is not None else sum(self.sizes)
        _check_order_args(self.sizes, self.ratios, self.length)
        # The parent only needs the epoch's length to size the shards (num_samples, total_size).
        super().__init__(range(self.length), num_replicas=num_replicas, rank=rank, seed=seed)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        order = mixture_order(self.sizes, self.ratios, self.length, self.seed, self.epoch)
        shard = order[self.rank : self.total_size : self.num_replicas][self.skip :]
        return iter([(self.epoch, index) for index in shard])


# ---- from a config -----------------------------------------------------------


def build_mixture(sources: list[MixtureSource], options: ReadOptions) -> MixtureSplits:
    """The training mixture of every source's train split and the validation mixture of those with a val
    split (in the training class list, so predictions and labels share indices)."""
    if not sources:
        raise ValueError("mixture: sources: expected at least one source")
    ratios = source_ratios(sources)
    names = [source.name for source in sources]
    train = MixtureDataset([_split(source, "train", options) for source in sources], names)
    with_val = [source for source in sources if source.val is not None]
    if not with_val:
        raise ValueError(f"mixture: sources: expected at least one source with a val split, got none in {names}")
    val = MixtureDataset([_split(source, "val", options) for source in with_val],
                         [source.name for source in with_val], class_names=train.class_names)
    return MixtureSplits(train=train, val=val, ratios=ratios)


def source_ratios(sources: list[MixtureSource]) -> list[float] | None:
    """The sources' ratios for MixtureSampler, or None (proportional to size) when no source sets one."""
    missing = [source.name for source in sources if source.ratio is None]
    if len(missing) == len(sources):
        return None
    if missing:
        raise ValueError(f"mixture: sources {missing}: ratio: expected a ratio on every source or on none "
                         f"(none: proportional to size)")
    return [float(source.ratio) for source in sources]


def _split(source: MixtureSource, split: str, options: ReadOptions) -> Dataset:
    images_root = source.images_root if split == "train" else source.val_images_root
    return build_dataset(source.format, Path(getattr(source, split)), Path(images_root) if images_root else None,
                         train=split == "train", options=options, split=split)
