"""MLflow tracking: one run per training job.

The default store is `runs/mlflow.db` (sqlite) with artifacts under
`runs/artifacts`; `MLFLOW_TRACKING_URI` or `tracking.uri` override it.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import mlflow
from mlflow.tracking import MlflowClient

from pipeline.config import TrackingConfig

DEFAULT_URI = "sqlite:///runs/mlflow.db"


def resolve_uri(config: TrackingConfig) -> str:
    return config.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI


def flatten(data: dict[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested config -> {"train.optimizer.lr": "0.001", ...} for MLflow params."""
    flat: dict[str, str] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = str(value)
    return flat


class Tracker:
    """A thin owner of one MLflow run; every call goes through one client bound to one URI."""

    def __init__(self, config: TrackingConfig) -> None:
        self.uri = resolve_uri(config)
        self.local_db = Path(self.uri.removeprefix("sqlite:///")) if self.uri.startswith("sqlite:///") else None
        if self.local_db:
            self.local_db.parent.mkdir(parents=True, exist_ok=True)
        self.client = MlflowClient(tracking_uri=self.uri)
        self.experiment_id = self._experiment(config.experiment)
        self.run_name = config.run_name
        self.run_id: str | None = None

    def _experiment(self, name: str) -> str:
        found = self.client.get_experiment_by_name(name)
        if found is not None:
            return found.experiment_id
        # A local sqlite store keeps artifacts beside the database (MLflow would use ./mlruns); a server decides itself.
        location = (self.local_db.parent / "artifacts").resolve().as_uri() if self.local_db else None
        return self.client.create_experiment(name, artifact_location=location)

    def start(self, params: dict[str, Any], tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=self.run_name, tags=tags)
        self.run_id = run.info.run_id
        flat = flatten(params)
        items = list(flat.items())
        for i in range(0, len(items), 100):  # MLflow caps params per batch call at 100
            self.client.log_batch(self.run_id, params=[mlflow.entities.Param(k, v[:6000]) for k, v in items[i:i + 100]])
        return self.run_id

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        stamp = mlflow.utils.time.get_current_time_millis()
        entries = [mlflow.entities.Metric(k, float(v), stamp, step) for k, v in metrics.items()]
        for i in range(0, len(entries), 1000):
            self.client.log_batch(self.run_id, metrics=entries[i:i + 1000])

    def log_artifact(self, path: str | Path, folder: str | None = None) -> None:
        self.client.log_artifact(self.run_id, str(path), artifact_path=folder)

    def end(self, status: str = "FINISHED") -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)
