"""`python -m pipeline replay RUN_DIR [--uri URI]`: send a run's local copy to the MLflow store.

Reads RUN_DIR/metrics.jsonl (pipeline/tracking/run_log.py) and sends the metric values the store does not have yet,
to the same run, or, for a run that was never on the store (id "local-..."), to a run created now with the
logged params and tags. Values are identified by key, step and timestamp, so replaying twice adds nothing.
Files that were not uploaded are uploaded (when still on disk) and the run gets its final status.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from mlflow.entities import Metric
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from pipeline.tracking.sender import MAX_BATCH
from pipeline.tracking.http_limits import HttpLimits, bounded_http, short_error
from pipeline.tracking.run_log import FILE_NAME, MetricRecord, RunRecord, append_event, read_run_log
from pipeline.tracking.tracker import LOCAL_RUN_PREFIX, experiment_id, log_params_and_tags

log = logging.getLogger(__name__)


@dataclass
class ReplayResult:
    run_id: str                         # the run on the store
    uri: str
    sent: int                           # metric values sent now
    present: int                        # metric values the store already had
    uploaded: list[str]                 # files uploaded now
    missing_files: list[str]            # files noted as not uploaded that are gone from disk
    created: bool                       # the run was created by this replay


def replay(run_dir: str | Path, uri: str | None = None, http: HttpLimits = HttpLimits()) -> ReplayResult:
    """Send what the store lacks of the run logged in `run_dir`, to `uri` (default: the store the run was
    started against). Raises ConnectionError when the store cannot be reached."""
    path = Path(run_dir) / FILE_NAME
    record = read_run_log(path)
    uri = uri or record.uri
    client = MlflowClient(tracking_uri=uri)
    try:
        with bounded_http(http):
            return _replay(client, uri, record, path)
    except (MlflowException, OSError) as error:  # OSError: requests' connection errors (artifact uploads)
        raise ConnectionError(f"{path}: cannot replay run {record.run_id} to MLflow store {uri}: "
                              f"{short_error(error)}") from error


def _replay(client: MlflowClient, uri: str, record: RunRecord, path: Path) -> ReplayResult:
    run_id, created = _target_run(client, uri, record, path)
    missing = _missing_metrics(client, run_id, record.metrics)
    for i in range(0, len(missing), MAX_BATCH):
        client.log_batch(run_id, metrics=[Metric(m.key, m.value, m.timestamp, m.step)
                                          for m in missing[i:i + MAX_BATCH]])
    uploaded, gone = [], []
    for file, folder in dict.fromkeys(record.artifacts_not_uploaded):  # once each, in order
        if Path(file).is_file():
            client.log_artifact(run_id, file, artifact_path=folder)
            uploaded.append(file)
        else:
            gone.append(file)
    if record.model_not_logged:
        log.warning("run %s: the model was not logged during training and replay cannot log it; load the "
                    "checkpoint in %s instead", run_id, path.parent)
    if record.status is not None:
        client.set_terminated(run_id, status=record.status)
    result = ReplayResult(run_id, uri, len(missing), len(record.metrics) - len(missing), uploaded, gone, created)
    log.info("replayed %s to run %s on %s: %d metric values sent, %d already there, %d files uploaded",
             path, run_id, uri, result.sent, result.present, len(uploaded))
    return result


def _target_run(client: MlflowClient, uri: str, record: RunRecord, path: Path) -> tuple[str, bool]:
    """The run to replay into: the logged one if the store has it (or the one an earlier replay created
    there), else a new run in the same experiment, remembered in the run log for the next replay."""
    for run_id in (record.replayed.get(uri), record.run_id):
        if run_id and not run_id.startswith(LOCAL_RUN_PREFIX) and _exists(client, run_id):
            return run_id, False
    run = client.create_run(experiment_id(client, record.experiment, uri), run_name=record.run_name,
                            tags={**record.tags, "replayed_from": record.run_id})
    log_params_and_tags(client, run.info.run_id, record.params, {})
    append_event(path, {"event": "replayed", "run_id": run.info.run_id, "uri": uri})
    return run.info.run_id, True


def _exists(client: MlflowClient, run_id: str) -> bool:
    try:
        client.get_run(run_id)
    except MlflowException as error:
        if error.error_code == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True


def _missing_metrics(client: MlflowClient, run_id: str, metrics: list[MetricRecord]) -> list[MetricRecord]:
    """The values whose (key, step, timestamp) the store does not hold yet."""
    present: set[tuple[str, int, int]] = set()
    for key in dict.fromkeys(m.key for m in metrics):
        present |= {(key, m.step, m.timestamp) for m in client.get_metric_history(run_id, key)}
    return [m for m in metrics if (m.key, m.step, m.timestamp) not in present]
