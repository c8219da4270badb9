"""Resolve `model.backbone.pretrained: runs:/<run id>[/artifact path]` to a local checkpoint file.

The backbone registry only reads local files; this is where an earlier run's checkpoint (for example an
autoencoder pre-training run) is fetched from MLflow, the same store the run was tracked in.
"""
from __future__ import annotations

import dataclasses

import mlflow.artifacts

from pipeline.config.schema import ModelConfig

RUN_URI_PREFIX = "runs:/"
DEFAULT_ARTIFACT = "checkpoints/last.pt"


def with_local_weights(config: ModelConfig, tracking_uri: str) -> ModelConfig:
    """The same model config, with an MLflow run URI in `backbone.pretrained` replaced by a local file path."""
    pretrained = config.backbone.pretrained
    if not (isinstance(pretrained, str) and pretrained.startswith(RUN_URI_PREFIX)):
        return config
    run_id, _, artifact = pretrained[len(RUN_URI_PREFIX):].partition("/")
    uri = f"{RUN_URI_PREFIX}{run_id}/{artifact or DEFAULT_ARTIFACT}"
    try:
        local = mlflow.artifacts.download_artifacts(artifact_uri=uri, tracking_uri=tracking_uri)
    except Exception as error:  # MLflow raises several types for a missing run or artifact
        raise FileNotFoundError(f"model.backbone.pretrained: cannot fetch {uri} from the MLflow store "
                                f"{tracking_uri}: {error}") from error
    return dataclasses.replace(config, backbone=dataclasses.replace(config.backbone, pretrained=local))
