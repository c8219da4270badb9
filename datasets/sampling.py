"""Which samples a rank reads, in what order, with which augmentation: reproducible and resumable.

Training order comes from torch's DistributedSampler (a fresh shuffle per epoch, each rank a disjoint
shard; with one process, the whole set). It yields `(epoch, index)` keys, and `EpochSeeded` seeds the
augmentation of each sample from `(seed, epoch, index)`. A sample's augmentation is then a pure
function of those three numbers: the same for any worker count, any number of ranks, and after a resume
that starts mid-epoch by skipping the samples already seen.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Dataset, DistributedSampler, Sampler

from datasets.build import seed_augmentations


class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler (drop_last: every rank takes the same number of steps) that can start
    `skip` samples into its shard and yields `(epoch, index)` keys for `EpochSeeded`."""

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed,
                         drop_last=num_replicas > 1)
        self.skip = 0

    def set_position(self, epoch: int, skip: int) -> None:
        """Start epoch `epoch` at the `skip`-th sample of this rank's shard (0: the epoch's beginning)."""
        self.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[tuple[int, int]]:
        indices = list(super().__iter__())[self.skip:]
        return iter([(self.epoch, index) for index in indices])

    def __len__(self) -> int:
        return self.num_samples - self.skip


class EpochSeeded(Dataset):
    """Reads `dataset[index]` for a key `(epoch, index)` with the augmentation seeded from (seed, epoch, index)."""

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        epoch, index = key
        sample_seed = int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0])
        seed_augmentations(self.dataset, sample_seed)
        return self.dataset[index]


class ShardSampler(Sampler[int]):
    """Evaluation: rank r reads indices r, r + N, r + 2N, ... in order; every sample exactly once over all
    ranks (no padding, so no duplicated images in the metrics)."""

    def __init__(self, size: int, num_replicas: int, rank: int) -> None:
        self.indices = list(range(rank, size, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
