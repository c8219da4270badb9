"""Freezing, progressive unfreezing and per-stage learning rates, through the real trainer."""
from __future__ import annotations

import pytest
import torch

from pipeline.config.schema import parse_config
from pipeline.runtime.device import select_precision
from pipeline.model import build_model
from pipeline.engine.trainer import DataInfo, Trainer
from pipeline.config.typed import ConfigError
from support import batch_loader, make_batch


def trainer_for(tmp_path, backbone: dict, epochs: int = 1, lr: float = 0.01) -> Trainer:
    config = parse_config({
        "data": {"train": "unused", "val": "unused"},
        "model": {"backbone": {"name": "resnet18", **backbone},
                  "heads": {"cls": {"type": "classification"}, "seg": {"type": "unet"}}},
        "train": {"epochs": epochs, "optimizer": {"name": "adamw", "lr": lr}, "scheduler": {"name": "constant"}},
    })
    torch.manual_seed(0)
    model = build_model(config.model, num_classes=3)
    batches = [make_batch(size=64, batch=4, seed=i) for i in range(2)]
    return Trainer(config, model, batch_loader(batches), batches[:1], DataInfo(["a", "b", "c"], [1, 2, 3]),
                   torch.device("cpu"), select_precision("fp32", torch.device("cpu")), tmp_path)


def snapshot(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Parameters and buffers (BatchNorm running statistics included)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def changed(before: dict, after: dict) -> set[str]:
    return {k for k in before if not torch.equal(before[k], after[k])}


def test_frozen_stages_keep_weights_and_batchnorm_statistics_and_get_no_optimizer_state(tmp_path):
    trainer = trainer_for(tmp_path, {"freeze": 2})
    stages = trainer.model.backbone.stages
    before = [snapshot(stage) for stage in stages]
    trainer.train_epoch(0)
    after = [snapshot(stage) for stage in stages]
    assert not changed(before[0], after[0]) and not changed(before[1], after[1])
    assert any("running_mean" in k for k in changed(before[2], after[2]))  # trained stages do update statistics
    assert any("weight" in k for k in changed(before[4], after[4]))
    state = trainer.optimizer.state
    assert all(p not in state for stage in stages[:2] for p in stage.parameters())
    assert all(p in state for stage in stages[2:] for p in stage.parameters())


def test_freeze_all_trains_only_the_heads(tmp_path):
    trainer = trainer_for(tmp_path, {"freeze": "all"})
    before_backbone, before_heads = snapshot(trainer.model.backbone), snapshot(trainer.model.heads)
    trainer.train_epoch(0)
    assert not changed(before_backbone, snapshot(trainer.model.backbone))
    assert changed(before_heads, snapshot(trainer.model.heads))


def test_progressive_unfreezing_thaws_one_stage_from_the_top_every_k_epochs(tmp_path):
    trainer = trainer_for(tmp_path, {"freeze": "all", "unfreeze_every": 2}, epochs=6)
    stages = trainer.model.backbone.stages
    frozen_per_epoch, trained_per_epoch = [], []
    for epoch in range(6):
        before = [snapshot(stage) for stage in stages]
        frozen_per_epoch.append(trainer.train_epoch(epoch)["backbone/frozen_stages"])
        trained_per_epoch.append([i for i, stage in enumerate(stages) if changed(before[i], snapshot(stage))])
    assert frozen_per_epoch == [5, 5, 4, 4, 3, 3]
    assert trained_per_epoch == [[], [], [4], [4], [3, 4], [3, 4]]


def test_stage_learning_rate_multipliers_reach_the_optimizer(tmp_path):
    multipliers = [0.01, 0.01, 0.1, 0.1, 0.1]
    trainer = trainer_for(tmp_path, {"stage_lr": multipliers}, lr=0.02)
    groups = {g["name"]: g for g in trainer.optimizer.param_groups}
    assert [groups[f"backbone.stages.{i}"]["lr"] for i in range(5)] == pytest.approx([0.02 * m for m in multipliers])
    assert groups["heads"]["lr"] == pytest.approx(0.02)
    grouped = [p for g in trainer.optimizer.param_groups for p in g["params"]]
    assert len(grouped) == len(set(map(id, grouped))) == len(list(trainer.model.parameters()))
    trainer.train_epoch(0)  # the schedule scales every group alike: the ratios hold
    lrs = [g["lr"] for g in trainer.optimizer.param_groups]
    assert lrs[0] / lrs[-1] == pytest.approx(0.01)


def test_wrong_number_of_multipliers_or_stages_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"stage_lr: expected 5 multipliers"):
        trainer_for(tmp_path, {"stage_lr": [0.1, 1.0]})
    with pytest.raises(ConfigError, match=r"freeze: expected none, all or 0..5"):
        trainer_for(tmp_path, {"freeze": 9}).train_epoch(0)
