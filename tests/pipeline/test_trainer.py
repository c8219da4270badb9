"""The trainer's step and epoch machinery on fixed batches: non-finite steps, checkpoints, EMA, early stopping."""
from __future__ import annotations

import logging

import pytest
import torch

from pipeline.engine.checkpoint import load_checkpoint
from pipeline.config.schema import parse_config
from pipeline.runtime.device import select_precision
from pipeline.model import build_model
from pipeline.engine.optimizer_step import NonFiniteLossError, group_lr
from pipeline.engine.trainer import DataInfo, Trainer
from support import batch_loader, make_batch


def trainer_for(tmp_path, batches, **train) -> Trainer:
    config = parse_config({
        "data": {"train": "unused", "val": "unused"},
        "model": {"backbone": {"name": "lenet5"},
                  "heads": {"cls": {"type": "classification", "dropout": 0.0}}},
        "train": {"epochs": 2, "optimizer": {"name": "sgd", "lr": 0.05}, "scheduler": {"name": "constant"}, **train},
    })
    torch.manual_seed(0)
    model = build_model(config.model, num_classes=3)
    return Trainer(config, model, batch_loader(batches), [make_batch(size=32, batch=4, seed=99)],
                   DataInfo(["a", "b", "c"], [1, 2, 3]), torch.device("cpu"),
                   select_precision("fp32", torch.device("cpu")), tmp_path)


def clean_batches(count: int) -> list:
    return [make_batch(size=32, batch=4, seed=i) for i in range(count)]


def poisoned(batch):
    batch.image[0, 0, 0, 0] = float("nan")
    return batch


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in trainer.model.state_dict().items()}


def test_a_non_finite_step_is_skipped_and_logged_and_training_goes_on(tmp_path, caplog):
    trainer = trainer_for(tmp_path, [poisoned(make_batch(size=32, batch=4, seed=0))] + clean_batches(3)[1:],
                          epochs=1)
    trainer.sampler.shuffle = False  # the poisoned batch comes first
    before = weights(trainer)
    step = trainer.step.run([poisoned(make_batch(size=32, batch=4, seed=0))], trainer.state)
    assert step == {}
    assert all(torch.equal(before[k], v) for k, v in weights(trainer).items())   # no update from NaN
    assert trainer.state.position.bad_steps == 1 and trainer.state.position.skipped_steps == 1
    with caplog.at_level(logging.WARNING):
        trainer.fit()
    assert "non-finite train/loss, train/cls/loss" in caplog.text and "step skipped" in caplog.text
    assert trainer.state.position.skipped_steps == 2 and trainer.state.position.bad_steps == 0
    assert all(torch.isfinite(v).all() for v in weights(trainer).values())


def test_consecutive_non_finite_steps_stop_the_run_naming_step_task_and_losses(tmp_path):
    trainer = trainer_for(tmp_path, [poisoned(make_batch(size=32, batch=4, seed=i)) for i in range(4)],
                          max_bad_steps=3)
    with pytest.raises(NonFiniteLossError) as error:
        trainer.fit()
    message = str(error.value)
    assert "step 3 (epoch 1, step 3 of 4)" in message
    assert "train/cls/loss=nan" in message and "3 non-finite steps in a row" in message


def test_checkpoints_keep_last_best_and_the_last_k_step_files(tmp_path):
    trainer = trainer_for(tmp_path, clean_batches(3), epochs=3, monitor="val/cls/accuracy",
                          checkpoint={"every_steps": 1, "keep_last": 2})
    result = trainer.fit()
    assert sorted(p.name for p in tmp_path.glob("step-*.pt")) == ["step-8.pt", "step-9.pt"]
    last = load_checkpoint(tmp_path / "last.pt")
    assert last["position"] == {"epoch": 3, "step_in_epoch": 0, "global_step": 9, "bad_steps": 0, "skipped_steps": 0}
    best = load_checkpoint(result.best_checkpoint)
    accuracies = [h["val/cls/accuracy"] for h in result.history]
    assert best["metrics"]["cls/accuracy"] == max(accuracies)
    assert best["position"]["epoch"] == accuracies.index(max(accuracies)) + 1   # the first epoch reaching the best
    assert {"model", "ema", "optimizer", "scheduler", "scaler", "rng", "monitor", "weighting",
            "tracking_run_id"} <= set(last)


def test_a_mid_epoch_checkpoint_records_where_the_sampler_stands(tmp_path):
    trainer = trainer_for(tmp_path, clean_batches(4), epochs=1, checkpoint={"every_steps": 1, "keep_last": 4})
    trainer.fit()
    mid = load_checkpoint(tmp_path / "step-2.pt")
    assert mid["position"]["epoch"] == 0 and mid["position"]["step_in_epoch"] == 2
    resumed = trainer_for(tmp_path / "resumed", clean_batches(4), epochs=1)
    resumed.restore(mid)
    resumed.fit()
    final = load_checkpoint(tmp_path / "last.pt")["model"]
    assert all(torch.equal(final[k], v) for k, v in resumed.model.state_dict().items())


def test_ema_weights_are_validated_and_checkpointed(tmp_path):
    trainer = trainer_for(tmp_path, clean_batches(3), epochs=1, ema_decay=0.5)
    trainer.fit()
    state = load_checkpoint(tmp_path / "last.pt")
    differs = [k for k in state["model"] if not torch.equal(state["model"][k], state["ema"][k])]
    assert differs  # the average lags the trained weights
    assert trainer.validate().metrics == pytest.approx(state["metrics"])
    ema = trainer_for(tmp_path / "ema", clean_batches(3))
    ema.model.load_state_dict(state["ema"])
    assert ema.validate().metrics == pytest.approx(state["metrics"])


def test_early_stopping_ends_the_run_after_patience_epochs_without_improvement(tmp_path):
    trainer = trainer_for(tmp_path, clean_batches(2), epochs=10, monitor="val/cls/accuracy",
                          optimizer={"name": "sgd", "lr": 0.0}, early_stopping={"patience": 2})
    result = trainer.fit()
    assert result.stopped_early and len(result.history) == 3   # best at epoch 1, then 2 epochs without improvement


def test_an_unknown_monitor_metric_is_a_clear_error(tmp_path):
    trainer = trainer_for(tmp_path, clean_batches(2), monitor="val/cls/acuracy")
    with pytest.raises(ValueError, match="train.monitor: 'val/cls/acuracy' is not a logged metric"):
        trainer.fit()


class FailingValidation:
    """A validation split whose images cannot be read (found only when validation runs)."""

    def __iter__(self):
        raise OSError("val/broken.png: cannot identify image file")


def test_a_validation_fault_keeps_the_trained_epoch_and_resuming_validates_and_goes_on(tmp_path):
    straight = trainer_for(tmp_path / "straight", clean_batches(3), epochs=2)
    straight.fit()
    faulty = trainer_for(tmp_path / "faulty", clean_batches(3), epochs=2)
    val_loader, faulty.val_loader = faulty.val_loader, FailingValidation()
    with pytest.raises(OSError, match="broken.png"):
        faulty.fit()
    kept = load_checkpoint(tmp_path / "faulty" / "last.pt")
    assert kept["position"]["global_step"] == 3 and kept["position"]["step_in_epoch"] == 3   # epoch 1, trained
    resumed = trainer_for(tmp_path / "faulty", clean_batches(3), epochs=2)
    resumed.val_loader = val_loader
    resumed.restore(kept)
    result = resumed.fit()
    def learned(history):  # what the run learned and measured, without its timings
        return [{k: v for k, v in logs.items() if not k.startswith("system/")} for logs in history]

    assert learned(result.history) == learned(straight.state.history)
    assert all(torch.equal(v, straight.model.state_dict()[k]) for k, v in resumed.model.state_dict().items())


def test_a_failed_checkpoint_write_keeps_the_previous_one_and_says_where(tmp_path, monkeypatch):
    trainer = trainer_for(tmp_path, clean_batches(2), epochs=2)
    trainer.config.train.epochs = 1
    trainer.fit()
    before = (tmp_path / "last.pt").read_bytes()

    def full_disk(state, path):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("pipeline.engine.checkpoint.save_checkpoint", full_disk)
    trainer.config.train.epochs = 2
    with pytest.raises(OSError, match=r"could not write the checkpoint of step 4 .*No space left.*previous one is kept: "
                                      + str(tmp_path / "last.pt")):
        trainer.fit()
    assert (tmp_path / "last.pt").read_bytes() == before


def test_an_fp16_overflow_skips_the_whole_step_schedule_ema_and_count_included(tmp_path):
    trainer = trainer_for(tmp_path, clean_batches(2), ema_decay=0.5, scheduler={"name": "cosine", "warmup_epochs": 0})
    trainer.step.precision = select_precision("fp16", torch.device("cpu"))
    trainer.step.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127)   # the scaled loss overflows
    before, ema_before = weights(trainer), {k: v.clone() for k, v in trainer.ema.module.state_dict().items()}
    schedule_before, lr_before = trainer.scheduler.state_dict(), group_lr(trainer.optimizer, "heads")
    assert trainer.step.run([make_batch(size=32, batch=4, seed=0)], trainer.state) == {}
    assert trainer.step.scaler.get_scale() < 2.0 ** 127                          # GradScaler backed off
    assert all(torch.equal(before[k], v) for k, v in weights(trainer).items())
    assert all(torch.equal(ema_before[k], v) for k, v in trainer.ema.module.state_dict().items())
    assert trainer.scheduler.state_dict() == schedule_before and group_lr(trainer.optimizer, "heads") == lr_before
    assert trainer.state.position.skipped_steps == 1 and trainer.state.position.bad_steps == 0
    trainer.step.scaler = torch.amp.GradScaler("cpu", init_scale=1.0)             # a scale that fits: it trains
    assert trainer.step.run([make_batch(size=32, batch=4, seed=0)], trainer.state) != {}
    assert trainer.scheduler.state_dict() != schedule_before


def test_a_checkpoint_does_not_grow_with_the_steps_trained(tmp_path):
    """Per-step values live in the run's metrics.jsonl; a checkpoint holds one epoch's figures per epoch."""
    sizes = []
    for steps in (4, 40):
        trainer = trainer_for(tmp_path / str(steps), clean_batches(steps), epochs=1)
        trainer.fit()
        sizes.append((tmp_path / str(steps) / "last.pt").stat().st_size)
    assert abs(sizes[1] - sizes[0]) < 1024, sizes      # 36 more steps of ~10 values each would add ~10 KB
