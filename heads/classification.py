"""Image classification on the deepest features: global pooling -> [MLP] -> dropout -> linear.

Single-label (softmax cross-entropy with label smoothing) or multi-label
(sigmoid BCE on multi-hot targets). Optional GoogLeNet-style auxiliary
classifiers on intermediate stages add their own weighted loss terms during
training, to push gradient into the middle of the backbone; they are not run
in eval and decode never uses them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch.nn.functional as F
from torch import Tensor, nn

from datasets.sample import Batch
from heads.base import Head, zero_loss
from heads.classification_metric import ClassificationMetric, MultiLabelMetric

__all__ = ["ClassificationHead", "ClassificationMetric", "ClassificationOptions", "ClassificationOutputs",
           "MultiLabelMetric"]


@dataclass
class ClassificationOptions:
    hidden: list[int] = field(default_factory=list)  # widths of an MLP (Linear -> ReLU -> Dropout each) before the last Linear
    pooling: Literal["avg", "max"] = "avg"
    dropout: float = 0.2
    label_smoothing: float = 0.0                      # single-label only
    multi_label: bool = False                         # BCE on Batch.multi_label; decode gives sigmoid probabilities
    aux_stages: list[int] = field(default_factory=list)  # indices into the features list (0 = shallowest)
    aux_weight: float = 0.3                           # each auxiliary term is weighted by this


@dataclass
class ClassificationOutputs:
    """What forward returns in training when auxiliary classifiers are on."""
    logits: Tensor                   # [B, C] main classifier
    aux_logits: dict[int, Tensor]    # stage index -> [B, C]


def _pool(kind: str) -> nn.Module:
    return nn.AdaptiveAvgPool2d(1) if kind == "avg" else nn.AdaptiveMaxPool2d(1)


def _classifier(in_channels: int, hidden: list[int], dropout: float, num_classes: int, pooling: str) -> nn.Sequential:
    layers: list[nn.Module] = [_pool(pooling), nn.Flatten(1)]
    for width in hidden:
        layers += [nn.Linear(in_channels, width), nn.ReLU(inplace=True), nn.Dropout(dropout)]
        in_channels = width
    if not hidden:  # with an MLP its last Dropout already precedes the final Linear
        layers.append(nn.Dropout(dropout))
    layers.append(nn.Linear(in_channels, num_classes))
    return nn.Sequential(*layers)


class ClassificationHead(Head):
    kind = "classification"
    Options = ClassificationOptions

    def __init__(self, channels: list[int], strides: list[int], num_classes: int, options: ClassificationOptions, image_channels: int = 3) -> None:
        super().__init__()
        bad = [i for i in options.aux_stages if not 0 <= i < len(channels)]
        if bad:
            raise ValueError(f"classification.aux_stages: {bad} out of range; the backbone has stages "
                             f"0..{len(channels) - 1} (strides {strides})")
        self.num_classes = num_classes
        self.options = options
        self.classifier = _classifier(channels[-1], options.hidden, options.dropout, num_classes, options.pooling)
        # Small on purpose (pool -> dropout -> linear): they only shape gradients and are thrown away after training.
        self.aux = nn.ModuleDict({
            str(i): _classifier(channels[i], [], options.dropout, num_classes, options.pooling)
            for i in dict.fromkeys(options.aux_stages)
        })

    def forward(self, features: list[Tensor], image: Tensor) -> Tensor | ClassificationOutputs:
        """Logits [B, C]; in training with aux_stages, ClassificationOutputs with the auxiliary logits too.
        Eval outputs stay a plain tensor, the format every classification consumer reads."""
        logits = self.classifier(features[-1])
        if not (self.training and self.aux):
            return logits
        return ClassificationOutputs(logits, {int(i): aux(features[int(i)]) for i, aux in self.aux.items()})

    def loss(self, outputs: Tensor | ClassificationOutputs, batch: Batch) -> dict[str, Tensor]:
        logits, aux_logits = _split(outputs)
        name = "bce" if self.options.multi_label else "ce"
        terms = {name: self._loss(logits, batch)}
        for stage, aux in aux_logits.items():
            terms[f"aux{stage}"] = self.options.aux_weight * self._loss(aux, batch)
        return terms

    def _loss(self, logits: Tensor, batch: Batch) -> Tensor:
        if self.options.multi_label:
            keep = batch.has_multi_label
            if not keep.any():
                return zero_loss(logits)
            return F.binary_cross_entropy_with_logits(logits[keep], batch.multi_label[keep].to(logits.dtype))
        keep = batch.has_label
        if not keep.any():
            return zero_loss(logits)
        # MixUp / CutMix batches carry class shares (datasets/augment_mix.py): cross-entropy with them as targets.
        target = batch.soft_label[keep].to(logits.dtype) if batch.soft_label.shape[1] else batch.label[keep]
        return F.cross_entropy(logits[keep], target, label_smoothing=self.options.label_smoothing)

    def decode(self, outputs: Tensor | ClassificationOutputs) -> Tensor:
        """Class probabilities [B, C] of the main classifier: softmax, or per-class sigmoid for multi-label."""
        logits, _ = _split(outputs)
        return logits.sigmoid() if self.options.multi_label else logits.softmax(dim=1)

    def metric(self) -> ClassificationMetric | MultiLabelMetric:
        return MultiLabelMetric(self.num_classes) if self.options.multi_label else ClassificationMetric(self.num_classes)


def _split(outputs: Tensor | ClassificationOutputs) -> tuple[Tensor, dict[int, Tensor]]:
    if isinstance(outputs, ClassificationOutputs):
        return outputs.logits, outputs.aux_logits
    return outputs, {}
