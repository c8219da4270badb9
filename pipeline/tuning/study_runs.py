"""A study's MLflow records: one parent run, every trial a child run of it, whichever worker runs it."""
from __future__ import annotations

import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import optuna
from mlflow.tracking import MlflowClient
from optuna.trial import FrozenTrial

from pipeline.config.schema import Config
from pipeline.config.typed import ConfigError
from pipeline.tracking.http_limits import short_error
from pipeline.tracking.tracker import (LOCAL_RUN_PREFIX, STORE_ERRORS, experiment_id, log_params_and_tags, open_client,
                                       resolve_uri)
from pipeline.tuning.search import Search, TuneOptions
from pipeline.tuning.space import Scalar
from pipeline.tuning.study import WAIT_SECONDS, settings, shown_url

log = logging.getLogger(__name__)

PARENT_ATTR = "mlflow_parent_run_id"     # study user attribute: the MLflow parent run every worker logs under


class StudyRuns:
    """The parent run and the bookkeeping of the trials' child runs. A store call that fails after the
    parent run exists is a warning: the search and the trials' own runs go on."""

    def __init__(self, client: MlflowClient, uri: str, experiment: str, parent_run_id: str, study_name: str):
        self.client, self.uri, self.experiment, self.parent = client, uri, experiment, parent_run_id
        self.study_name = study_name

    def child_tags(self, number: int, sampled: dict[str, Scalar]) -> dict[str, str]:
        return {"mlflow.parentRunId": self.parent, "mlflow.source.name": "python -m pipeline tune",
                "pipeline.tune.study": self.study_name, "pipeline.tune.trial": str(number),
                "pipeline.tune.sampled": json.dumps(sampled)}

    def find_child(self, number: int) -> str | None:
        """The run of trial `number` of this study, when its training got as far as opening one."""
        runs = self._call("find the run of trial", self.client.search_runs, [self.experiment],
                          filter_string=f"tags.mlflow.parentRunId = '{self.parent}'") or []
        found = [run.info.run_id for run in runs if run.data.tags.get("pipeline.tune.trial") == str(number)]
        return found[0] if found else None

    def complete(self, number: int, run_id: str, value: float) -> None:
        self._tag(run_id, {"pipeline.tune.state": "COMPLETE", "pipeline.tune.value": f"{value:.6g}"})
        self._call("log the trial's value", self.client.log_metric, self.parent, "tune/value", value, step=number)

    def pruned(self, run_id: str | None, epoch: int | None, checkpoint: Path | None) -> None:
        """Training raised TrialPruned, so the run ended FAILED: it is KILLED (stopped on purpose) instead."""
        if not self._known(run_id):
            return
        self._tag(run_id, {"pipeline.tune.state": "PRUNED", "pipeline.tune.pruned_after_epoch": str(epoch),
                           **({"pipeline.tune.checkpoint": str(checkpoint)} if checkpoint else {})})
        self._call("mark the pruned run", self.client.set_terminated, run_id, status="KILLED")

    def failed(self, number: int, run_id: str | None, sampled: dict[str, Scalar], error: str) -> None:
        """The run (ended FAILED by the training) says why; a trial that failed before its run opened
        gets a FAILED child run of its own, so every trial is in MLflow."""
        tags = {"pipeline.tune.state": "FAIL", "pipeline.tune.error": error[:5000]}
        if run_id is None:
            run = self._call("record the failed trial", self.client.create_run, self.experiment,
                             run_name=f"{self.study_name} trial {number}",
                             tags={**self.child_tags(number, sampled), **tags})
            if run is not None:
                self._call("mark the failed trial", self.client.set_terminated, run.info.run_id, status="FAILED")
            return
        if self._known(run_id):
            self._tag(run_id, tags)

    def best(self, trial: FrozenTrial, path: Path, table: Path | None) -> None:
        tags = {"pipeline.tune.best_trial": str(trial.number), "pipeline.tune.best_value": f"{trial.value:.6g}",
                "pipeline.tune.best_run_id": str(trial.user_attrs.get("mlflow_run_id")),
                **{f"pipeline.tune.best.{key}": json.dumps(value) for key, value in trial.params.items()}}
        self._tag(self.parent, tags)
        self._call("log the best value", self.client.log_metric, self.parent, "tune/best_value", trial.value)
        for artifact in (path, table):
            if artifact is not None:
                self._call(f"upload {artifact}", self.client.log_artifact, self.parent, str(artifact))

    def end(self, status: str) -> None:
        self._call("end the parent run", self.client.set_terminated, self.parent, status=status)

    def _tag(self, run_id: str, tags: dict[str, str]) -> None:
        self._call(f"tag run {run_id}", log_params_and_tags, self.client, run_id, {}, tags)

    def _known(self, run_id: str | None) -> bool:
        """A run the store has (a trial whose store was unreachable at its start ran as a local run)."""
        return run_id is not None and not run_id.startswith(LOCAL_RUN_PREFIX)

    def _call(self, what: str, function, *args, **kwargs) -> Any:
        try:
            return function(*args, **kwargs)
        except Exception as error:  # MLflow raises many types; the search must not stop for its records
            log.warning("could not %s (MLflow store %s): %s", what, self.uri, short_error(error))
            return None


def open_parent(study: optuna.Study, created: bool, config: Config, options: TuneOptions,
                search: Search) -> StudyRuns:
    """The creator of the study opens the parent run and records it in the study; a joining worker waits for
    that record and attaches to the run (re-opened as RUNNING: a worker is at work)."""
    uri = resolve_uri(config.tracking)
    # A joining worker opens the store only once the creator has (a new sqlite store is made by the first)
    parent = None if created else wait_for_parent(study, options)
    try:
        client = open_client(uri)
        experiment = experiment_id(client, config.tracking.experiment, uri)
        if created:
            parent = create_parent(client, experiment, options, search)
            study.set_user_attr(PARENT_ATTR, parent)
        else:
            client.get_run(parent)
            client.update_run(parent, status="RUNNING")
    except STORE_ERRORS as error:
        shared = "" if created else (f" (the study's parent run is {study.user_attrs.get(PARENT_ATTR)}: every worker "
                                     "of one study must use the same MLflow store)")
        raise ConfigError(f"tracking: MLflow store {uri}: cannot open the study's parent run{shared}: "
                          f"{short_error(error)}") from error
    return StudyRuns(client, uri, experiment, parent, search.study_name)


def create_parent(client: MlflowClient, experiment: str, options: TuneOptions, search: Search) -> str:
    run = client.create_run(experiment, run_name=f"tune {search.study_name}",
                            tags={"mlflow.source.name": "python -m pipeline tune", "command": " ".join(sys.argv),
                                  "pipeline.tune.study": search.study_name})
    params = {"tune.config": str(options.config), "tune.space": json.dumps(settings(search)["space"]),
              "tune.trials": str(search.total), "tune.sampler": options.sampler, "tune.pruner": options.pruner,
              "tune.metric": search.metric, "tune.direction": search.direction, "tune.study": search.study_name,
              "tune.storage": shown_url(options.storage),
              "tune.seed": str(options.seed), "tune.overrides": " ".join(options.overrides)}
    log_params_and_tags(client, run.info.run_id, params, {})
    return run.info.run_id


def wait_for_parent(study: optuna.Study, options: TuneOptions) -> str:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        parent = study.user_attrs.get(PARENT_ATTR)
        if parent:
            return parent
        if time.monotonic() > deadline:
            raise ConfigError(f"--study-name: study {study.study_name!r} in {shown_url(options.storage)} has no "
                              f"MLflow parent run after {WAIT_SECONDS:.0f} s (its first worker may have "
                              "stopped right after creating it); choose a new --study-name")
        time.sleep(0.5)
