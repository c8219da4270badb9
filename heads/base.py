"""What every task head provides. The trainer relies on nothing else.

A head is built from the backbone's feature channels and strides, the
number of classes of the data, and its own options (a dataclass declared
next to it). It owns its loss, its decoding into plain predictions and the
metric its users judge it by.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

from torch import Tensor, nn

from datasets.sample import Batch
from datasets.summary import DataSummary

if TYPE_CHECKING:
    from backbones.base import Backbone


class Metric(Protocol):
    def update(self, predictions: Any, batch: Batch) -> None: ...
    def compute(self) -> dict[str, float]: ...
    # Distributed validation: each rank updates its own shard, rank 0 merges the others in and computes once.
    def merge(self, other: "Metric") -> None: ...


class Head(nn.Module):
    """Base class: subclasses set `Options` and `kind` and implement the four methods."""

    # What decode() returns: "classification" (probabilities [B,C]), "segmentation" (labels [B,H,W]),
    # "detection" (per image {boxes xyxy, scores, labels}), "reconstruction" (images [B,C,H,W], C the input's channels).
    # A detection head also has `dense_predictions(outputs) -> (boxes [B,N,4], scores [B,N,C])`: every candidate
    # before selection, differentiable (explain attributes a box's score through it).
    kind: str = ""
    # True: forward needs `features.pool_indices` (the backbone's max-pool indices, see backbones/pool_indices.py);
    # MultiTaskModel then switches the backbone's recording on.
    needs_pool_indices: bool = False

    def forward(self, features: list[Tensor], image: Tensor) -> Any:
        raise NotImplementedError

    def loss(self, outputs: Any, batch: Batch) -> dict[str, Tensor]:
        """Named scalar terms whose sum is the task loss.

        Samples whose target is missing are ignored; a batch with none
        gives zero terms that stay connected to the graph (so DDP sees
        every parameter used) and are never NaN.
        """
        raise NotImplementedError

    def decode(self, outputs: Any) -> Any:
        raise NotImplementedError

    def metric(self) -> Metric:
        raise NotImplementedError

    # Exported models (ONNX, TorchScript, MLflow) return flat named tensors, "<task>_<name>" each. The default
    # serves heads whose eval output is one tensor; heads with structured outputs override both.
    output_name: str = "logits"

    def named_outputs(self, outputs: Any) -> dict[str, Tensor]:
        """The eval outputs as named tensors (names without the task prefix)."""
        return {self.output_name: outputs}

    def from_named_outputs(self, named: dict[str, Tensor], image_size: tuple[int, int]) -> Any:
        """What `decode` takes, rebuilt from `named_outputs` (e.g. an ONNX session's results) for images of
        `image_size` (H, W)."""
        return named[self.output_name]

    # Optional hooks; the defaults do nothing.

    def corrupt(self, image: Tensor) -> Tensor | None:
        """A head that learns from a corrupted input (denoising) returns it here; the model then runs the
        backbone once more, on it, for this head alone, in training mode only. None: the shared features."""
        return None

    def fit_data(self, summary: DataSummary) -> None:
        """Called once before training with statistics of the training set (e.g. box sizes for auto
        anchors). Whatever is fitted must live in buffers, so checkpoints restore it."""

    def adopt_backbone(self, backbone: Backbone) -> None:
        """Called once by build_model after the head is built, with the model's backbone: a head that starts
        from weights the backbone offers besides its stages (FCN's fc6/fc7 from VGG's `classifier_fc`) copies
        them here. An option the backbone cannot serve raises ValueError("<option>: <what is needed>");
        build_model prefixes it with model.heads.<task>. A checkpoint loaded afterwards overwrites the copy."""


def zero_loss(outputs: Tensor) -> Tensor:
    """A zero that keeps `outputs` in the graph, for batches without targets."""
    # Summed in fp32: an fp16 sum of a large output overflows to inf, and inf * 0 is NaN.
    return outputs.float().sum() * 0.0
