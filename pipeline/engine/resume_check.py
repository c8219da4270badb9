"""Whether a checkpoint can continue under a config, decided before any run folder, file or MLflow record is
touched: a `--resume` of another run's checkpoint (other heads, classes, backbone, data order) is a named
error and leaves that run exactly as it was."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from pipeline.config.schema import Config, config_to_dict
from pipeline.engine.optim import build_optimizer
from pipeline.config.typed import ConfigError

# What may differ between the interrupted run and its continuation: how long, where, how it is logged and
# checkpointed, and where the same data now lives. Everything else decides what is trained and in which order.
MAY_CHANGE = ("name", "output_dir", "tracking.", "train.epochs", "train.device", "train.log_every",
              "train.checkpoint.", "train.early_stopping.", "train.max_bad_steps", "data.num_workers",
              "data.train", "data.val")
MAX_LISTED = 8


def check_resumable(checkpoint: Path, state: dict[str, Any], config: Config, class_names: list[str],
                    model: nn.Module) -> None:
    saved_config = state.get("config") or {}
    differences = config_differences(saved_config, config_to_dict(config))
    saved_tasks = sorted(saved_config.get("model", {}).get("heads", {}))
    if saved_tasks and saved_tasks != sorted(config.model.heads):
        differences.insert(0, f"model.heads: checkpoint tasks {saved_tasks}, config {sorted(config.model.heads)}")
    saved_distill = saved_config.get("model", {}).get("distill")
    if (saved_distill is None) != (config.model.distill is None):   # one side null: no leaves to compare below
        differences.append(f"model.distill: checkpoint {saved_distill!r}, config "
                           f"{config_to_dict(config)['model']['distill']!r}")
    saved_classes = state.get("class_names")
    if saved_classes is not None and list(saved_classes) != list(class_names):
        differences.append(f"classes: checkpoint {list(saved_classes)}, data {list(class_names)}")
    if not differences:  # same setup, yet the tensors may not fit (e.g. a checkpoint of older code)
        differences = tensor_differences(state["model"], model) + optimizer_differences(state, config, model)
    if differences:
        listed = differences[:MAX_LISTED] + ([f"... {len(differences) - MAX_LISTED} more"]
                                             if len(differences) > MAX_LISTED else [])
        raise ConfigError(
            f"--resume {checkpoint}: this checkpoint cannot continue under this config; it differs in: "
            + "; ".join(listed) + ". Only " + ", ".join(key.rstrip(".") for key in MAY_CHANGE)
            + " may change on resume; to start a new run from its backbone weights, set "
            f"model.backbone.pretrained={checkpoint} instead of --resume")


def config_differences(saved: dict, current: dict) -> list[str]:
    """Leaves that both configs have and that differ, outside MAY_CHANGE (a key only one side has is a
    default of another code version: nothing to compare)."""
    old, new = flatten(saved), flatten(current)
    return [f"{key}: checkpoint {old[key]!r}, config {new[key]!r}" for key in sorted(old.keys() & new.keys())
            if old[key] != new[key] and not key.startswith(MAY_CHANGE)]


def flatten(raw: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(raw, dict):
        leaves: dict[str, Any] = {}
        for key, value in raw.items():
            leaves.update(flatten(value, f"{prefix}{key}."))
        return leaves
    return {prefix.rstrip("."): list(raw) if isinstance(raw, tuple) else raw}


def optimizer_differences(state: dict[str, Any], config: Config, model: nn.Module) -> list[str]:
    """The optimiser's parameter groups (name, size) in the checkpoint against those this code builds: a
    checkpoint of older code may group them otherwise (e.g. before norms and biases had a group of their own)."""
    # the learned task weights' group and the distillation adapters': decided by model.weighting, model.distill
    saved = [(group.get("name"), len(group["params"])) for group in state["optimizer"]["param_groups"]
             if group.get("name") not in ("weighting", "distill")]
    built = [(group["name"], len(group["params"]))
             for group in build_optimizer(model, config.train.optimizer, config.model.backbone).param_groups]
    if saved == built:
        return []
    return [f"optimizer parameter groups: checkpoint {saved}, this code {built} (a checkpoint written before "
            "norms and biases got their own no-decay groups resumes with train.optimizer.decay_norm_and_bias=true)"]


def tensor_differences(saved: dict[str, Any], model: nn.Module) -> list[str]:
    expected = {key: tuple(value.shape) for key, value in model.state_dict().items()}
    found = {key: tuple(value.shape) for key, value in saved.items()}
    return ([f"tensor {key}: missing from the checkpoint" for key in sorted(expected.keys() - found.keys())]
            + [f"tensor {key}: not in this model" for key in sorted(found.keys() - expected.keys())]
            + [f"tensor {key}: checkpoint shape {found[key]}, model {expected[key]}"
               for key in sorted(expected.keys() & found.keys()) if expected[key] != found[key]])
