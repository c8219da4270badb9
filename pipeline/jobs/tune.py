"""`python -m pipeline tune CONFIG --space SPACE.yaml --trials N [key=value ...]`: hyperparameter search with
Optuna. Each trial trains the config with the sampled values applied as overrides (validated like any config),
as an ordinary training run in its own run folder; its per-epoch validation metric feeds the pruner
(pipeline/tuning/pruning.py), and its value is the metric's best epoch.

Samplers: random, tpe (default), grid (every choice, every int of a range, float ranges by step). Pruners:
median (default), halving (successive halving), none.

MLflow: the study is one parent run in the config's experiment (the study's settings as params; every trial's
value as tune/value; at the end the best value, params and best.yaml); each trial is a child run tagged with
the study, its trial number and sampled values, and ends FINISHED, KILLED (pruned) or FAILED.

Several workers, on one machine or several, share a study through one Optuna storage (--storage sqlite:///x.db
on one machine; postgresql:// or mysql:// for several) and one MLflow store. --trials N is the study's total:
trial numbers are given out by the storage, and a worker runs a trial only when its number is below N, so N
trials run in all, each once (two workers asking for the last one in the same instant can leave one more,
recorded as pruned with the user attribute `surplus`, never trained). The worker that creates the study opens
the parent run and records its id in the study (user attribute mlflow_parent_run_id); the others attach their
trials to it. Each worker writes best.yaml (the best trial so far, of every worker) when it ends, and the last
one to end closes the parent run.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from backbones.weights import WeightsFileError
from pipeline.config.schema import Config, config_to_dict, load_config
from pipeline.config.typed import ConfigError, DataCheckError
from pipeline.jobs.command import Command
from pipeline.tuning.pruning import MetricNotLogged, TrialReporter
from pipeline.tuning.search import Search, TuneOptions
from pipeline.tuning.space import Scalar, assignment, grid_space, load_space
from pipeline.tuning.study import make_pruner, make_sampler, open_study, shown_url, stop_when_full
from pipeline.tuning.study_runs import StudyRuns, open_parent

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "halving", "none")
DIRECTIONS = {"max": "maximize", "min": "minimize"}


class TrialFailed(RuntimeError):
    """A trial's training raised: the trial is recorded as failed and the search goes on."""


@dataclass
class TuneResult:
    study: optuna.Study
    parent_run_id: str
    best: FrozenTrial | None            # None: no trial completed
    best_config: Path | None


# ---- a trial ----------------------------------------------------------------------------------------------

class Objective:
    """Train one trial's config; its value is the metric's best epoch."""

    def __init__(self, search: Search, runs: StudyRuns) -> None:
        self.search, self.runs = search, runs

    def __call__(self, trial: optuna.Trial) -> float:
        from pipeline.jobs.train import run_training   # the training stack, only when a trial runs

        search = self.search
        if trial.number >= search.total:
            # Two workers asked for the study's last trial at once: the storage numbered this one past the end.
            trial.set_user_attr("surplus", f"the study already had its {search.total} trials; not run")
            trial.study.stop()
            raise optuna.TrialPruned(f"trial {trial.number}: the study has its {search.total} trials")
        sampled = {dimension.key: dimension.suggest(trial) for dimension in search.dimensions}
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        reporter = TrialReporter(trial, search.metric, search.direction)
        config = None
        try:
            config = load_config(search.options.config, search.trial_overrides(sampled, trial.number))
            result, run_id = run_training(config, tags=self.runs.child_tags(trial.number, sampled),
                                          extra_hooks=(reporter,))
        except optuna.TrialPruned:
            folder = Path(config.output_dir) / config.name / reporter.run_id if reporter.run_id else None
            self.runs.pruned(reporter.run_id, reporter.pruned_at, folder / "last.pt" if folder else None)
            self.remember(trial, reporter.run_id, folder)
            raise
        except MetricNotLogged as error:            # no trial can be judged: the search stops
            self.fail(trial, reporter.run_id, sampled, error)
            raise
        except Exception as error:                  # this trial's config or training: the search goes on
            self.fail(trial, reporter.run_id, sampled, error)
            raise TrialFailed(f"trial {trial.number}: {type(error).__name__}: {error}") from error
        self.remember(trial, run_id, result.checkpoint.parent)
        value = reporter.best()
        if math.isnan(value):
            self.fail(trial, run_id, sampled, f"{search.metric} was NaN at every epoch")
            raise TrialFailed(f"trial {trial.number}: {search.metric} was NaN at every epoch")
        self.runs.complete(trial.number, run_id, value)
        return value

    def fail(self, trial: optuna.Trial, run_id: str | None, sampled: dict[str, Scalar],
             error: BaseException | str) -> None:
        reason = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
        trial.set_user_attr("error", reason[:1000])
        self.runs.failed(trial.number, run_id or self.runs.find_child(trial.number), sampled, reason)

    @staticmethod
    def remember(trial: optuna.Trial, run_id: str | None, folder: Path | None) -> None:
        if run_id:
            trial.set_user_attr("mlflow_run_id", run_id)
        if folder:
            trial.set_user_attr("run_folder", str(folder))


# ---- the search -------------------------------------------------------------------------------------------

def run_tune(options: TuneOptions) -> TuneResult:
    """Run this worker's share of the study's trials; write the best config found so far (by every worker)."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("tune runs each trial in one process: instead of torchrun, start one worker per GPU "
                          "(CUDA_VISIBLE_DEVICES=N python -m pipeline tune ... --storage URL --study-name NAME)")
    if options.trials < 1:
        raise ConfigError(f"--trials: expected 1 or more, got {options.trials}")
    for flag, value, valid in (("--sampler", options.sampler, SAMPLERS), ("--pruner", options.pruner, PRUNERS)):
        if value not in valid:
            raise ConfigError(f"{flag}: expected one of {', '.join(valid)}, got {value!r}")
    config = load_config(options.config, options.overrides)
    search = plan(options, config)
    sampler, pruner = make_sampler(options, search.dimensions), make_pruner(options.pruner)
    study, created = open_study(options, search, sampler, pruner)
    out = best_config_path(options, config, search.study_name, created)
    runs = open_parent(study, created, config, options, search)
    log.info("study %s (%s): %d trials in all; MLflow parent run %s", search.study_name,
             shown_url(options.storage), search.total, runs.parent)
    try:
        if len(study.get_trials(deepcopy=False)) < search.total:
            study.optimize(Objective(search, runs), catch=(TrialFailed,), callbacks=[stop_when_full(search.total)])
    except BaseException as error:
        end_parent_when_idle(study, runs, "KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise
    best, path = record_best(study, search, runs, out)
    end_parent_when_idle(study, runs, "FINISHED" if best else "FAILED")
    return TuneResult(study, runs.parent, best, path)


def plan(options: TuneOptions, config: Config) -> Search:
    """The metric and direction, the space checked against the config, and the study's size."""
    metric = options.metric or config.train.monitor
    if not metric:
        raise ConfigError("--metric: no metric to optimise: pass --metric (e.g. val/cls/accuracy) or set "
                          "train.monitor in the config")
    if options.direction is not None and options.direction not in DIRECTIONS:
        raise ConfigError(f"--direction: expected max or min, got {options.direction!r}")
    direction = DIRECTIONS[options.direction or config.train.monitor_mode]
    overrides = list(options.overrides)
    if config.train.monitor is None:     # so each trial keeps the best.pt of the metric it is judged by
        overrides += [assignment("train.monitor", metric), assignment("train.monitor_mode", direction[:3])]
    dimensions = load_space(options.space, options.config, overrides)
    total = options.trials
    if options.sampler == "grid":
        size = math.prod(len(values) for values in grid_space(dimensions, str(options.space)).values())
        if size < total:
            log.info("the grid has %d points: the study runs %d trials, not %d", size, size, total)
            total = size
    name = options.study_name or f"{config.name}-{uuid.uuid4().hex[:8]}"
    return Search(options, dimensions, metric, direction, total, overrides, name)


def best_config_path(options: TuneOptions, config: Config, study_name: str, created: bool) -> Path:
    """--out, or the study's own folder beside the runs. An --out that exists before the study does belongs
    to something else: replaced only with --overwrite."""
    if options.out is None:
        safe = re.sub(r"[^A-Za-z0-9._-]", "_", study_name)
        return Path(config.output_dir) / config.name / f"tune-{safe}" / "best.yaml"
    if created and options.out.exists() and not options.overwrite:
        raise ConfigError(f"--out: {options.out} exists; pass --overwrite to replace it, or choose another --out")
    return options.out


def record_best(study: optuna.Study, search: Search, runs: StudyRuns,
                out: Path) -> tuple[FrozenTrial | None, Path | None]:
    """best.yaml (the config with the best trial's values) and trials.csv beside it, also on the parent run."""
    trials = study.get_trials(deepcopy=False)
    if not any(trial.state == TrialState.COMPLETE for trial in trials):
        return None, None
    best = study.best_trial
    config = load_config(search.options.config, search.trial_overrides(best.params))
    header = (f"# best trial {best.number} of study {search.study_name}: {search.metric} = {best.value:.6g}\n"
              f"# sampled: {json.dumps(best.params)}\n# train it: python -m pipeline train {out}\n")
    write_atomically(out, header + yaml.safe_dump(config_to_dict(config), sort_keys=False))
    table = out.with_name("trials.csv")
    write_atomically(table, study.trials_dataframe().to_csv(index=False))
    runs.best(best, out, table)
    return best, out


def write_atomically(path: Path, text: str) -> None:
    """Write beside, then rename: another worker writing the same file never leaves half of each."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(text)
    os.replace(partial, path)


def end_parent_when_idle(study: optuna.Study, runs: StudyRuns, status: str) -> None:
    """The last worker to stop closes the parent run: while trials run elsewhere it stays RUNNING."""
    if not any(trial.state == TrialState.RUNNING for trial in study.get_trials(deepcopy=False)):
        runs.end(status)


# ---- the command ------------------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides applied to every trial")
    parser.add_argument("--space", required=True, type=Path,
                        help="YAML: config key -> {float: [lo, hi], log: true} | {int: [lo, hi], step: k} | "
                             "{choice: [a, b]}")
    parser.add_argument("--trials", required=True, type=int,
                        help="trials of the study in all, every worker together (grid: at most the grid's size)")
    parser.add_argument("--sampler", choices=SAMPLERS, default="tpe", help="default: tpe")
    parser.add_argument("--pruner", choices=PRUNERS, default="median",
                        help="stops trials whose per-epoch metric lags the others' (default: median)")
    parser.add_argument("--storage", help="Optuna storage shared by the workers: sqlite:///tune.db (one machine) "
                                          "or postgresql://... / mysql://... (several); default: in memory")
    parser.add_argument("--study-name", help="the study in --storage (workers of one study give the same name); "
                                             "default: <config name>-<random>")
    parser.add_argument("--metric", help="logged metric to optimise, e.g. val/cls/accuracy (default: train.monitor)")
    parser.add_argument("--direction", choices=tuple(DIRECTIONS), help="default: train.monitor_mode")
    parser.add_argument("--out", type=Path,
                        help="the best config (default: <output_dir>/<name>/tune-<study>/best.yaml)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--seed", type=int, help="the sampler's seed (one worker's search is then repeatable)")


def run(args: argparse.Namespace) -> tuple[str, int]:
    options = TuneOptions(Path(args.config), args.space, args.trials, list(args.overrides), args.sampler,
                          args.pruner, args.storage, args.study_name, args.metric, args.direction, args.out,
                          args.overwrite, args.seed)
    result = run_tune(options)
    return summary(result), 0 if result.best else 1


def summary(result: TuneResult) -> str:
    trials = result.study.get_trials(deepcopy=False)
    counts = {state.name: sum(trial.state == state for trial in trials) for state in TrialState}
    lines = [f"study {result.study.study_name}: {len(trials)} trials ("
             + ", ".join(f"{count} {name.lower()}" for name, count in counts.items() if count) + ")",
             f"MLflow parent run: {result.parent_run_id}"]
    if result.best is None:
        return "\n".join(lines + ["no trial completed: see the failed trials' errors above"])
    best = result.best
    lines += [f"best: trial {best.number}, value {best.value:.6g}, "
              + ", ".join(f"{key}={value!r}" for key, value in best.params.items()),
              f"best config: {result.best_config}  (python -m pipeline train {result.best_config})"]
    return "\n".join(lines)


COMMAND = Command("tune", "search hyperparameters with Optuna, each trial a training run", add_arguments, run,
                  user_errors=(ConfigError, FileNotFoundError, DataCheckError, WeightsFileError), takes_overrides=True)
