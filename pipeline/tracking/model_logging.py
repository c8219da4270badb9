"""The model as MLflow logs it: `mlflow.pytorch.load_model("runs:/<run id>/model")` gives it back.

`ExportedModel` wraps a MultiTaskModel (a CPU copy in eval mode): forward(image float32 [B,C,H,W] in [0,1])
returns a flat dict of tensors, each head's raw eval output under its task name ("cls"; a list or tuple
as "det/levels/0", ...; a dict or dataclass by key or field, "recon/mu"), so MLflow can describe it in a
signature. Decoding (NMS, argmax) stays with the heads: `heads[task].decode` on the model's own outputs.

Pyfunc serving is not offered: MLflow's pytorch pyfunc wants one output tensor, and a multi-task model
has several.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.tracking.http_limits import fluent_tracking_uri
from pipeline.model import MultiTaskModel

log = logging.getLogger(__name__)

# What loading the exported graph needs installed, pinned to this environment's versions (naming them
# skips MLflow's requirement inference, which loads the model in a subprocess).
REQUIREMENTS = ["torch", "torchvision"]
EXAMPLE_IMAGES = 2


class ExportedModel(nn.Module):
    def __init__(self, model: MultiTaskModel) -> None:
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        return flatten_outputs(self.model(image))


def exportable(model: MultiTaskModel) -> ExportedModel:
    """A CPU copy in eval mode: the trained model stays where and as it is, and the logged one loads
    without a GPU."""
    return ExportedModel(copy.deepcopy(model).cpu()).eval()


def flatten_outputs(outputs: dict[str, Any]) -> dict[str, Tensor]:
    flat: dict[str, Tensor] = {}
    for task, value in outputs.items():
        _flatten(task, value, flat)
    return flat


def _flatten(name: str, value: Any, flat: dict[str, Tensor]) -> None:
    if isinstance(value, Tensor):
        flat[name] = value
    elif dataclasses.is_dataclass(value):
        for f in dataclasses.fields(value):
            _flatten(f"{name}/{f.name}", getattr(value, f.name), flat)
    elif isinstance(value, dict):
        for key, item in value.items():
            _flatten(f"{name}/{key}", item, flat)
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _flatten(f"{name}/{i}", item, flat)
    # Anything else (YOLO's input size, plain ints) describes the output rather than being one.


def input_example(images: Tensor, count: int = EXAMPLE_IMAGES) -> np.ndarray:
    """`count` images [N,C,H,W] float32 in [0,1] (C = data.channels, as the batches come), as MLflow stores an
    input example. At least two, repeating a lone image: torch.export fixes a batch dimension of size 1, and
    the logged model would take no other."""
    picks = torch.arange(max(count, 2)) % len(images)
    return images[picks].detach().float().cpu().numpy()


def signature(model: ExportedModel, example: np.ndarray):
    """The input tensor spec and one named tensor spec per output, from a forward pass on the example."""
    from mlflow.models import infer_signature

    with torch.no_grad():
        outputs = model(torch.from_numpy(example))
    return infer_signature(example, {name: value.numpy() for name, value in outputs.items()})


def requirements() -> list[str]:
    pinned = []
    for name in REQUIREMENTS:
        try:
            pinned.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            pinned.append(name)
    return pinned


def log_exported_model(client, uri: str, run_id: str, name: str, model: MultiTaskModel, images: Tensor) -> None:
    """mlflow.pytorch.log_model of `exportable(model)` into run `run_id` of the store at `uri`, with an input
    example from `images` and its signature. Raises on failure (the tracker turns that into a warning).

    Saved in MLflow's default "pt2" format (torch.export): a graph that loads without unpickling code or
    importing this repository, for the example's image size and any batch size. Every backbone here
    exports; a model torch.export cannot trace fails to log, with torch's reason in the warning."""
    import mlflow.pytorch

    wrapper = exportable(model)
    example = input_example(images)
    # Created here, in the run's experiment: left to itself, log_model would create the logged model in
    # the fluent API's active experiment (the Default one), where runs:/<run id>/model does not look.
    logged = client.create_logged_model(client.get_run(run_id).info.experiment_id, name=name, source_run_id=run_id)
    with fluent_tracking_uri(uri), _without_serving_check_warning():
        mlflow.pytorch.log_model(wrapper, name=name, model_id=logged.model_id, run_id=run_id,
                                 input_example=example, signature=signature(wrapper, example),
                                 serialization_format="pt2", pip_requirements=requirements())


class _ServingCheckFilter(logging.Filter):
    """log_model checks the input example through MLflow's pyfunc, which accepts one output tensor only:
    with a dict of outputs that check always fails, and its warning would only mislead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to validate serving input example")


@contextmanager
def _without_serving_check_warning() -> Iterator[None]:
    logger, check = logging.getLogger("mlflow.models.model"), _ServingCheckFilter()
    logger.addFilter(check)
    try:
        yield
    finally:
        logger.removeFilter(check)
