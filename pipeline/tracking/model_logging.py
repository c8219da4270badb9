"""The model as MLflow logs it: `mlflow.pytorch.load_model("runs:/<run id>/model")` gives it back.

The logged module is `NamedOutputsModel` (pipeline/inference/named_outputs.py) over a CPU copy of the model in
eval mode: forward(image float32 [B,C,H,W] in [0,1]) returns a flat dict of tensors named "<task>_<name>"
("cls_logits", "det_8", "recon_mu", ...), the same names the ONNX and TorchScript exports return, so MLflow can
describe them in a signature. Decoding (NMS, argmax) stays with the heads:
`raw_outputs(model.heads, logged(image), image_size)` rebuilds what each `heads[task].decode` takes.

Pyfunc serving is not offered: MLflow's pytorch pyfunc wants one output tensor, and a multi-task model
has several.
"""
from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from importlib.metadata import PackageNotFoundError, version

import numpy as np
import torch
from torch import Tensor

from pipeline.inference.named_outputs import NamedOutputsModel
from pipeline.model import MultiTaskModel
from pipeline.tracking.http_limits import fluent_tracking_uri

log = logging.getLogger(__name__)

# What loading the exported graph needs installed, pinned to this environment's versions (naming them
# skips MLflow's requirement inference, which loads the model in a subprocess).
REQUIREMENTS = ["torch", "torchvision"]
EXAMPLE_IMAGES = 2


def exportable(model: MultiTaskModel) -> NamedOutputsModel:
    """A CPU copy in eval mode: the trained model stays where and as it is, and the logged one loads
    without a GPU."""
    return NamedOutputsModel(copy.deepcopy(model).cpu()).eval()


def input_example(images: Tensor, count: int = EXAMPLE_IMAGES) -> np.ndarray:
    """`count` images [N,C,H,W] float32 in [0,1] (C = data.channels, as the batches come), as MLflow stores an
    input example. At least two, repeating a lone image: torch.export fixes a batch dimension of size 1, and
    the logged model would take no other."""
    picks = torch.arange(max(count, 2)) % len(images)
    return images[picks].detach().float().cpu().numpy()


def signature(model: NamedOutputsModel, example: np.ndarray):
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
