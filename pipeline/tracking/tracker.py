"""MLflow tracking: one run per training job, logged without ever slowing or failing the training.

The default store is `runs/mlflow.db` (sqlite) with artifacts under `runs/artifacts`; `MLFLOW_TRACKING_URI`
or `tracking.uri` override it. Only rank 0 makes a Tracker.

- Metrics: `log_metrics` returns at once; a background thread sends them in batches and retries while the
  store is away (pipeline/tracking/sender.py). Every value is also appended to the run's local copy
  (`keep_local_copy`, pipeline/tracking/run_log.py), so whatever the store never got can be sent later with
  `python -m pipeline replay RUN_DIR`.
- A URI no store can answer to (an unknown scheme, `sqlite:/x` with one slash, `http://` without a host) is a
  ConfigError as soon as it is resolved (`resolve_uri`), before any training.
- A store unreachable at `start` (connection refused, timeout) gives a local run id ("local-<hex>") and a
  warning; the run is then only kept locally, for replay. A store that answers and refuses, or cannot be
  opened (a sqlite folder that cannot be made), is a ConfigError instead: going on would hide it.
- Artifacts, figures and the model never raise on a network failure: a warning, and the local copy notes
  what was not uploaded (for the model, with the whole reason: torch.export's account of what it could not
  trace is the only way to fix it).
- MLflow's HTTP retries are bounded for our calls (pipeline/tracking/http_limits.py), so a dead server costs seconds.
"""
from __future__ import annotations

import dataclasses
import difflib
import logging
import os
import tempfile
import urllib.parse
import uuid
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from mlflow.entities import Metric, Param, RunTag
from mlflow.environment_variables import MLFLOW_ALLOW_FILE_STORE
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.time import get_current_time_millis
import sqlalchemy.exc

from pipeline.config.schema import TrackingConfig
from pipeline.tracking.sender import MAX_BATCH, MetricSender
from pipeline.tracking.http_limits import HttpLimits, bounded_http, full_error, is_unreachable, short_error
from pipeline.tracking.run_log import RunLog, last_logged_steps
from pipeline.config.typed import ConfigError

log = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///runs/mlflow.db"
LOCAL_RUN_PREFIX = "local-"
MODEL_NAME = "model"                    # the logged model resolves as runs:/<run id>/model
MAX_PARAMS_PER_BATCH = 100              # MLflow's cap on params per log_batch call
MAX_PARAM_LENGTH = 6000
OFFLINE_REASON = "the run is kept locally only: its MLflow store was unreachable when it started"


URI_FORMS = "http(s)://host:port, sqlite:///path, file:/path or a folder"
DATABASE_SCHEMES = ("sqlite", "postgresql", "mysql", "mssql")   # MLflow's SQLAlchemy stores, "+driver" allowed
OTHER_SCHEMES = ("databricks", "databricks-uc", "uc")           # MLflow's own; they need credentials to open
# Errors of opening a store that say it cannot be used as configured (the store answered and refused, a sqlite
# folder that cannot be made, a database driver that is not installed). Anything else is a bug: it propagates.
STORE_ERRORS = (MlflowException, OSError, sqlalchemy.exc.SQLAlchemyError, ImportError)


def resolve_uri(config: TrackingConfig) -> str:
    """tracking.uri, else $MLFLOW_TRACKING_URI, else the local default. One no store can answer to is a
    ConfigError naming where it came from; nothing is opened or connected to."""
    uri = config.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    problem = uri_problem(uri)
    if problem:
        raise ConfigError(f"{uri_origin(config)}: {uri!r}: {problem}; expected {URI_FORMS}")
    return uri


def uri_origin(config: TrackingConfig) -> str:
    if config.uri:
        return "tracking.uri"
    return "MLFLOW_TRACKING_URI" if os.environ.get("MLFLOW_TRACKING_URI") else "the default tracking URI"


def uri_problem(uri: str) -> str | None:
    """Why MLflow could never open a store at `uri`, from its form alone; None when it may."""
    try:
        parts = urllib.parse.urlsplit(uri)
        parts.port  # parsing the port is the check
    except ValueError as error:                 # an unclosed [IPv6] bracket, a port that is not a number
        return f"not a URI ({error})"
    scheme = parts.scheme.lower()
    if uri in OTHER_SCHEMES:                    # "databricks" alone names a store, as MLflow reads it
        return None
    if scheme in ("", "file"):
        if not MLFLOW_ALLOW_FILE_STORE.get():
            return "a folder store, which MLflow refuses unless MLFLOW_ALLOW_FILE_STORE=true is exported"
        return None
    if scheme in ("http", "https"):
        return None if parts.hostname else "no host"
    if scheme == "sqlite":
        # sqlite:/x and sqlite:x parse as URIs, but SQLAlchemy reads no database from them.
        path = uri[len("sqlite:"):]
        return None if path.startswith("///") and path[3:] else \
            "a sqlite store needs three slashes before its path (four before an absolute one)"
    if scheme.split("+")[0] in DATABASE_SCHEMES:
        return None if parts.hostname else "no database host"
    known = [*DATABASE_SCHEMES, "http", "https", "file", *OTHER_SCHEMES, *plugin_schemes()]
    if scheme in known:
        return None
    near = difflib.get_close_matches(scheme, known, n=1, cutoff=0.6)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    if parts.path.isdigit() and not parts.netloc:    # localhost:5000: a host and port without http://
        hint = f" (a server needs http://: http://{uri})"
    return f"unknown scheme {scheme!r}{hint}"


def plugin_schemes() -> list[str]:
    """Schemes installed MLflow plugins add (entry points of the group MLflow reads)."""
    return [entry.name for entry in entry_points(group="mlflow.tracking_store")]


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


def experiment_id(client: MlflowClient, name: str, uri: str) -> str:
    """The experiment's id, created when missing. A local sqlite store keeps artifacts beside the database
    (MLflow would use ./mlruns); a server decides itself."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    local_db = sqlite_path(uri)
    location = (local_db.parent / "artifacts").resolve().as_uri() if local_db else None
    try:
        return client.create_experiment(name, artifact_location=location)
    except Exception:
        # Another process may have created it in between.
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def sqlite_path(uri: str) -> Path | None:
    return Path(uri.removeprefix("sqlite:///")) if uri.startswith("sqlite:///") else None


def absolute_uri(uri: str) -> str:
    """A relative sqlite path made absolute, so a replay from another folder finds the same store."""
    local_db = sqlite_path(uri)
    return f"sqlite:///{local_db.resolve()}" if local_db else uri


def open_client(uri: str) -> MlflowClient:
    """A client of the store at `uri`; MLflow opens the store here (a sqlite file is created, with its folder)."""
    local_db = sqlite_path(uri)
    if local_db:
        local_db.parent.mkdir(parents=True, exist_ok=True)
    return MlflowClient(tracking_uri=uri)


def log_params_and_tags(client: MlflowClient, run_id: str, params: dict[str, str], tags: dict[str, str]) -> None:
    entries = [Param(k, v[:MAX_PARAM_LENGTH]) for k, v in params.items()]
    for i in range(0, len(entries), MAX_PARAMS_PER_BATCH):
        client.log_batch(run_id, params=entries[i:i + MAX_PARAMS_PER_BATCH])
    if tags:
        client.log_batch(run_id, tags=[RunTag(k, v) for k, v in tags.items()])


class Tracker:
    """Owns one MLflow run. Call from one thread (the trainer's, on rank 0)."""

    def __init__(self, config: TrackingConfig, flush_timeout: float = 30.0, http: HttpLimits = HttpLimits()) -> None:
        """`flush_timeout`: seconds `end` waits for an unreachable store before leaving the rest to replay.
        Opens nothing (`start` does); a URI no store can answer to is a ConfigError here."""
        self.uri = resolve_uri(config)
        self.uri_origin = uri_origin(config)
        self.experiment = config.experiment
        self.run_name = config.run_name
        self.flush_timeout = flush_timeout
        self.http = http
        self.client: MlflowClient | None = None    # made by start: MLflow opens the store with the client
        self.run_id: str | None = None
        self.online = False             # False: the store was unreachable at start; everything stays local
        self._local = RunLog()
        self._logged_before: dict[str, int] = {}   # key -> last step the local copy had before this run
        self._sender: MetricSender | None = None
        self._logged = 0                # metric values logged: all unsent when the run is local only
        self._ended = False

    # ---- the run ---------------------------------------------------------------------------------------

    def start(self, params: dict[str, Any], tags: dict[str, str], resume_run_id: str | None = None) -> str:
        """Create the run (or re-open `resume_run_id` as RUNNING: the same run continues) and log the
        flattened `params` and `tags`. Returns the run id; a local one when the store is unreachable."""
        flat = flatten(params)
        if resume_run_id is not None and resume_run_id.startswith(LOCAL_RUN_PREFIX):
            self.run_id = resume_run_id
            log.warning("run %s was never on an MLflow store; it goes on locally, for `python -m pipeline replay`",
                        self.run_id)
        else:
            self._open_run_or_go_local(flat, tags, resume_run_id)
        self._local.append({"event": "run", "run_id": self.run_id, "uri": absolute_uri(self.uri),
                            "experiment": self.experiment, "run_name": self.run_name, "params": flat, "tags": tags})
        if self.online:
            self._sender = MetricSender(self._send_batch, self.uri)
        return self.run_id

    def _open_run_or_go_local(self, params: dict[str, str], tags: dict[str, str], resume_run_id: str | None) -> None:
        """Only a store that cannot be reached now goes local: one that refuses is the user's to fix."""
        try:
            with bounded_http(self.http):
                self.client = open_client(self.uri)
                self.run_id = self._open_run(params, tags, resume_run_id)
            self.online = True
        except STORE_ERRORS as error:  # MLflow raises many types for an unreachable or broken store
            if not is_unreachable(error):
                raise ConfigError(f"{self.uri_origin}: {self.uri!r}: MLflow cannot open a run there: "
                                  f"{short_error(error)}") from error
            self.run_id = resume_run_id or f"{LOCAL_RUN_PREFIX}{uuid.uuid4().hex}"
            log.warning("MLflow store %s is unreachable (%s); training goes on as run %s, kept locally for "
                        "`python -m pipeline replay`", self.uri, short_error(error), self.run_id)

    def _open_run(self, params: dict[str, str], tags: dict[str, str], resume_run_id: str | None) -> str:
        if resume_run_id is None:
            run = self.client.create_run(experiment_id(self.client, self.experiment, self.uri),
                                         run_name=self.run_name, tags=tags)
            log_params_and_tags(self.client, run.info.run_id, params, {})
            return run.info.run_id
        known = self.client.get_run(resume_run_id).data.params
        self.client.update_run(resume_run_id, status="RUNNING")
        changed = sorted(k for k, v in params.items() if k in known and known[k] != v[:MAX_PARAM_LENGTH])
        if changed:
            log.warning("run %s resumed with changed params %s; MLflow keeps the first values", resume_run_id,
                        ", ".join(changed))
        log_params_and_tags(self.client, resume_run_id, {k: v for k, v in params.items() if k not in known}, tags)
        return resume_run_id

    def keep_local_copy(self, path: Path) -> None:
        """Append every metric (and the params and tags, once) to `path` (the run folder's metrics.jsonl);
        whatever was logged before this call is written now.

        A resumed run finds the killed run's values there. The steps between its last checkpoint and the kill
        are trained again; their values are not logged again (each key is logged at increasing steps, so a
        step up to the key's last logged one has its value), and the run keeps one value per key and step."""
        path = Path(path)
        self._logged_before = last_logged_steps(path) if path.is_file() else {}
        self._local.open(path)

    def end(self, status: str = "FINISHED") -> None:
        """Send what is queued (waiting at most `flush_timeout` for an unreachable store), then mark the run
        terminated. Whatever could not be sent is in the local copy; a warning gives the replay command."""
        if self._ended or self.run_id is None:
            return
        self._ended = True
        report = self._sender.close(self.flush_timeout) if self._sender else None
        unsent = report.unsent if report else self._logged
        status_sent = self.online and self._call("mark the run terminated", self.client.set_terminated,
                                                 self.run_id, status=status)
        self._local.append({"event": "end", "status": status})
        self._local.close()
        if unsent or not status_sent:
            self._warn_replay(unsent, status)

    def _warn_replay(self, unsent: int, status: str) -> None:
        if self.online:
            missing = f"{unsent} metric values and the final status ({status}) of run {self.run_id}"
        else:
            missing = f"run {self.run_id} (params, tags, {unsent} metric values, status {status})"
        if self._local.path is None:
            log.warning("%s never reached MLflow store %s and no local copy was kept (Tracker.keep_local_copy "
                        "was not called): they are lost", missing, self.uri)
            return
        log.warning("%s did not reach MLflow store %s; they are kept in %s. Send them with: "
                    "python -m pipeline replay %s", missing, self.uri, self._local.path, self._local.path.parent)

    # ---- metrics ---------------------------------------------------------------------------------------

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue the values and return; never blocks on the network. NaN and infinities are fine."""
        if self._ended:
            raise RuntimeError(f"run {self.run_id}: log_metrics after end()")
        values = {key: float(value) for key, value in metrics.items() if step > self._logged_before.get(key, -1)}
        if not values:
            return
        stamp = get_current_time_millis()
        self._logged += len(values)
        self._local.append({"event": "metrics", "step": step, "timestamp": stamp, "values": values})
        if self._sender is not None:
            self._sender.put([Metric(key, value, stamp, step) for key, value in values.items()])

    def _send_batch(self, metrics: list[Metric]) -> None:
        with bounded_http(dataclasses.replace(self.http, max_retries=0)):  # the sender does the retrying
            for i in range(0, len(metrics), MAX_BATCH):
                self.client.log_batch(self.run_id, metrics=metrics[i:i + MAX_BATCH])

    # ---- artifacts -------------------------------------------------------------------------------------

    def log_artifact(self, path: str | Path, folder: str | None = None) -> bool:
        """Upload a file; on failure a warning and a note in the local copy. True when uploaded."""
        path = Path(path).resolve()
        if self.online and self._call(f"upload {path}", self.client.log_artifact, self.run_id, str(path),
                                      artifact_path=folder):
            return True
        self._local.append({"event": "artifact_not_uploaded", "path": str(path), "folder": folder})
        return False

    def log_figure(self, figure: Figure, artifact_file: str) -> bool:
        """Save the figure as `artifact_file` (e.g. "plots/loss.png") beside the local copy, then upload it."""
        folder = self._local.path.parent if self._local.path else Path(tempfile.mkdtemp(prefix="figures-"))
        path = folder / artifact_file
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=100)
        return self.log_artifact(path, str(Path(artifact_file).parent) if "/" in artifact_file else None)

    def log_model(self, model: torch.nn.Module, input_example: torch.Tensor) -> bool:
        """Log the model (pipeline/tracking/model_logging.py) so `mlflow.pytorch.load_model("runs:/<run id>/model")` returns
        it; `input_example`: a few images [N,C,H,W] in [0,1]. Call once, at the end of the run."""
        from pipeline.tracking.model_logging import log_exported_model

        if not self.online:
            self._local.append({"event": "model_not_logged", "reason": OFFLINE_REASON})
            return False
        error = self._attempt(log_exported_model, self.client, self.uri, self.run_id, MODEL_NAME, model,
                              input_example)
        if error is None:
            return True
        # The whole reason (what torch.export could not trace is only in its details); a network failure's
        # first line, as a server's HTML error page is no reason.
        reason = full_error(error)
        log.warning("could not log the model for run %s (MLflow store %s): %s", self.run_id, self.uri, reason)
        log.debug("logging the model failed", exc_info=error)
        self._local.append({"event": "model_not_logged", "reason": reason})
        return False

    # ---- helpers ---------------------------------------------------------------------------------------

    def _call(self, what: str, function, *args, **kwargs) -> bool:
        """Run one MLflow call with bounded HTTP; a failure is a one-line warning, never an exception."""
        error = self._attempt(function, *args, **kwargs)
        if error is not None:
            log.warning("could not %s for run %s (MLflow store %s): %s", what, self.run_id, self.uri,
                        short_error(error))
        return error is None

    def _attempt(self, function, *args, **kwargs) -> Exception | None:
        """Run one MLflow call with bounded HTTP; the error it raised, if any."""
        try:
            with bounded_http(self.http):
                function(*args, **kwargs)
            return None
        except Exception as error:  # MLflow raises many types for an unreachable store
            return error
