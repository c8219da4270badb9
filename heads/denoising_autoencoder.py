"""Denoising autoencoder (Vincent et al. 2008): the ae decoder, fed features of a corrupted copy of the image.

In training the model runs the backbone once more on `corrupt(image)` for
this head alone; the loss still compares with the clean image, so the
backbone learns features that see through noise and occlusion. In eval the
head sees the clean features, like `ae`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from heads.autoencoder import AutoencoderHead, AutoencoderOptions


@dataclass
class DenoisingOptions(AutoencoderOptions):
    noise_std: float = 0.1        # std of additive Gaussian noise (images in [0, 1]); 0 = none
    mask_fraction: float = 0.25   # probability that each mask_patch x mask_patch cell of the grid is set to 0
    mask_patch: int = 8           # side of the masked squares, in input pixels


class DenoisingAutoencoderHead(AutoencoderHead):
    Options = DenoisingOptions
    option_prefix = "dae"

    def __init__(self, channels: list[int], strides: list[int], num_classes: int, options: DenoisingOptions,
                 image_channels: int = 3) -> None:
        super().__init__(channels, strides, num_classes, options, image_channels)
        if not 0.0 <= options.mask_fraction < 1.0 or options.mask_patch < 1 or options.noise_std < 0:
            raise ValueError(f"dae: expected 0 <= mask_fraction < 1, mask_patch >= 1, noise_std >= 0; got {options}")

    def corrupt(self, image: Tensor) -> Tensor:
        """Noise, then square patches on a grid zeroed (the same cells in every channel), clamped to [0, 1]."""
        generator = _generator_from_global_rng(image.device)
        noisy = image + self.options.noise_std * torch.randn(image.shape, generator=generator, device=image.device,
                                                             dtype=image.dtype)
        return (noisy * self._keep_mask(image, generator)).clamp(0.0, 1.0)

    def _keep_mask(self, image: Tensor, generator: torch.Generator) -> Tensor:
        batch, _, height, width = image.shape
        patch = self.options.mask_patch
        cells = (batch, 1, -(-height // patch), -(-width // patch))  # ceil: partial cells at the border count
        keep = torch.rand(cells, generator=generator, device=image.device) >= self.options.mask_fraction
        keep = F.interpolate(keep.to(image.dtype), scale_factor=patch, mode="nearest")
        return keep[..., :height, :width]


def _generator_from_global_rng(device: torch.device) -> torch.Generator:
    """Seeded from torch's global CPU RNG, so `torch.manual_seed` reproduces the corruption on any device."""
    seed = int(torch.randint(0, 2**62, (1,)))
    return torch.Generator(device=device).manual_seed(seed)
