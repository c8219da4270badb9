"""What `python -m pipeline report RUN` reads a run from: a run folder, a checkpoint file, or `runs:/<run id>`.

- A run folder (runs/<name>/<run id>): its best.pt, else last.pt; its metrics.jsonl (every logged value, across
  resumes); the report goes beside them.
- A checkpoint file: the same, with the checkpoint's folder as the run folder (a folder without metrics.jsonl
  gives a report without curves, and says so).
- `runs:/<run id>`: the checkpoint the run logged (best.pt, else last.pt), and the metrics from the MLflow store's
  metric history (the run log is not an artifact); the report goes to the run's local folder when this machine
  has it, else to ./report-<run id>.html.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.config.schema import TrackingConfig
from pipeline.config.typed import ConfigError
from pipeline.inference.trained import RUN_PREFIX
from pipeline.tracking.run_log import FILE_NAME as RUN_LOG, MetricRecord, RunRecord, read_run_log
from pipeline.tracking.tracker import LOCAL_RUN_PREFIX, resolve_uri

log = logging.getLogger(__name__)

CHECKPOINTS = ("best.pt", "last.pt")          # the best one first, as for a runs:/ source
RUN_FORMS = "a run folder (runs/<name>/<run id>), a checkpoint file (.pt) or runs:/<run id>"


@dataclass
class RunSource:
    checkpoint: str                   # what load_trained reads: a path, or the runs:/ URI itself
    run_folder: Path | None           # the run's local folder, when there is one
    metrics: list[MetricRecord]
    run_id: str | None                # the MLflow run, when known
    tracking_uri: str | None          # the store that run is on
    status: str | None = None
    notes: list[str] = field(default_factory=list)


def find_run(source: str, tracking_uri: str | None = None) -> RunSource:
    """Resolve RUN; a folder or file that is not there, or a folder without a checkpoint, is a FileNotFoundError
    naming the path and what was expected."""
    if source.startswith(RUN_PREFIX):
        return _mlflow_run(source, resolve_uri(TrackingConfig(uri=tracking_uri)))
    path = Path(source)
    if path.is_dir():
        return _local_run(find_checkpoint(path), path, tracking_uri)
    if path.is_file():
        return _local_run(path, path.parent, tracking_uri)
    raise FileNotFoundError(f"{source}: no such folder or file; expected {RUN_FORMS}")


def find_checkpoint(folder: Path) -> Path:
    for name in CHECKPOINTS:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(f"{folder}: no {' or '.join(CHECKPOINTS)} here; expected a run folder written by "
                            "`python -m pipeline train` (runs/<name>/<run id>)")


def _local_run(checkpoint: Path, folder: Path, tracking_uri: str | None) -> RunSource:
    log_path = folder / RUN_LOG
    if not log_path.is_file():
        note = f"No {RUN_LOG} beside the checkpoint ({folder}): no loss, metric or weight curves."
        log.warning(note)
        return RunSource(str(checkpoint), folder, [], None, tracking_uri, notes=[note])
    record = read_run_log(log_path)
    uri = tracking_uri or record.uri
    return RunSource(str(checkpoint), folder, record.metrics, _store_run_id(record, uri), uri, record.status,
                     [f"Curves from {log_path}."])


def _store_run_id(record: RunRecord, uri: str) -> str | None:
    """The run's id on the store at `uri`: its own, or for a run that never reached a store (local-<hex>) the one
    a replay created there; None when it is on no store yet."""
    if not record.run_id.startswith(LOCAL_RUN_PREFIX):
        return record.run_id
    return record.replayed.get(uri)


def _mlflow_run(source: str, uri: str) -> RunSource:
    run_id = source[len(RUN_PREFIX):].partition("/")[0]
    client = MlflowClient(tracking_uri=uri)
    try:
        run = client.get_run(run_id)
        metrics = [MetricRecord(m.key, m.value, m.step, m.timestamp)
                   for key in run.data.metrics for m in client.get_metric_history(run_id, key)]
    except MlflowException as error:
        raise FileNotFoundError(f"{source}: no such run on the MLflow store {uri} ({error.message}); expected "
                                f"the id of a run tracked there (--tracking-uri names another store)") from None
    return RunSource(source, None, metrics, run_id, uri, run.info.status,
                     [f"Curves from the metric history of MLflow store {uri}."])


def require_logged_run(source: RunSource) -> tuple[str, str]:
    """(run id, store URI) to log the report to; a ConfigError when the run is on no store yet."""
    if source.run_id is None or source.tracking_uri is None:
        raise ConfigError(f"{source.run_folder}: this run was never on an MLflow store; send it with "
                          f"`python -m pipeline replay {source.run_folder}` first, then --log")
    return source.run_id, source.tracking_uri
