"""Gradient attributions of one target on one image, each an [H, W] map at the input's resolution.

Vanilla gradient, guided backpropagation and SmoothGrad come from captum; Grad-CAM and Grad-CAM++ from
pytorch-grad-cam. What is ours is only the glue: the target's score (targets.TaskScore), the layer Grad-CAM
reads, and the model copy guided backpropagation needs."""
from __future__ import annotations

import copy
import warnings

import numpy as np
import torch
from captum.attr import GuidedBackprop, NoiseTunnel, Saliency
from pytorch_grad_cam import GradCAM, GradCAMPlusPlus
from torch import Tensor, nn

from pipeline.analysis.explain.inputs import NotApplicable
from pipeline.analysis.explain.targets import ExplainTarget, TaskScore
from pipeline.model import MultiTaskModel

MIN_CAM_CELLS = 4            # a class activation map coarser than 4x4 cannot say where in the image
SMOOTHGRAD_NOISE = 0.15      # SmoothGrad's noise, a fraction of the image's value range (the paper's 10-20 %)


def gradient_map(score: TaskScore, image: Tensor) -> Tensor:
    """|d score / d pixel|, the maximum over channels (Simonyan et al.)."""
    return _channel_max(Saliency(score).attribute(_leaf(image), abs=True))


def smoothgrad_map(score: TaskScore, image: Tensor, samples: int, seed: int) -> Tensor:
    """The vanilla gradient averaged over noisy copies of the image (Smilkov et al.)."""
    torch.manual_seed(seed)
    tunnel = NoiseTunnel(Saliency(score))
    spread = float(image.max() - image.min()) or 1.0
    attribution = tunnel.attribute(_leaf(image), nt_type="smoothgrad", nt_samples=samples,
                                   nt_samples_batch_size=min(samples, 8), stdevs=SMOOTHGRAD_NOISE * spread, abs=True)
    return _channel_max(attribution)


def guided_backprop_map(guided: MultiTaskModel, target: ExplainTarget, image: Tensor) -> Tensor:
    """Backpropagation that passes only positive gradients through each ReLU (Springenberg et al.); `guided`:
    the model as guided_copy() prepares it."""
    with warnings.catch_warnings():   # captum announces the ReLU hooks it sets and removes on every call
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        attribution = GuidedBackprop(TaskScore(guided, target)).attribute(_leaf(image))
    return _channel_max(attribution).clamp(min=0)


def guided_copy(model: MultiTaskModel) -> MultiTaskModel:
    """A copy whose ReLUs captum can guide: not in place (its backward hooks need the output), and ReLU6
    (MobileNet) split into a ReLU and a clamp at 6, which computes the same."""
    guided = copy.deepcopy(model)
    relus = 0
    for parent in guided.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.ReLU6):
                setattr(parent, name, nn.Sequential(nn.ReLU(), nn.Hardtanh(0.0, 6.0)))
                relus += 1
            elif isinstance(child, nn.ReLU):
                child.inplace = False
                relus += 1
    if relus == 0:
        raise NotApplicable("guided backpropagation needs ReLU activation modules; this backbone has none "
                            "(e.g. SiLU or hardswish networks)")
    return guided


def cam_layer(model: MultiTaskModel, image_size: tuple[int, int], requested: str | None) -> tuple[str, nn.Module]:
    """The layer Grad-CAM weighs: `requested` (a module path such as "backbone.stages.3"), else the deepest
    backbone stage whose map still has MIN_CAM_CELLS cells along the shorter side of the input."""
    modules = dict(model.named_modules())
    if requested:
        if requested not in modules:
            stages = [f"backbone.stages.{i}" for i in range(len(model.backbone.stages))]
            raise NotApplicable(f"--cam-layer {requested!r} is not a module of the model; e.g. {', '.join(stages)}")
        return requested, modules[requested]
    side = min(image_size)
    usable = [i for i, stride in enumerate(model.backbone.strides) if side / stride >= MIN_CAM_CELLS]
    index = usable[-1] if usable else 0
    return f"backbone.stages.{index}", model.backbone.stages[index]


def cam_map(score: TaskScore, image: Tensor, layer: nn.Module, plus_plus: bool = False) -> np.ndarray:
    """Grad-CAM (Selvaraju et al.) or Grad-CAM++ (Chattopadhay et al.) of `layer`, upsampled to the image,
    scaled to [0, 1] per image (all zero where no channel argues for the target)."""
    method = GradCAMPlusPlus if plus_plus else GradCAM
    with method(model=score, target_layers=[layer]) as cam:
        return cam(input_tensor=image[None], targets=[_identity])[0]


def _identity(score: Tensor) -> Tensor:
    # pytorch-grad-cam calls a target on each image's model output; TaskScore already gives the scalar.
    return score


def _leaf(image: Tensor) -> Tensor:
    """[1, C, H, W], a leaf that requires grad (captum otherwise warns and sets it itself)."""
    return image[None].detach().clone().requires_grad_(True)


def _channel_max(attribution: Tensor) -> Tensor:
    return attribution.detach()[0].abs().amax(dim=0).cpu()
