"""The train job: config -> data -> model -> trainer, tracked as one MLflow run.

Under torchrun every rank runs this; rank 0 alone generates data, tracks and writes files.
`resume` ("auto" or a checkpoint path) continues a run in its own folder and MLflow run.
"""
from __future__ import annotations

import argparse
import os

import logging
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from backbones.weights import WeightsFileError
from datasets.summary import summarize
from pipeline.compression.distillation import Distiller, load_distiller
from pipeline.config.schema import Config, config_to_dict, load_config
from pipeline.config.typed import ConfigError, DataCheckError
from pipeline.data_check.guard import require_trainable
from pipeline.engine.checkpoint import latest_checkpoint, newest_readable_checkpoint
from pipeline.engine.data import build_splits, ensure_shapes, eval_loader, stored_image_policy, train_loader
from pipeline.engine.hooks import Hook
from pipeline.engine.initial_weights import load_initial_weights, take_architecture
from pipeline.engine.resume_check import check_resumable
from pipeline.engine.trainer import DataInfo, TrainResult, Trainer
from pipeline.jobs.command import Command
from pipeline.jobs.tables import metrics_table
from pipeline.model import build_model
from pipeline.report.run_report import FILE_NAME as REPORT, ReportInputs, write_report
from pipeline.runtime.device import select_precision
from pipeline.runtime.distributed import DistInfo, barrier, broadcast_from_main, init_distributed, shutdown
from pipeline.runtime.seeding import seed_everything, set_deterministic
from pipeline.tracking.plots import run_figures
from pipeline.tracking.run_artifacts import with_local_weights
from pipeline.tracking.run_log import FILE_NAME as RUN_LOG, read_run_log
from pipeline.tracking.tags import run_tags
from pipeline.tracking.tracker import Tracker, resolve_uri

log = logging.getLogger(__name__)


@dataclass
class Resume:
    checkpoint: Path
    state: dict[str, Any]


def run_training(config: Config, resume: str | None = None, tags: dict[str, str] | None = None,
                 extra_hooks: tuple[Hook, ...] = ()) -> tuple[TrainResult, str]:
    """Train (continuing from `resume` when given); return the result and the MLflow run id. `tags` are added
    to the run's (e.g. mlflow.parentRunId); `extra_hooks` run after the trainer's own (e.g. tune's pruning)."""
    resolve_uri(config.tracking)   # a URI no store can answer to stops here, before any data is read
    dist, device = init_distributed(config.train.device)
    try:
        return _train(config, find_resume(resume, config), dist, device, tags or {}, extra_hooks)
    finally:
        shutdown()


def find_resume(resume: str | None, config: Config) -> Resume | None:
    """`auto`: the newest last.pt of this experiment, if any; a path: that checkpoint, which must exist.
    An unreadable one (cut short by a full disk, say) gives way to the newest readable checkpoint beside it."""
    if resume is None:
        return None
    path = latest_checkpoint(Path(config.output_dir) / config.name) if resume == "auto" else Path(resume)
    if path is None:
        log.info("--resume auto: no checkpoint under %s; starting a new run", Path(config.output_dir) / config.name)
        return None
    return Resume(*newest_readable_checkpoint(path))


def require_writable(folder: Path) -> None:
    """Fail before any work when the run's files could not be written."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ConfigError(f"output_dir: cannot write the run's files under {folder} "
                          f"({error.strerror or error}); expected a folder this user can write") from error


def _train(config: Config, resume: Resume | None, dist: DistInfo, device, tags: dict[str, str],
           extra_hooks: tuple[Hook, ...] = ()) -> tuple[TrainResult, str]:
    set_deterministic(config.train.deterministic)
    seed_everything(config.seed)
    if dist.is_main:
        ensure_shapes(config.data)
    barrier(dist)
    splits = build_splits(config.data, stored_image_policy(resume.state) if resume else None)
    require_trainable(splits, config)  # before any run, folder or model: data that cannot train stops here
    model = build_model(with_local_weights(config.model, resolve_uri(config.tracking)),
                        num_classes=len(splits.class_names), in_channels=config.data.channels)
    summary = summarize(splits.train, config.data.image_size, config.data.resize)
    for head in model.heads.values():
        head.fit_data(summary)
    if resume:    # a pruned run continues with its own shapes
        take_architecture(model, resume.state)
    elif config.model.init:
        load_initial_weights(model, config.model.init, splits.class_names, resolve_uri(config.tracking))
    # On the student's final shapes and fitted anchors (the teacher's are compared with them), before any run
    distiller = load_teacher(config, model, splits.class_names, device)
    if resume:  # before the run it names is reopened, written to or marked: a wrong checkpoint changes nothing
        check_resumable(resume.checkpoint, resume.state, config, splits.class_names, model)
    if dist.is_main:
        require_writable(resume.checkpoint.parent if resume else Path(config.output_dir) / config.name)
    tracker = Tracker(config.tracking) if dist.is_main else None
    if tracker and resume:  # before the run is reopened: the replay sets the killed run's last status
        send_what_the_killed_run_kept(resume.checkpoint.parent)
    run_id = broadcast_from_main(start_run(tracker, config, resume, tags), dist)
    output_dir = resume.checkpoint.parent if resume else Path(config.output_dir) / config.name / run_id
    try:
        if tracker:
            record_run_start(tracker, config, output_dir)
        log.info("run %s: %d train / %d val images, classes %s, device %s, %d process(es)", run_id,
                 len(splits.train), len(splits.val), splits.class_names, device, dist.world_size)
        trainer = Trainer(
            config, model, train_loader(splits.train, config.data, config.seed, dist),
            eval_loader(splits.val, config.data, config.seed, dist),
            DataInfo(splits.class_names, splits.category_ids, splits.image_policy.to_dict()), device, select_precision(config.train.amp, device),
            output_dir, tracker, dist, run_id, distiller, extra_hooks,
        )
        if resume:
            trainer.restore(resume.state)
        result = trainer.fit()
        if tracker:
            record_run_end(tracker, trainer, result, output_dir)
    except BaseException as error:
        if tracker:
            tracker.end("KILLED" if isinstance(error, KeyboardInterrupt) else "FAILED")
        raise
    if tracker:
        tracker.end("FINISHED")
    return result, run_id


def load_teacher(config: Config, model, class_names: list[str], device) -> Distiller | None:
    """model.distill's teacher(s), checked against this student; None when not distilling."""
    if config.model.distill is None:
        return None
    return load_distiller(config.model.distill, model, class_names, device, resolve_uri(config.tracking))


def start_run(tracker: Tracker | None, config: Config, resume: Resume | None, tags: dict[str, str]) -> str | None:
    if tracker is None:
        return None
    resume_id = resume.state.get("tracking_run_id") if resume else None
    return tracker.start(config_to_dict(config), tags={**run_tags(config, sys.argv), **tags}, resume_run_id=resume_id)


def record_run_start(tracker: Tracker, config: Config, output_dir: Path) -> None:
    output_dir.mkdir(parents=True, exist_ok=True)
    tracker.keep_local_copy(output_dir / "metrics.jsonl")
    resolved = output_dir / "config.yaml"
    resolved.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    tracker.log_artifact(resolved)


def record_run_end(tracker: Tracker, trainer: Trainer, result: TrainResult, output_dir: Path) -> None:
    tracker.log_metrics({"time/train_seconds": result.seconds}, step=result.position.global_step)
    tracker.log_artifact(result.checkpoint, "checkpoints")
    if result.best_checkpoint:
        tracker.log_artifact(result.best_checkpoint, "checkpoints")
    model = trainer.ema.module if trainer.ema else trainer.model     # the weights validation measured
    val_batch = next(iter(trainer.val_loader))
    logged = read_run_log(output_dir / RUN_LOG).metrics     # every step, across resumes
    figures = run_figures(logged, result.evaluation.confusion_matrices, model, val_batch,
                          trainer.data_info.class_names)
    for path, figure in figures.items():
        tracker.log_figure(figure, path)
    tracker.log_model(model, val_batch.image)
    record_report(tracker, trainer, result, output_dir, model, val_batch, logged)


def record_report(tracker: Tracker, trainer: Trainer, result: TrainResult, output_dir: Path, model, val_batch,
                  logged) -> None:
    """report.html in the run folder and at the run's artifact root, from what the run already has (no second
    evaluation). A report that cannot be built is a warning: the training it describes is finished and saved."""
    try:
        inputs = ReportInputs(
            run_id=tracker.run_id, config=trainer.config, metrics=logged,
            class_names=trainer.data_info.class_names, evaluation=result.evaluation, model=model,
            val_batch=val_batch, run_folder=output_dir, checkpoint=result.best_checkpoint or result.checkpoint,
            status="FINISHED (stopped early)" if result.stopped_early else "FINISHED")
        path = write_report(inputs, output_dir / REPORT)
    except Exception as error:  # any failure of the report's figures or measurements; training is done
        log.warning("could not write the run report (%s: %s); `python -m pipeline report %s` can, later",
                    type(error).__name__, error, output_dir)
        log.debug("building the run report failed", exc_info=error)
        return
    tracker.log_artifact(path)


def send_what_the_killed_run_kept(output_dir: Path) -> None:
    """A run killed before its sender flushed left values only in its metrics.jsonl: send them now."""
    from pipeline.tracking.replay import replay

    try:
        replay(output_dir)
    except (ConnectionError, FileNotFoundError, ValueError) as error:
        log.warning("could not send the interrupted run's kept metrics (%s); `python -m pipeline replay %s` "
                    "can, later", error, output_dir)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment YAML")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides, e.g. train.epochs=3")
    parser.add_argument("--resume", metavar="PATH|auto",
                        help="continue from a checkpoint (auto: the newest last.pt of this experiment, if any); "
                             "the epoch count may be raised with train.epochs=N")


def run(args: argparse.Namespace) -> str:
    result, run_id = run_training(load_config(args.config, args.overrides), resume=args.resume)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return ""
    return (metrics_table(result.evaluation.metrics, title=f"val metrics (run {run_id})")
            + f"\ntrained in {result.seconds:.0f} s; checkpoint: {result.checkpoint}")


COMMAND = Command("train", "train the model a config describes", add_arguments, run,
                  user_errors=(ConfigError, FileNotFoundError, DataCheckError, WeightsFileError), takes_overrides=True)
