"""A trained model and what using it needs, from a checkpoint file or an MLflow run (`runs:/<run id>`).

Everything predict, eval and export read from a checkpoint passes through `load_trained`, so a checkpoint
that lacks something (an older run, another program's file) is one named error, before any image is read.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path

from backbones.weights import WeightsFileError
from datasets.image_io import ImagePolicy
from pipeline.config.schema import Config, parse_config
from pipeline.engine.checkpoint import load_checkpoint
from pipeline.engine.initial_weights import take_architecture
from pipeline.model import MultiTaskModel, build_model

log = logging.getLogger(__name__)

RUN_PREFIX = "runs:/"
RUN_CHECKPOINTS = ("checkpoints/best.pt", "checkpoints/last.pt")   # what a run logs; the best one first
REQUIRED = ("config", "class_names", "model")


@dataclass
class TrainedModel:
    model: MultiTaskModel          # in eval mode, on the CPU; the EMA weights when the run kept them
    config: Config                 # the run's own config
    class_names: list[str]
    category_ids: list[int]        # the dataset's category id of each class (COCO results use them)
    policy: ImagePolicy            # how the run read its images (intensity range resolved)
    checkpoint: Path
    state: dict                    # the checkpoint itself


def load_trained(source: str | Path, tracking_uri: str | None = None) -> TrainedModel:
    """A checkpoint path, or `runs:/<run id>[/artifact]` fetched from the store at `tracking_uri`."""
    path = fetch_run_checkpoint(str(source), tracking_uri) if str(source).startswith(RUN_PREFIX) else Path(source)
    state = load_checkpoint(path)
    missing = [key for key in REQUIRED if key not in state]
    if missing:
        raise WeightsFileError(f"{path}: this checkpoint lacks {missing}; expected a checkpoint written by "
                               "`python -m pipeline train`")
    config = parse_config(state["config"], source=f"{path} (embedded config)")
    class_names = [str(name) for name in state["class_names"]]
    return TrainedModel(model=_model(path, state, config, len(class_names)), config=config,
                        class_names=class_names, category_ids=_category_ids(path, state, len(class_names)),
                        policy=_policy(path, state, config), checkpoint=path, state=state)


def fetch_run_checkpoint(uri: str, tracking_uri: str | None) -> Path:
    """The local copy of a run's checkpoint: `runs:/<id>/<artifact>`, or for `runs:/<id>` its best.pt, else
    its last.pt."""
    import mlflow.artifacts

    run_id, _, artifact = uri[len(RUN_PREFIX):].partition("/")
    errors = []
    for candidate in [artifact] if artifact else list(RUN_CHECKPOINTS):
        try:
            return Path(mlflow.artifacts.download_artifacts(artifact_uri=f"{RUN_PREFIX}{run_id}/{candidate}",
                                                            tracking_uri=tracking_uri))
        except Exception as error:  # MLflow raises several types for a missing run or artifact
            errors.append(f"{candidate}: {error}")
    raise FileNotFoundError(f"{uri}: no checkpoint in the MLflow store {tracking_uri or '(default)'}: "
                            + "; ".join(errors))


def _model(path: Path, state: dict, config: Config, num_classes: int) -> MultiTaskModel:
    # The checkpoint holds every weight; do not ask for pretrained files.
    model_config = dataclasses.replace(config.model,
                                       backbone=dataclasses.replace(config.model.backbone, pretrained=False))
    model = build_model(model_config, num_classes=num_classes, in_channels=config.data.channels)
    weights = state["ema"] if state.get("ema") is not None else state["model"]
    try:
        take_architecture(model, state, weights)    # a pruned model's shapes
        model.load_state_dict(weights)
    except RuntimeError as error:  # written by code whose heads differ from today's
        raise WeightsFileError(f"{path}: its weights do not fit the model this code builds from its config "
                               f"({str(error).splitlines()[0]}); was it written by an older version?") from None
    return model.eval()


def _category_ids(path: Path, state: dict, num_classes: int) -> list[int]:
    ids = state.get("category_ids")
    if ids is None:
        log.warning("%s: no category ids stored (an older checkpoint): results use 1..%d", path, num_classes)
        return list(range(1, num_classes + 1))
    return [int(i) for i in ids]


def _policy(path: Path, state: dict, config: Config) -> ImagePolicy:
    stored = state.get("image_policy")
    if stored is not None:
        return ImagePolicy.from_dict(stored)
    policy = config.data.image_policy()
    if policy.intensity == "dataset":
        raise WeightsFileError(f"{path}: data.intensity is 'dataset' but the checkpoint does not store the "
                               "range it measured (an older checkpoint); retrain, or override the range "
                               "with data.intensity=[lo,hi] in a config")
    return policy
