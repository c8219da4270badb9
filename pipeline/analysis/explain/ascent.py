"""Visualisation by gradient ascent: the input that a class (Simonyan et al.) or a channel most responds to.

Starting from grey, the image climbs the objective's gradient under the usual regularisers: an L2 penalty
pulling it back to grey, a random jitter (shift) each step so no single pixel pattern is exploited, and a
periodic Gaussian blur that damps high frequencies (Yosinski et al.)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torchvision.transforms.functional import gaussian_blur

from pipeline.analysis.explain.inputs import NotApplicable
from pipeline.analysis.explain.targets import SCORES, ExplainTarget
from pipeline.model import MultiTaskModel

GREY = 0.5


@dataclass
class AscentOptions:
    steps: int = 200
    lr: float = 0.05
    l2: float = 1e-3          # weight of the squared distance from grey, summed over pixels
    jitter: int = 4           # largest random shift per step, pixels
    blur_every: int = 4       # steps between blurs; 0: never
    blur_sigma: float = 0.5
    seed: int = 0


def ascend(objective: Callable[[Tensor], Tensor], shape: tuple[int, int, int, int],
           options: AscentOptions, device: torch.device) -> Tensor:
    """Images [N, C, H, W] in [0, 1] maximising `objective` (images -> [N], each image its own objective)."""
    generator = torch.Generator(device="cpu").manual_seed(options.seed)
    image = (GREY + 0.01 * torch.randn(shape, generator=generator)).to(device).requires_grad_(True)
    optimiser = torch.optim.Adam([image], lr=options.lr)
    for step in range(options.steps):
        dy, dx = (int(v) for v in torch.randint(-options.jitter, options.jitter + 1, (2,), generator=generator))
        shifted = torch.roll(image, shifts=(dy, dx), dims=(2, 3))
        penalty = options.l2 * (image - GREY).pow(2).flatten(1).sum(dim=1)
        loss = (penalty - objective(shifted)).sum()
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        with torch.no_grad():
            if options.blur_every and (step + 1) % options.blur_every == 0:
                image.copy_(gaussian_blur(image, kernel_size=3, sigma=options.blur_sigma))
            image.clamp_(0.0, 1.0)
    return image.detach()


def class_images(model: MultiTaskModel, task: str, num_classes: int, image_size: tuple[int, int],
                 options: AscentOptions) -> Tensor:
    """One image per class [num_classes, C, H, W] maximising the task's score for that class (classification:
    its logit; segmentation: its mean logit over the image; detection: its best candidate's score)."""
    kind = model.heads[task].kind
    if kind == "reconstruction":
        raise NotApplicable(f"task {task!r}: a reconstruction head has no classes to visualise")
    targets = [ExplainTarget(task, kind, "", label=c) for c in range(num_classes)]
    head = model.heads[task]

    def objective(images: Tensor) -> Tensor:   # one forward for all classes: image c is scored for class c
        outputs = head(model.backbone(images), images)
        return torch.stack([SCORES[kind](head, outputs, target, images)[c] for c, target in enumerate(targets)])

    shape = (num_classes, model.backbone.in_channels, *image_size)
    return ascend(objective, shape, options, next(model.parameters()).device)


def channel_images(model: MultiTaskModel, units: list[tuple[int, int]], image_size: tuple[int, int],
                   options: AscentOptions) -> Tensor:
    """One image per (stage, channel) of `units` maximising that channel's mean activation."""
    def objective(images: Tensor) -> Tensor:
        features = model.backbone(images)
        return torch.stack([features[stage][i, channel].mean() for i, (stage, channel) in enumerate(units)])

    shape = (len(units), model.backbone.in_channels, *image_size)
    return ascend(objective, shape, options, next(model.parameters()).device)
