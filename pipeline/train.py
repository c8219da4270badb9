"""The train job: config -> data -> model -> trainer, tracked as one MLflow run."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import yaml

from datasets.summary import summarize
from pipeline.config import Config, config_to_dict
from pipeline.data import build_splits, eval_loader, train_loader
from pipeline.device import select_device, select_precision
from pipeline.model import build_model
from pipeline.pretrained import with_local_weights
from pipeline.seeding import seed_everything
from pipeline.tracking import Tracker
from pipeline.trainer import DataInfo, Trainer, TrainResult

log = logging.getLogger(__name__)


def run_training(config: Config) -> tuple[TrainResult, str]:
    """Train; return the result and the MLflow run id."""
    seed_everything(config.seed)
    splits = build_splits(config.data)
    tracker = Tracker(config.tracking)
    model = build_model(with_local_weights(config.model, tracker.uri), num_classes=len(splits.class_names))
    summary = summarize(splits.train, config.data.image_size)
    for head in model.heads.values():
        head.fit_data(summary)
    device = select_device(config.train.device)
    precision = select_precision(config.train.amp, device)
    run_id = tracker.start(config_to_dict(config), tags={
        "mlflow.source.name": "python -m pipeline train",
        "command": " ".join(sys.argv),
        "data.train": config.data.train,
        "data.val": config.data.val,
    })
    try:
        output_dir = Path(config.output_dir) / config.name / run_id
        output_dir.mkdir(parents=True, exist_ok=True)
        resolved = output_dir / "config.yaml"
        resolved.write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
        tracker.log_artifact(resolved)
        log.info("run %s: %d train / %d val images, classes %s, device %s", run_id, len(splits.train),
                 len(splits.val), splits.class_names, device)
        trainer = Trainer(
            config, model,
            train_loader(splits.train, config.data, config.seed), eval_loader(splits.val, config.data, config.seed),
            DataInfo(splits.class_names, splits.category_ids), device, precision, output_dir, tracker,
        )
        result = trainer.fit()
        tracker.log_metrics({"time/train_seconds": result.seconds}, step=config.train.epochs)
        tracker.log_artifact(result.checkpoint, "checkpoints")
    except BaseException:
        tracker.end("FAILED")
        raise
    tracker.end("FINISHED")
    return result, run_id
