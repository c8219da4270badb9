"""Distillation losses, one per head kind: how far a student head's outputs are from its teachers' (averaged).

A new head kind is one loss function plus one entry in KINDS (with a `mismatch` check when the teacher's
outputs must be laid out like the student's). Every loss is computed in float32 (or the inputs' wider type)
and is zero when the student's outputs equal its single teacher's.

- classification: Hinton et al. 2015, T^2 KL(softmax(teacher / T) || softmax(student / T)), batchmean
  (multi-label heads: the same with a Bernoulli per class).
- segmentation: the same per pixel, averaged over pixels (teacher logits resized bilinearly to the student's).
- detection: objectness as a Bernoulli KL to the teacher's objectness, the classes as a KL to its class
  probabilities weighted by its objectness, and the decoded boxes (smooth L1, in image fractions) where the
  teacher is confident. Candidate by candidate, so both heads need the same layout. SSD's softmax over
  background + classes reads as objectness 1 - P(background) and class probabilities P(class | object).
- reconstruction: MSE of the student's reconstruction to the teacher's.

The temperature softens the classification and segmentation targets only; detection compares objectness and
class probabilities as they are. Ensembles average the teachers' probabilities (in log space), boxes and images,
not their logits.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from heads.base import Head
from heads.classification import ClassificationOutputs
from heads.pspnet import main_logits
from heads.ssd import SSDHead, SSDOutputs
from heads.vae import VAEOutput
from heads.yolo import YoloHead, YoloOutputs
from heads.yolo_v1 import YoloV1Head, YoloV1Outputs

CONFIDENT = 0.5   # teacher objectness above which its box is distilled (below it, the box is not a claim)


@dataclass
class HeadOutputs:
    """One head's raw forward outputs, with the head that reads them."""
    head: Head
    outputs: Any


DistillLoss = Callable[[HeadOutputs, list[HeadOutputs], float], Tensor]   # student, teachers, temperature
Mismatch = Callable[[Head, Head], "str | None"]                           # student, teacher -> why not


# ---- shared pieces -----------------------------------------------------------------------------------------

def wide(tensor: Tensor) -> Tensor:
    """float32 at least: autocast's half-precision outputs lose the small differences a KL is made of."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def categorical_kl(student_logits: Tensor, teacher_logits: list[Tensor], dim: int) -> Tensor:
    """KL(mean_i softmax(teacher_i) || softmax(student)) along `dim`, elementwise over the other dims."""
    log_student = wide(student_logits).log_softmax(dim)
    log_teachers = torch.stack([wide(t).log_softmax(dim) for t in teacher_logits])
    # log of the mean probability, exact (and equal to the single teacher's log_softmax) in log space
    log_target = torch.logsumexp(log_teachers, dim=0) - math.log(len(teacher_logits))
    return (log_target.exp() * (log_target - log_student)).sum(dim)


def bernoulli_kl(student_logits: Tensor, teacher_logits: list[Tensor]) -> Tensor:
    """KL(Bernoulli(mean_i sigmoid(teacher_i)) || Bernoulli(sigmoid(student))), elementwise. Its gradient is
    that of BCE with the soft target; unlike BCE it is zero when the two agree."""
    student = wide(student_logits)
    teachers = torch.stack([wide(t) for t in teacher_logits])
    count = math.log(len(teacher_logits))
    log_p = torch.logsumexp(-F.softplus(-teachers), dim=0) - count       # log mean sigmoid
    log_q = torch.logsumexp(-F.softplus(teachers), dim=0) - count        # log mean (1 - sigmoid)
    return log_p.exp() * (log_p + F.softplus(-student)) + log_q.exp() * (log_q + F.softplus(student))


def mean_probability(teacher_logits: list[Tensor]) -> Tensor:
    return torch.stack([wide(t).sigmoid() for t in teacher_logits]).mean(dim=0)


def no_mismatch(student: Head, teacher: Head) -> str | None:
    return None


# ---- classification ----------------------------------------------------------------------------------------

def class_logits(outputs: Tensor | ClassificationOutputs) -> Tensor:
    """The main classifier's logits (auxiliary classifiers are not distilled)."""
    return outputs.logits if isinstance(outputs, ClassificationOutputs) else outputs


def classification_loss(student: HeadOutputs, teachers: list[HeadOutputs], temperature: float) -> Tensor:
    logits = class_logits(student.outputs) / temperature
    targets = [class_logits(t.outputs) / temperature for t in teachers]
    if getattr(student.head.options, "multi_label", False):
        per_sample = bernoulli_kl(logits, targets).sum(dim=1)
    else:
        per_sample = categorical_kl(logits, targets, dim=1)
    # T^2 keeps the soft targets' gradients on the scale of the hard ones (Hinton et al. 2015, section 2)
    return temperature ** 2 * per_sample.mean()


def classification_mismatch(student: Head, teacher: Head) -> str | None:
    if student.options.multi_label != teacher.options.multi_label:
        return (f"multi_label is {student.options.multi_label} in the student and {teacher.options.multi_label} "
                "in the teacher: softmax and per-class sigmoid probabilities do not compare")
    return None


# ---- segmentation ------------------------------------------------------------------------------------------

def segmentation_loss(student: HeadOutputs, teachers: list[HeadOutputs], temperature: float) -> Tensor:
    logits = main_logits(student.outputs)    # a training PSPNet's auxiliary logits are not distilled
    size = logits.shape[-2:]
    teacher_logits = [main_logits(t.outputs) for t in teachers]
    targets = [t if t.shape[-2:] == size else F.interpolate(wide(t), size=size, mode="bilinear", align_corners=False)
               for t in teacher_logits]
    per_pixel = categorical_kl(logits / temperature, [t / temperature for t in targets], dim=1)
    return temperature ** 2 * per_pixel.mean()


# ---- detection ---------------------------------------------------------------------------------------------

@dataclass
class Candidates:
    """Every candidate box of a detection head, flattened in dense_predictions' order."""
    objectness: Tensor      # [B, N] logits
    classes: Tensor         # [B, N, C] logits
    class_softmax: bool     # one softmax over the classes (yolo_v1, ssd) or a sigmoid per class (yolo)
    boxes: Tensor           # [B, N, 4] xyxy as fractions of the image


def yolo_candidates(head: YoloHead, outputs: YoloOutputs) -> Candidates:
    raw = torch.cat([level.flatten(1, 3) for level in outputs.levels], dim=1)   # [B, N, 5 + C]
    return Candidates(raw[..., 4], raw[..., 5:], False, image_fractions(head, outputs, outputs.image_size))


def yolo_v1_candidates(head: YoloV1Head, outputs: YoloV1Outputs) -> Candidates:
    per_cell = 5 * head.options.boxes_per_cell
    grid = outputs.grid                                                            # [B, Sh, Sw, 5 * nb + C]
    predictors = grid[..., :per_cell].unflatten(-1, (head.options.boxes_per_cell, 5))
    classes = grid[..., per_cell:].unsqueeze(3).expand(*predictors.shape[:4], -1)  # the cell's, per predictor
    return Candidates(predictors[..., 4].flatten(1, 3), classes.flatten(1, 3), True,
                      image_fractions(head, outputs, outputs.image_size))


def ssd_candidates(head: SSDHead, outputs: SSDOutputs) -> Candidates:
    """SSD's one softmax over background + C as objectness = 1 - P(background), whose logit is
    logsumexp(class logits) - background logit, and the classes' softmax among themselves (P(class | object))."""
    logits = torch.cat([level.flatten(1, 3) for level in outputs.logits], dim=1)   # [B, N, C + 1]
    objectness = torch.logsumexp(wide(logits[..., 1:]), dim=-1) - wide(logits[..., 0])
    return Candidates(objectness, logits[..., 1:], True, image_fractions(head, outputs, outputs.image_size))


CANDIDATES: dict[type, Callable[[Any, Any], Candidates]] = {YoloHead: yolo_candidates, YoloV1Head: yolo_v1_candidates,
                                                            SSDHead: ssd_candidates}


def image_fractions(head: Head, outputs: Any, image_size: tuple[int, int]) -> Tensor:
    boxes, _ = head.dense_predictions(outputs)
    height, width = image_size
    return boxes / boxes.new_tensor([width, height, width, height])


def candidates(head: Head, outputs: Any) -> Candidates:
    if type(head) not in CANDIDATES:
        raise ValueError(f"distillation: no candidate layout for detection head {type(head).__name__}; "
                         f"known: {', '.join(t.__name__ for t in CANDIDATES)}")
    return CANDIDATES[type(head)](head, outputs)


def detection_loss(student: HeadOutputs, teachers: list[HeadOutputs], temperature: float) -> Tensor:
    """Objectness KL summed over candidates per unit of teacher objectness (at least one per image, as the
    head normalises per positive), plus the class KL and the box error averaged with the teacher's objectness
    as weights; boxes only where the (mean) teacher objectness exceeds CONFIDENT."""
    mine = candidates(student.head, student.outputs)
    theirs = [candidates(t.head, t.outputs) for t in teachers]
    confidence = mean_probability([t.objectness for t in theirs])                  # [B, N]
    objectness = bernoulli_kl(mine.objectness, [t.objectness for t in theirs]).sum()
    objectness = objectness / confidence.sum().clamp(min=float(confidence.shape[0]))
    if mine.class_softmax:
        class_kl = categorical_kl(mine.classes, [t.classes for t in theirs], dim=-1)
    else:
        class_kl = bernoulli_kl(mine.classes, [t.classes for t in theirs]).mean(dim=-1)
    classes = (confidence * class_kl).sum() / confidence.sum().clamp(min=1e-6)
    weight = confidence * (confidence > CONFIDENT)
    target = torch.stack([t.boxes for t in theirs]).mean(dim=0)
    box_error = F.smooth_l1_loss(mine.boxes, target, reduction="none", beta=0.1).sum(dim=-1)
    boxes = (weight * box_error).sum() / weight.sum().clamp(min=1e-6)
    return objectness + classes + boxes


def detection_layout(head: Head) -> tuple:
    """What fixes the candidates' order and meaning: the head type, its levels and its anchors."""
    if isinstance(head, YoloHead):
        return ("yolo", tuple(head.strides), tuple(tuple(wh) for wh in head.anchor_sizes.round(decimals=3).tolist()))
    if isinstance(head, YoloV1Head):
        return ("yolo_v1", head.options.stride, head.options.boxes_per_cell)
    if isinstance(head, SSDHead):
        scales = tuple(round(s, 6) for s in head.default_boxes.scales)
        ratios = tuple(tuple(r) for r in head.default_boxes.aspect_ratios)
        return ("ssd", tuple(head.map_strides), scales, ratios)
    return (type(head).__name__,)


def detection_mismatch(student: Head, teacher: Head) -> str | None:
    mine, theirs = detection_layout(student), detection_layout(teacher)
    if mine == theirs:
        return None
    return (f"its candidate layout (head type, strides, anchors, boxes per cell or default boxes) is {theirs} in "
            f"the teacher and {mine} in the student; box distillation compares candidate by candidate, so both need "
            "the same head type, strides and anchors or default boxes (give the student the teacher's anchors "
            "explicitly)")


# ---- reconstruction ----------------------------------------------------------------------------------------

def reconstruction(outputs: Tensor | VAEOutput) -> Tensor:
    return outputs.reconstruction if isinstance(outputs, VAEOutput) else outputs


def reconstruction_loss(student: HeadOutputs, teachers: list[HeadOutputs], temperature: float) -> Tensor:
    target = torch.stack([wide(reconstruction(t.outputs)) for t in teachers]).mean(dim=0)
    return F.mse_loss(wide(reconstruction(student.outputs)), target)


# ---- the registry ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class KindDistillation:
    loss: DistillLoss
    mismatch: Mismatch = no_mismatch    # why a teacher head cannot teach this student head; None: it can


KINDS: dict[str, KindDistillation] = {
    "classification": KindDistillation(classification_loss, classification_mismatch),
    "segmentation": KindDistillation(segmentation_loss),
    "detection": KindDistillation(detection_loss, detection_mismatch),
    "reconstruction": KindDistillation(reconstruction_loss),
}
