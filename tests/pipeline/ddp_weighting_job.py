"""Run under torchrun by test_weighting_ddp.py: train one epoch of two steps (with validation and checkpoints)
with every weighting strategy, and distilled with feature adapters under two, then save this rank's parameters, BatchNorm statistics (the U-Net decoder's, the
EMA's) and task weights to <out>/rank<r>.pt."""
from __future__ import annotations

import sys
from pathlib import Path

import torch

from pipeline.compression.distillation import load_distiller
from pipeline.config.schema import parse_config
from pipeline.engine.data import build_splits, ensure_shapes, eval_loader, train_loader
from pipeline.runtime.device import select_precision
from pipeline.runtime.distributed import barrier, init_distributed, shutdown
from pipeline.model import build_model
from pipeline.engine.trainer import DataInfo, Trainer
from pipeline.weighting import STRATEGIES

DISTILLED = ("static", "pcgrad")   # the DDP reducer averages the model's gradients, and PCGrad its own


def config_for(strategy: str, data: Path) -> dict:
    return {
        "seed": 1,
        "data": {"train": str(data / "train/annotations.json"), "val": str(data / "val/annotations.json"),
                 "image_size": 32, "batch_size": 2, "num_workers": 0, "shapes": {"train_images": 16, "val_images": 4}},
        "model": {"backbone": {"name": "lenet5"},
                  "heads": {"cls": {"type": "classification", "dropout": 0.0},
                            "seg": {"type": "unet", "decoder_channels": [8, 8]},
                            "recon": {"type": "ae", "bottleneck_stride": 4, "decoder_channels": [8, 8], "weight": 5.0}},
                  "weighting": {"name": strategy}},
        "train": {"epochs": 1, "device": "cpu", "accumulate": 2, "ema_decay": 0.5,
                  "optimizer": {"name": "adamw", "lr": 0.01},
                  "scheduler": {"name": "constant", "warmup_epochs": 0}},
    }


def running_statistics(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.named_buffers() if "running_" in k}


def main(out: Path) -> None:
    dist, device = init_distributed("cpu")
    results = {}
    for strategy in STRATEGIES:
        results[strategy] = train(parse_config(config_for(strategy, out / "data")), out / strategy, dist, device)
    # Distilled, with FitNets adapters (outside the model and its DDP wrapper), taught by the static run's model.
    for strategy in DISTILLED:
        raw = config_for(strategy, out / "data")
        raw["model"]["distill"] = {"teacher": str(out / "static" / "rank0" / "last.pt"), "features": {"stages": [-1]}}
        results[f"distill/{strategy}"] = train(parse_config(raw), out / f"distill-{strategy}", dist, device)
    torch.save(results, out / f"rank{dist.rank}.pt")
    shutdown()


def train(config, folder: Path, dist, device) -> dict:
    """One epoch of two steps on this rank; what each rank must agree on afterwards."""
    if dist.is_main:
        ensure_shapes(config.data)
    barrier(dist)
    splits = build_splits(config.data)
    torch.manual_seed(config.seed)
    model = build_model(config.model, num_classes=len(splits.class_names))
    distiller = (load_distiller(config.model.distill, model, splits.class_names, device, None)
                 if config.model.distill else None)
    trainer = Trainer(config, model, train_loader(splits.train, config.data, config.seed, dist),
                      eval_loader(splits.val, config.data, config.seed, dist),
                      DataInfo(splits.class_names, splits.category_ids, splits.image_policy.to_dict()), device,
                      select_precision("fp32", device), folder / f"rank{dist.rank}", dist=dist, distiller=distiller)
    trainer.fit()
    adapters = distiller.state_dict()["adapters"] if distiller else {}
    return {"parameters": {k: v.detach().clone() for k, v in trainer.model.named_parameters()},
            "adapters": {k: v.detach().clone() for k, v in adapters.items()},
            "statistics": running_statistics(trainer.model),
            "ema_statistics": running_statistics(trainer.ema.module),
            "weights": trainer.weighting.weights(), "steps": trainer.state.position.global_step}


if __name__ == "__main__":
    main(Path(sys.argv[1]))
