"""A model's starting weights from a whole trained model (`model.init`), and the shapes a checkpoint's model has.

`model.init` starts every weight, heads included, from a checkpoint of this pipeline (a path or runs:/<id>):
fine-tuning after `prune`, or quantisation-aware training from a float model. `model.backbone.pretrained`
starts the backbone alone. A pruned model's checkpoint records its shapes ("architecture",
pipeline/compression/pruning.py); the model this code builds from the config is resized to them before the
weights load, here, on resume (`take_architecture`) and when a trained model is loaded for use
(pipeline/inference/trained.py).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn

from pipeline.compression.architecture import resize_to
from pipeline.config.typed import ConfigError
from pipeline.engine.checkpoint import load_checkpoint

QAT_SUFFIX = ".parametrizations.weight.original"   # where torch.nn.utils.parametrize keeps a quantised layer's weight


def load_initial_weights(model: nn.Module, source: str, class_names: list[str], tracking_uri: str | None) -> Path:
    """Load `source`'s weights (its EMA weights when it kept them: those its metrics measured) into `model`,
    after resizing it to the checkpoint's shapes. Returns the local checkpoint path."""
    from pipeline.inference.trained import RUN_PREFIX, fetch_run_checkpoint   # the inference side imports this

    path = fetch_run_checkpoint(source, tracking_uri) if source.startswith(RUN_PREFIX) else Path(source)
    if not path.is_file():
        raise ConfigError(f"model.init: {path} is not a file; expected a checkpoint of this pipeline "
                          "(a path or runs:/<run id>)")
    state = load_checkpoint(path)
    saved_classes = [str(name) for name in state.get("class_names", class_names)]
    if saved_classes != list(class_names):
        raise ConfigError(f"model.init: {path} was trained on classes {saved_classes}, the data has "
                          f"{list(class_names)}; expected the same classes in the same order")
    weights = state["ema"] if state.get("ema") is not None else state["model"]
    take_architecture(model, state, weights)
    try:
        model.load_state_dict(renamed_for(model, weights))
    except RuntimeError as error:
        raise ConfigError(f"model.init: {path}: its weights do not fit the model this config builds "
                          f"({str(error).splitlines()[0]}); expected a checkpoint of the same backbone and "
                          "heads") from None
    return path


def take_architecture(model: nn.Module, state: dict[str, Any], weights: dict[str, Tensor] | None = None) -> None:
    """Resize `model` to the shapes the checkpoint `state` records (nothing to do for an unpruned model or a
    checkpoint written before architectures were recorded)."""
    saved = state.get("architecture")
    if saved is not None:
        resize_to(model, saved, renamed_for(model, weights if weights is not None else state["model"]))


def renamed_for(model: nn.Module, weights: dict[str, Tensor]) -> dict[str, Tensor]:
    """`weights` under the names `model` uses: a float checkpoint's "conv.weight" is a quantisation-aware
    model's "conv.parametrizations.weight.original", and the other way round."""
    expected = {plain(key): key for key in model.state_dict()}
    return {expected.get(plain(key), key): value for key, value in weights.items()}


def plain(key: str) -> str:
    return key[:-len(QAT_SUFFIX)] + ".weight" if key.endswith(QAT_SUFFIX) else key
