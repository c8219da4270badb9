"""Variational autoencoder (Kingma & Welling 2014) on the bottleneck map.

The latent is spatial: a 1x1 conv turns the bottleneck map [B, C, h, w]
into mu and logvar [B, latent_channels, h, w], so the latent keeps the
bottleneck's grid (h, w = input size / bottleneck stride, rounded up).
The ae decoder maps z back to the image.

Loss terms, both means so neither grows with image or batch size:
"mse" = mean squared error per pixel value; "kl" = beta * KL(q(z|x) || N(0, I))
averaged over latent elements. With these reductions beta around 1e-3 keeps
reconstructions sharp (beta = latent elements / pixel values would be the
ELBO of a Gaussian likelihood with variance 1/2).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from datasets.sample import Batch
from heads.autoencoder import AutoencoderOptions
from heads.base import Head
from heads.reconstruction import ReconstructionMetric, bottleneck_level, build_decoder, match_size

# exp(logvar) stays finite (also in fp16) and eps * std cannot explode early in training.
LOGVAR_RANGE = (-30.0, 20.0)


@dataclass
class VAEOptions(AutoencoderOptions):
    latent_channels: int = 16     # channels of the spatial latent z
    beta: float = 1e-3            # weight of the KL term (see the module docstring for the reductions)


@dataclass
class VAEOutput:
    reconstruction: Tensor        # [B, C, H, W] in [0, 1], C the image channels
    mu: Tensor                    # [B, latent_channels, h, w]
    logvar: Tensor                # [B, latent_channels, h, w]


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """Element-wise KL(N(mu, exp(logvar)) || N(0, 1)) in closed form."""
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


class VAEHead(Head):
    kind = "reconstruction"
    Options = VAEOptions

    def __init__(self, channels: list[int], strides: list[int], num_classes: int, options: VAEOptions,
                 image_channels: int = 3) -> None:
        super().__init__()
        self.options = options
        self.level = bottleneck_level(options.bottleneck_stride, strides, options.decoder_channels, "vae")
        self.stride = strides[self.level]
        self.to_latent = nn.Conv2d(channels[self.level], 2 * options.latent_channels, 1)
        self.decoder = build_decoder(options.latent_channels, options.decoder_channels, image_channels)

    def forward(self, features: list[Tensor], image: Tensor) -> VAEOutput:
        mu, logvar = self.to_latent(features[self.level]).chunk(2, dim=1)
        logvar = logvar.clamp(*LOGVAR_RANGE)
        reconstruction = match_size(self.decoder(self.reparameterize(mu, logvar)), image)
        return VAEOutput(reconstruction, mu, logvar)

    def reparameterize(self, mu: Tensor, logvar: Tensor) -> Tensor:
        """z = mu + eps * std in training (a gradient path through the sampling); the mean in eval."""
        if not self.training:
            return mu
        return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)

    def loss(self, outputs: VAEOutput, batch: Batch) -> dict[str, Tensor]:
        # The target is the clean input, which every batch has: no missing-target case.
        return {"mse": F.mse_loss(outputs.reconstruction, batch.image),
                "kl": self.options.beta * gaussian_kl(outputs.mu.float(), outputs.logvar.float()).mean()}

    def decode(self, outputs: VAEOutput) -> Tensor:
        """Reconstructed images [B, C, H, W] in [0, 1], C the image channels."""
        return outputs.reconstruction

    def metric(self) -> ReconstructionMetric:
        return ReconstructionMetric()

    def named_outputs(self, outputs: VAEOutput) -> dict[str, Tensor]:
        return {"image": outputs.reconstruction, "mu": outputs.mu, "logvar": outputs.logvar}

    def from_named_outputs(self, named: dict[str, Tensor], image_size: tuple[int, int]) -> VAEOutput:
        return VAEOutput(named["image"], named["mu"], named["logvar"])

    @torch.no_grad()
    def sample(self, num: int, image_size: int, generator: torch.Generator | None = None) -> Tensor:
        """`num` images [num, C, image_size, image_size] in [0, 1] (C the image channels the head was built
        for) decoded from z ~ N(0, I), in eval mode."""
        side = math.ceil(image_size / self.stride)  # the latent grid of a padded backbone at this size
        weight = self.to_latent.weight
        z = torch.randn((num, self.options.latent_channels, side, side), generator=generator,
                        device=generator.device if generator is not None else weight.device).to(weight)
        was_training = self.training
        self.eval()  # BatchNorm must use its running statistics, not those of the noise
        try:
            out = self.decoder(z)
        finally:
            self.train(was_training)
        if out.shape[-1] != image_size:
            out = F.interpolate(out, size=(image_size, image_size), mode="bilinear", align_corners=False)
        return out
