"""The training loop: forward, compound loss, backward, step, validate, checkpoint, track."""
from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.checkpoint import save_checkpoint
from pipeline.config import Config, config_to_dict
from pipeline.device import Precision
from pipeline.evaluate import Evaluation, evaluate
from pipeline.model import MultiTaskModel
from pipeline.optim import build_optimizer, build_scheduler
from pipeline.tracking import Tracker
from pipeline.transfer import freeze_batchnorm_statistics, frozen_stages, set_frozen
from pipeline.weighting import static_weighting

log = logging.getLogger(__name__)


@dataclass
class DataInfo:
    """What the trainer must remember about the data to make a checkpoint usable on its own."""
    class_names: list[str]
    category_ids: list[int]


@dataclass
class TrainResult:
    evaluation: Evaluation
    checkpoint: Path
    history: list[dict[str, float]] = field(default_factory=list)
    seconds: float = 0.0


class Trainer:
    def __init__(self, config: Config, model: MultiTaskModel, train_loader: DataLoader, val_loader: DataLoader,
                 data_info: DataInfo, device: torch.device, precision: Precision, output_dir: Path,
                 tracker: Tracker | None = None):
        self.config = config
        self.model = model.to(device)
        self.train_loader, self.val_loader = train_loader, val_loader
        self.data_info = data_info
        self.device, self.precision, self.tracker = device, precision, tracker
        self.optimizer = build_optimizer(model, config.train.optimizer, config.model.backbone)
        self.scheduler = build_scheduler(self.optimizer, config.train.scheduler, len(train_loader), config.train.epochs)
        self.scaler = precision.scaler()
        self.weights = {task: head.weight for task, head in config.model.heads.items()}
        self.checkpoint_path = output_dir / "last.pt"

    def fit(self) -> TrainResult:
        start = time.perf_counter()
        history = []
        evaluation = Evaluation(metrics={})
        for epoch in range(self.config.train.epochs):
            train_logs = self.train_epoch(epoch)
            evaluation = evaluate(self.model, self.val_loader, self.device, self.data_info.category_ids,
                                  self.precision.autocast())
            logs = {**{f"train/{k}": v for k, v in train_logs.items()},
                    **{f"val/{k}": v for k, v in evaluation.metrics.items()}}
            history.append(logs)
            log.info("epoch %d/%d %s", epoch + 1, self.config.train.epochs,
                     " ".join(f"{k}={v:.4f}" for k, v in logs.items()))
            if self.tracker:
                self.tracker.log_metrics(logs, step=epoch + 1)
            self.save(epoch + 1, evaluation.metrics)
        return TrainResult(evaluation, self.checkpoint_path, history, time.perf_counter() - start)

    def train_epoch(self, epoch: int) -> dict[str, float]:
        frozen = self.set_train_mode(epoch)
        sums: dict[str, float] = defaultdict(float)
        bar = tqdm(self.train_loader, desc=f"epoch {epoch + 1}/{self.config.train.epochs}", leave=False,
                   dynamic_ncols=True, disable=None)
        for step, batch in enumerate(bar, start=1):
            values = self.train_step(batch.to(self.device))
            for key, value in values.items():
                sums[key] += value
            bar.set_postfix(loss=f"{sums['loss'] / step:.4f}")
        means = {key: total / len(self.train_loader) for key, total in sums.items()}
        return {**means, "backbone/frozen_stages": float(frozen), "lr": self.optimizer.param_groups[-1]["lr"]}

    def set_train_mode(self, epoch: int) -> int:
        """Training mode, with this epoch's frozen stages fixed (weights and BatchNorm statistics)."""
        backbone = self.model.backbone
        frozen = frozen_stages(self.config.model.backbone, len(backbone.stages), epoch)
        set_frozen(backbone, frozen)
        self.model.train()
        freeze_batchnorm_statistics(backbone, frozen)
        return frozen

    def train_step(self, batch: Any) -> dict[str, float]:
        with self.precision.autocast():
            outputs = self.model(batch.image)
            terms = {task: head.loss(outputs[task], batch) for task, head in self.model.heads.items()}
        loss = static_weighting(terms, self.weights)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss.total).backward()
        if self.config.train.grad_clip:
            self.scaler.unscale_(self.optimizer)
            trainable = [p for p in self.model.parameters() if p.grad is not None]
            torch.nn.utils.clip_grad_norm_(trainable, self.config.train.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        logs = {"loss": float(loss.total.detach())}
        logs.update({f"{task}/loss": float(v.detach()) for task, v in loss.per_task.items()})
        logs.update({k: float(v.detach()) for k, v in loss.terms.items()})
        return logs

    def save(self, epoch: int, metrics: dict[str, float]) -> None:
        save_checkpoint({
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            "config": config_to_dict(self.config),
            "class_names": self.data_info.class_names,
            "category_ids": self.data_info.category_ids,
            "metrics": metrics,
        }, self.checkpoint_path)
