"""The Optuna study a tune worker creates or joins: its storage (shared by workers), sampler, pruner and the
settings every worker of one study must share."""
from __future__ import annotations

import random
import re
import time
import warnings
from typing import Any

import optuna
import sqlalchemy.engine
import sqlalchemy.exc
from optuna.trial import FrozenTrial

from pipeline.config.typed import ConfigError
from pipeline.tracking.http_limits import short_error
from pipeline.tracking.tracker import DATABASE_SCHEMES, uri_problem
from pipeline.tuning.search import Search, TuneOptions
from pipeline.tuning.space import Dimension, grid_space

SETTINGS_ATTR = "pipeline_tune"          # study user attribute: what the study searches (metric, space)
WAIT_SECONDS = 120.0                     # how long a joining worker waits for what the creator records
STORAGE_ATTEMPTS = 5                     # opening a new shared storage, which workers race to create
HEARTBEAT_SECONDS = 60                   # a trial of a killed worker is marked failed after 3 missed beats


def settings(search: Search) -> dict[str, Any]:
    """What defines the study; every worker must search the same."""
    return {"metric": search.metric, "space": {d.key: d.to_dict() for d in search.dimensions}}


def make_storage(url: str | None) -> optuna.storages.BaseStorage | None:
    """None: in memory. A database URL: Optuna's RDB storage, with heartbeats, so a killed worker's trial is
    marked failed instead of running forever."""
    if url is None:
        return None
    scheme = url.split(":", 1)[0].split("+")[0].lower()
    problem = uri_problem(url) if scheme in DATABASE_SCHEMES else "not a database URL"
    if problem:
        raise ConfigError(f"--storage: {shown_url(url)!r}: {problem}; expected sqlite:///path.db (one machine) or "
                          "a shared database: postgresql://user:password@host/db, mysql+pymysql://user@host/db")
    # sqlite: wait for another worker's write instead of failing with "database is locked"
    engine = {"connect_args": {"timeout": 60}} if scheme == "sqlite" else {}
    for attempt in range(1, STORAGE_ATTEMPTS + 1):
        try:
            with warnings.catch_warnings():   # heartbeats are "experimental" in Optuna 5; they are what we want
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=HEARTBEAT_SECONDS,
                                                  grace_period=3 * HEARTBEAT_SECONDS)
        except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as error:
            # Workers started together race to create the tables of a new storage: the loser finds them made
            if attempt == STORAGE_ATTEMPTS:
                raise ConfigError(f"--storage: {shown_url(url)}: cannot open it: {short_error(error)}") from error
            time.sleep(attempt * random.uniform(0.5, 1.0))
        except ImportError as error:    # the database's driver (psycopg2, pymysql) is not installed
            raise ConfigError(f"--storage: {shown_url(url)}: {error}") from error
    raise AssertionError("unreachable")


def shown_url(url: str | None) -> str:
    """The storage URL without its password (it goes to logs and MLflow params)."""
    if url is None:
        return "memory"
    try:
        return sqlalchemy.engine.make_url(url).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        return re.sub(r"//([^:/@]*):[^@]*@", r"//\1:***@", url)


def make_sampler(options: TuneOptions, dimensions: list[Dimension]) -> optuna.samplers.BaseSampler:
    if options.sampler == "grid":
        return optuna.samplers.GridSampler(grid_space(dimensions, str(options.space)), seed=options.seed)
    if options.sampler == "random":
        return optuna.samplers.RandomSampler(seed=options.seed)
    # constant_liar: trials running in other workers count as bad, so workers do not all sample the same point
    return optuna.samplers.TPESampler(seed=options.seed, constant_liar=options.storage is not None)


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    if name == "median":
        return optuna.pruners.MedianPruner()
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner()
    return optuna.pruners.NopPruner()


def open_study(options: TuneOptions, search: Search, sampler, pruner) -> tuple[optuna.Study, bool]:
    """The study, created (True) or, when another worker created it, loaded (False) and checked to search the
    same metric, direction and space."""
    storage = make_storage(options.storage)
    try:
        study = optuna.create_study(storage=storage, study_name=search.study_name, direction=search.direction,
                                    sampler=sampler, pruner=pruner)
        study.set_user_attr(SETTINGS_ATTR, settings(search))
        return study, True
    except optuna.exceptions.DuplicatedStudyError:
        study = optuna.load_study(study_name=search.study_name, storage=storage, sampler=sampler, pruner=pruner)
    if study.direction.name.lower() != search.direction:
        raise ConfigError(f"--direction: study {search.study_name!r} {study.direction.name.lower()}s its metric; "
                          f"this worker would {search.direction} it")
    recorded = wait_for_settings(study)
    for key, value in settings(search).items():
        if recorded.get(key) != value:
            raise ConfigError(f"--study-name: study {search.study_name!r} searches {key} {recorded.get(key)!r}; this "
                              f"worker's is {value!r}. Workers of one study need the same --metric and space file")
    return study, False


def wait_for_settings(study: optuna.Study) -> dict[str, Any]:
    """The creator records the settings right after creating the study."""
    deadline = time.monotonic() + WAIT_SECONDS
    while SETTINGS_ATTR not in study.user_attrs and time.monotonic() < deadline:
        time.sleep(0.5)
    return study.user_attrs.get(SETTINGS_ATTR, {})


def stop_when_full(total: int):
    """An Optuna callback: no new trial once the study has `total` (running ones included, of every worker)."""
    def callback(study: optuna.Study, trial: FrozenTrial) -> None:
        if len(study.get_trials(deepcopy=False)) >= total:
            study.stop()
    return callback
