"""Opt-in recording of max-pool indices during a backbone's forward, for decoders that unpool (SegNet).

`record_pool_indices(stages)` swaps every `nn.MaxPool2d` for `IndexedMaxPool2d`, which computes the same
output but also hands its argmax indices to a sink that the backbone installs for one forward call only.
The backbone then returns `PooledFeatures`: the usual list of feature maps plus `.pool_indices`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class PoolRecord:
    indices: Tensor              # [B, C, h, w] flat argmax positions within each input plane
    input_size: tuple[int, int]  # (H, W) before pooling: the output size for F.max_unpool2d


class PooledFeatures(list):
    """Feature maps (a plain list to everyone else) with the pool records of the same call, in network order."""

    def __init__(self, features: list[Tensor], pool_indices: list[PoolRecord]) -> None:
        super().__init__(features)
        self.pool_indices = pool_indices


class IndexedMaxPool2d(nn.MaxPool2d):
    """nn.MaxPool2d that also reports its indices to `sink` while one is installed (the output is unchanged)."""

    def __init__(self, pool: nn.MaxPool2d) -> None:
        super().__init__(pool.kernel_size, pool.stride, pool.padding, pool.dilation, ceil_mode=pool.ceil_mode)
        self.sink: list[PoolRecord] | None = None

    def forward(self, x: Tensor) -> Tensor:
        out, indices = F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation,
                                    ceil_mode=self.ceil_mode, return_indices=True)
        if self.sink is not None:
            self.sink.append(PoolRecord(indices, (x.shape[-2], x.shape[-1])))
        return out


def swap_max_pools(module: nn.Module) -> list[IndexedMaxPool2d]:
    """Replace every nn.MaxPool2d under `module` in place; returns the indexed pools in network order."""
    pools = []
    for name, child in module.named_children():
        if isinstance(child, IndexedMaxPool2d):
            pools.append(child)
        elif isinstance(child, nn.MaxPool2d):
            if child.return_indices:
                raise ValueError(f"max-pool {name!r} already returns indices; cannot record them")
            indexed = IndexedMaxPool2d(child)
            setattr(module, name, indexed)
            pools.append(indexed)
        else:
            pools.extend(swap_max_pools(child))
    return pools
