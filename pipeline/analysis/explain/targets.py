"""What an attribution explains: one scalar per image for one task's prediction, whatever the head kind.

    classification  the logit of the predicted class (before softmax, as Grad-CAM does)
    segmentation    the mean logit of a predicted class over the region predicted as that class
    detection       a predicted box's class score, taken from the candidate that best overlaps the box
                    (score x IoU over the head's dense predictions, before NMS, so gradients reach it)
    reconstruction  minus the mean squared reconstruction error (what makes the image easy to rebuild)

`choose_targets` picks the targets from the model's own predictions on the image; `TaskScore` is the module
the attribution libraries (captum, pytorch-grad-cam) differentiate."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import box_iou

from pipeline.model import MultiTaskModel

MAX_BOXES = 3           # detections explained per image, most confident first
MIN_BOX_SCORE = 0.25    # below this a box is one of NMS's leftovers (predict's default --conf); the best one stays
MAX_REGIONS = 2         # segmentation classes explained per image, largest region first


@dataclass
class ExplainTarget:
    task: str
    kind: str
    title: str                      # caption of the row: "cls: circle 0.93"
    label: int | None = None        # class index 0..C-1 (segmentation: its logit channel is label + 1)
    box: Tensor | None = None       # [4] xyxy input px: the detection explained; None: the class's best candidate
    region: Tensor | None = None    # [H, W] bool: where the segmentation predicted `label`; None: everywhere


class TaskScore(nn.Module):
    """images [B, C, H, W] -> [B]: the target's score on each image (the backbone and this one head only)."""

    def __init__(self, model: MultiTaskModel, target: ExplainTarget) -> None:
        super().__init__()
        self.model, self.target = model, target

    def forward(self, images: Tensor) -> Tensor:
        head = self.model.heads[self.target.task]
        outputs = head(self.model.backbone(images), images)
        return SCORES[self.target.kind](head, outputs, self.target, images)


def _classification(head, outputs, target: ExplainTarget, images: Tensor) -> Tensor:
    return head.named_outputs(outputs)["logits"][:, target.label]


def _segmentation(head, outputs, target: ExplainTarget, images: Tensor) -> Tensor:
    logits = outputs[:, target.label + 1]                          # channel 0 is background
    if target.region is None:
        return logits.flatten(1).mean(dim=1)
    region = target.region.to(logits.device, logits.dtype)[None, None]
    region = F.interpolate(region, size=logits.shape[-2:], mode="nearest")[:, 0]
    return (logits * region).sum(dim=(1, 2)) / region.sum().clamp(min=1)


def _detection(head, outputs, target: ExplainTarget, images: Tensor) -> Tensor:
    boxes, scores = head.dense_predictions(outputs)                # [B, N, 4], [B, N, C]
    if target.box is None:
        return scores[..., target.label].max(dim=1).values
    overlap = torch.stack([box_iou(image_boxes, target.box[None].to(boxes))[:, 0] for image_boxes in boxes])
    return (scores[..., target.label] * overlap).max(dim=1).values


def _reconstruction(head, outputs, target: ExplainTarget, images: Tensor) -> Tensor:
    reconstruction = head.named_outputs(outputs)["image"]
    return -(reconstruction - images).pow(2).flatten(1).mean(dim=1)


SCORES = {"classification": _classification, "segmentation": _segmentation, "detection": _detection,
          "reconstruction": _reconstruction}


@torch.no_grad()
def choose_targets(model: MultiTaskModel, image: Tensor, task: str, class_names: list[str]) -> list[ExplainTarget]:
    """The predictions of `task` on one image [C, H, W] worth explaining (none: an empty list, e.g. no box)."""
    head = model.heads[task]
    prediction = head.decode(model(image[None])[task])
    kind = head.kind
    if kind == "classification":
        probability, label = prediction[0].max(dim=0)
        return [ExplainTarget(task, kind, f"{task}: {_name(class_names, int(label))} {float(probability):.2f}",
                              label=int(label))]
    if kind == "segmentation":
        counts = torch.bincount(prediction[0].flatten(), minlength=len(class_names) + 1)[1:]
        present = [int(c) for c in counts.argsort(descending=True)[:MAX_REGIONS] if counts[c] > 0]
        return [ExplainTarget(task, kind, f"{task}: {_name(class_names, c)} ({int(counts[c])} px)", label=c,
                              region=prediction[0] == c + 1) for c in present]
    if kind == "detection":
        found = prediction[0]
        count = min(MAX_BOXES, max(1, int((found["scores"] >= MIN_BOX_SCORE).sum())))
        return [ExplainTarget(task, kind, f"{task}: {_name(class_names, int(label))} box {i + 1} ({float(score):.2f})",
                              label=int(label), box=box)
                for i, (box, score, label) in enumerate(zip(found["boxes"][:count], found["scores"][:count],
                                                            found["labels"][:count]))]
    if kind == "reconstruction":
        return [ExplainTarget(task, kind, f"{task}: reconstruction error")]
    raise ValueError(f"task {task!r}: head kind {kind!r} has no explain target")


def _name(class_names: list[str], index: int) -> str:
    return class_names[index] if 0 <= index < len(class_names) else str(index)
