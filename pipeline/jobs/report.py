"""`python -m pipeline report RUN [--out PATH] [--log]`: the run report (pipeline/report/run_report.py) of a
finished run, rebuilt from its checkpoint, evaluated again on the checkpoint's val split. RUN is a run folder, a
checkpoint file or runs:/<run id> (pipeline/report/run_source.py says where each reads from)."""
from __future__ import annotations

import argparse
import shutil
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

from backbones.weights import WeightsFileError
from pipeline.config.typed import ConfigError, DataCheckError
from pipeline.engine.data import eval_loader
from pipeline.engine.validation import evaluate
from pipeline.inference.trained import RUN_PREFIX, load_trained
from pipeline.inference.val_data import evaluation_dataset
from pipeline.jobs.command import Command, Result
from pipeline.report.run_report import FILE_NAME, ReportInputs, write_report
from pipeline.report.run_source import RUN_FORMS, find_run, require_logged_run
from pipeline.runtime.device import select_device, select_precision
from pipeline.tracking.http_limits import short_error


def make_report(run: str, out: str | Path | None = None, log: bool = False, tracking_uri: str | None = None,
                device_name: str = "auto") -> tuple[Path, str | None]:
    """Write the report of `run`; with `log` (always for runs:/), log it as the run's report.html artifact.
    Returns the page's path and, when logging failed, why."""
    source = find_run(run, tracking_uri)
    if log and not run.startswith(RUN_PREFIX):
        require_logged_run(source)  # before the evaluation: a run that cannot be logged to fails at once
    trained = load_trained(source.checkpoint, source.tracking_uri)
    dataset, _ = evaluation_dataset(trained)
    device = select_device(device_name)
    loader = eval_loader(dataset, trained.config.data, trained.config.seed)
    evaluation = evaluate(trained.model.to(device), loader, device, trained.category_ids,
                          select_precision(trained.config.train.amp, device).autocast())
    run_folder = source.run_folder or _local_folder(trained.config, source.run_id)
    run_id = source.run_id or str(trained.state.get("tracking_run_id") or trained.checkpoint.parent.name)
    path = Path(out) if out else _default_out(run_folder, run_id)
    write_report(ReportInputs(run_id=run_id, config=trained.config, metrics=source.metrics,
                              class_names=trained.class_names, evaluation=evaluation, model=trained.model,
                              val_batch=next(iter(loader)), run_folder=run_folder, status=source.status,
                              checkpoint=source.checkpoint, notes=source.notes), path)
    if not (log or run.startswith(RUN_PREFIX)):
        return path, None
    return path, log_report(path, *require_logged_run(source))


def _local_folder(config, run_id: str | None) -> Path | None:
    """A runs:/ run's folder on this machine, where its config put it, if it is here."""
    folder = Path(config.output_dir) / config.name / run_id if run_id else None
    return folder if folder is not None and folder.is_dir() else None


def _default_out(run_folder: Path | None, run_id: str) -> Path:
    return run_folder / FILE_NAME if run_folder else Path(f"report-{run_id}.html")


def log_report(path: Path, run_id: str, tracking_uri: str) -> str | None:
    """Log the page as `report.html` at the run's artifact root (whatever its local name); why not, on failure."""
    try:
        with tempfile.TemporaryDirectory(prefix="report-") as folder:
            named = path if path.name == FILE_NAME else Path(shutil.copy(path, Path(folder) / FILE_NAME))
            MlflowClient(tracking_uri=tracking_uri).log_artifact(run_id, str(named))
    except Exception as error:  # MLflow raises many types for an unreachable or refusing store
        return f"could not log it to run {run_id} on {tracking_uri}: {short_error(error)}"
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", metavar="RUN", help=RUN_FORMS)
    parser.add_argument("--out", help="where to write the page (default: report.html in the run folder; for a "
                                      "runs:/ run not on this machine, ./report-<run id>.html)")
    parser.add_argument("--log", action="store_true",
                        help="also log it to the run's MLflow store as report.html (always done for runs:/)")
    parser.add_argument("--tracking-uri", help="MLflow store of a runs:/ run, or to log to (default: "
                                               "$MLFLOW_TRACKING_URI, else the store the run was started against)")
    parser.add_argument("--device", default="auto")


def run(args: argparse.Namespace) -> Result:
    path, problem = make_report(args.run, args.out, args.log, args.tracking_uri, args.device)
    if problem:
        return f"wrote {path}; {problem}", 1
    logged = args.log or args.run.startswith(RUN_PREFIX)
    return f"wrote {path}" + (" and logged it as the run's report.html" if logged else "")


COMMAND = Command("report", "one self-contained HTML page of a run: config, curves, confusion matrices, per-class "
                  "results, sample predictions, complexity", add_arguments, run,
                  user_errors=(ConfigError, FileNotFoundError, WeightsFileError, DataCheckError))
