"""Training diagnostics: per-group gradient norms and update ratios of real steps, activation statistics, the
warning rules on constructed histories, and a tracked run that logs them (and one that, by default, does not)."""
from __future__ import annotations

import logging
import math

import pytest
import torch
from mlflow.tracking import MlflowClient

from pipeline.config.schema import parse_config
from pipeline.config.typed import ConfigError
from pipeline.engine.diagnostics import FIGURE_FILE, Diagnostics
from pipeline.engine.diagnostics_maths import (TRAIN_LOSS, LossWatch, RatioWatch, activation_stats, overfitting,
                                               stage_activations, underfitting)
from pipeline.engine.trainer import DataInfo, Trainer
from pipeline.model import build_model
from pipeline.runtime.device import Precision, select_precision
from pipeline.tracking.tracker import Tracker
from support import batch_loader, make_batch

PLAIN_SGD = {"name": "sgd", "lr": 0.05, "momentum": 0.0, "weight_decay": 0.0}


def raw_config(**train) -> dict:
    return {
        "data": {"train": "unused", "val": "unused"},
        "model": {"backbone": {"name": "lenet5"}, "heads": {"cls": {"type": "classification", "dropout": 0.0},
                                                            "seg": {"type": "fcn", "variant": "16s"}}},
        "train": {"epochs": 2, "grad_clip": None, "optimizer": PLAIN_SGD,
                  "scheduler": {"name": "constant", "warmup_epochs": 0}, **train},
    }


def trainer_for(tmp_path, batches, tracker: Tracker | None = None, **train) -> Trainer:
    config = parse_config(raw_config(**train))
    torch.manual_seed(0)
    model = build_model(config.model, num_classes=3)
    return Trainer(config, model, batch_loader(batches), [make_batch(size=32, batch=4, seed=99)],
                   DataInfo(["a", "b", "c"], [1, 2, 3]), torch.device("cpu"),
                   select_precision("fp32", torch.device("cpu")), tmp_path, tracker)


def diagnostics_of(trainer: Trainer) -> Diagnostics:
    return next(hook for hook in trainer.hooks if isinstance(hook, Diagnostics))


def by_hand_groups(trainer: Trainer) -> dict[str, list[torch.nn.Parameter]]:
    model = trainer.model
    return {"backbone/stage0": list(model.backbone.stages[0].parameters()),
            "backbone/stage1": list(model.backbone.stages[1].parameters()),
            "head/cls": list(model.heads["cls"].parameters()), "head/seg": list(model.heads["seg"].parameters())}


def norm(tensors: list[torch.Tensor]) -> float:
    return math.sqrt(sum(float(t.double().pow(2).sum()) for t in tensors))


def test_a_plain_sgd_step_has_update_ratio_lr_times_grad_norm_over_weight_norm_per_group(tmp_path):
    trainer = trainer_for(tmp_path, [make_batch(size=32, batch=4, seed=i) for i in range(2)],
                          diagnostics={"every_steps": 1})
    diagnostics = diagnostics_of(trainer)
    diagnostics.before_epoch(trainer, 0)
    groups = by_hand_groups(trainer)
    weights = {name: [p.detach().clone() for p in params] for name, params in groups.items()}
    values = trainer.train_step(iter(trainer.train_loader))
    diagnostics.after_step(trainer, values)
    logged = {key: points[-1] for key, points in diagnostics.series.items()}
    for name, params in groups.items():
        grads = [p.grad for p in params]  # still there: the next step zeroes them
        assert logged[f"diag/grad_norm/{name}"] == (1, pytest.approx(norm(grads), rel=1e-5)), name
        by_hand = PLAIN_SGD["lr"] * norm(grads) / norm(weights[name])
        assert logged[f"diag/update_ratio/{name}"] == (1, pytest.approx(by_hand, rel=1e-4)), name
    assert len({logged[f"diag/update_ratio/{name}"][1] for name in groups}) == len(groups)  # not one global figure


def test_with_fp16_loss_scaling_and_accumulation_the_norm_is_of_the_whole_unscaled_gradient(tmp_path):
    trainer = trainer_for(tmp_path, [make_batch(size=32, batch=4, seed=i) for i in range(2)], accumulate=2,
                          diagnostics={"every_steps": 1})
    trainer.precision = Precision(torch.float16, "cpu")
    trainer.step.precision, trainer.step.scaler = trainer.precision, trainer.precision.scaler()
    diagnostics = diagnostics_of(trainer)
    diagnostics.before_epoch(trainer, 0)
    values = trainer.train_step(iter(trainer.train_loader))    # both micro-batches, one step
    diagnostics.after_step(trainer, values)
    assert values and trainer.step.scaler.get_scale() > 1       # trained, with a loss scale
    for name, params in by_hand_groups(trainer).items():        # .grad: unscaled in place, both micro-batches
        by_hand = float(torch.nn.utils.get_total_norm([p.grad for p in params]))
        assert diagnostics.series[f"diag/grad_norm/{name}"] == [(1, pytest.approx(by_hand, rel=1e-5))], name


def test_only_every_nth_step_is_measured_and_clipping_comes_after_the_norm(tmp_path):
    trainer = trainer_for(tmp_path, [make_batch(size=32, batch=4, seed=i) for i in range(4)], epochs=1,
                          grad_clip=1e-3, diagnostics={"every_steps": 2, "activations": False})
    trainer.fit()
    series = diagnostics_of(trainer).series
    assert [step for step, _ in series["diag/grad_norm/head/cls"]] == [2, 4]
    assert all(value > 1e-3 for _, value in series["diag/grad_norm/head/cls"])  # before clipping to 1e-3


def test_activation_statistics_of_a_hand_made_map():
    feature = torch.zeros(2, 4, 3, 3)
    feature[:, 0] = -1.0                  # never > 0: dead
    feature[1, 2, 2, 2] = 0.5             # > 0 at one position of one image: alive
    feature[:, 3] = 2.0                   # alive everywhere; channel 1 stays 0: dead
    stats = activation_stats(feature)
    assert stats["dead_fraction"] == 0.5
    assert stats["mean"] == pytest.approx(float(feature.mean())) and stats["std"] == pytest.approx(float(feature.std()))


def test_the_activation_pass_puts_back_each_modules_own_mode(tmp_path):
    trainer = trainer_for(tmp_path, [make_batch(size=32, batch=4, seed=0)])
    model = trainer.model.train()
    frozen = model.backbone.stages[0]
    frozen.eval()                           # as a frozen stage's BatchNorm is within a training epoch
    stats = stage_activations(model, make_batch(size=32, batch=4).image, torch.autocast("cpu", enabled=False))
    assert set(stats) == {"backbone/stage0", "backbone/stage1"}
    assert model.training and model.heads.training and not frozen.training


def test_the_ratio_rule_fires_after_patience_steps_outside_the_band_and_once_per_run_of_them():
    watch = RatioWatch(band=(1e-4, 1e-2), patience=3)
    healthy = [watch.update({"backbone/stage0": 1e-3, "head/cls": 2e-3}) for _ in range(10)]
    assert healthy == [[]] * 10
    interrupted = [watch.update({"head/cls": r}) for r in (1e-1, 1e-1, 1e-3, 1e-1, 1e-1)]
    assert interrupted == [[]] * 5
    fired = [watch.update({"head/cls": 1e-6}) for _ in range(4)]   # 2 already outside: the third fires, once
    assert fired == [["head/cls"], [], [], []]
    again = [watch.update({"head/cls": r}) for r in (1e-3, 1e-6, 1e-6, 1e-6)]   # back in the band, out again
    assert again == [[], [], [], ["head/cls"]]


def test_the_loss_rule_fires_when_the_loss_stops_falling_after_warm_up():
    falling = LossWatch(window=3, min_drop=0.05)
    assert not any(falling.add(loss) for loss in [2.0, 1.9, 1.8, 1.5, 1.4, 1.3, 1.2, 1.1])
    flat = LossWatch(window=3, min_drop=0.05)
    fired = [flat.add(loss) for loss in [2.0, 2.1, 1.9, 2.0, 1.95, 2.05, 2.0]]
    assert fired == [False] * 5 + [True, False]   # first with 3 recent steps; once while it stays flat
    assert flat.means() == (pytest.approx(2.0), pytest.approx(2.0))


def epochs(train_losses: list[float], accuracies: list[float] | None = None) -> list[dict[str, float]]:
    accuracies = accuracies or [0.5] * len(train_losses)
    return [{TRAIN_LOSS: loss, "val/cls/accuracy": acc} for loss, acc in zip(train_losses, accuracies)]


def test_overfitting_fires_when_train_loss_falls_and_the_val_metric_worsens():
    diverging = epochs([2.0, 1.5, 1.0, 0.7, 0.5], [0.3, 0.6, 0.55, 0.5, 0.45])
    assert overfitting(diverging, "val/cls/accuracy", "max", patience=3, min_drop=0.05)
    healthy = epochs([2.0, 1.5, 1.0, 0.7, 0.5], [0.3, 0.6, 0.65, 0.7, 0.72])
    assert not overfitting(healthy, "val/cls/accuracy", "max", patience=3, min_drop=0.05)
    one_bad_epoch = epochs([2.0, 1.5, 1.0, 0.7, 0.5], [0.3, 0.6, 0.55, 0.61, 0.58])
    assert not overfitting(one_bad_epoch, "val/cls/accuracy", "max", patience=3, min_drop=0.05)
    assert not overfitting(diverging, None, "max", patience=3, min_drop=0.05)   # no monitored metric
    loss_like = [{TRAIN_LOSS: t, "val/recon/loss": v} for t, v in zip([2.0, 1.5, 1.0, 0.7], [1.0, 1.1, 1.2, 1.3])]
    assert overfitting(loss_like, "val/recon/loss", "min", patience=3, min_drop=0.05)


def test_underfitting_fires_when_the_train_loss_stays_near_its_start():
    assert underfitting(epochs([2.0, 1.95, 1.9, 1.88]), warmup_epochs=1, patience=3, fraction=0.9)
    assert not underfitting(epochs([2.0, 1.95, 1.9]), warmup_epochs=1, patience=3, fraction=0.9)   # too early
    assert not underfitting(epochs([2.0, 1.6, 1.2, 0.9]), warmup_epochs=1, patience=3, fraction=0.9)
    assert underfitting(epochs([-1.0, -1.05]), warmup_epochs=0, patience=2, fraction=0.9)   # negative totals too


def test_off_by_default_there_is_no_hook_and_no_gradient_inspection(tmp_path):
    trainer = trainer_for(tmp_path, [make_batch(size=32, batch=4, seed=0)], epochs=1)
    assert trainer.config.train.diagnostics.every_steps == 0
    assert not any(isinstance(hook, Diagnostics) for hook in trainer.hooks)
    trainer.fit()
    assert trainer.step.inspect_gradients is None and not (tmp_path / FIGURE_FILE).exists()


def test_the_config_is_checked():
    with pytest.raises(ConfigError, match="train.diagnostics.ratio_band: expected"):
        parse_config(raw_config(diagnostics={"every_steps": 5, "ratio_band": [1e-2, 1e-4]}))
    with pytest.raises(ConfigError, match="train.diagnostics.every_steps: expected an integer >= 0"):
        parse_config(raw_config(diagnostics={"every_steps": -1}))
    with pytest.raises(ConfigError, match="Did you mean 'every_steps'"):
        parse_config(raw_config(diagnostics={"every_step": 5}))


def test_a_flat_run_warns_in_the_log_and_counts_the_warnings(tmp_path, caplog):
    trainer = trainer_for(tmp_path, [make_batch(size=32, batch=4, seed=i) for i in range(2)], epochs=4,
                          optimizer={**PLAIN_SGD, "lr": 1e-7},
                          diagnostics={"every_steps": 1, "ratio_patience": 2, "loss_window": 2, "patience_epochs": 2})
    with caplog.at_level(logging.WARNING, logger="pipeline.engine.diagnostics"):
        trainer.fit()
    warnings = diagnostics_of(trainer).warnings
    assert warnings["update_ratio"] >= 1 and warnings["loss_not_falling"] == 1 and warnings["underfitting"] == 1
    assert warnings["overfitting"] == 0
    assert "update/weight ratio" in caplog.text and "too low" in caplog.text and "underfitting" in caplog.text
    assert (tmp_path / FIGURE_FILE).is_file()


def tracked_fit(folder, uri: str, **train) -> tuple[str, Trainer]:
    """A 2-epoch run of 2 steps an epoch, tracked in the store at `uri`; its run id and trainer."""
    tracker = Tracker(parse_config({**raw_config(), "tracking": {"uri": uri, "experiment": "diag"}}).tracking)
    run_id = tracker.start({}, {})
    trainer = trainer_for(folder, [make_batch(size=32, batch=4, seed=i) for i in range(2)], tracker=tracker, **train)
    trainer.fit()
    tracker.end()
    return run_id, trainer


def test_a_tracked_run_logs_the_diagnostics_and_their_plot_and_none_when_off(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"     # one store for both runs: making one costs seconds
    run_id, trainer = tracked_fit(tmp_path / "on", uri, diagnostics={"every_steps": 1})
    client = MlflowClient(tracking_uri=uri)
    metrics = client.get_run(run_id).data.metrics
    for key in ["diag/grad_norm/backbone/stage0", "diag/update_ratio/head/seg"]:   # every step
        assert [m.step for m in client.get_metric_history(run_id, key)] == [1, 2, 3, 4], key
    for key in ["diag/act/backbone/stage1/dead_fraction", "diag/act/backbone/stage0/std", "diag/warnings/overfitting"]:
        assert [m.step for m in client.get_metric_history(run_id, key)] == [2, 4], key    # every epoch end
    assert 0.0 <= metrics["diag/act/backbone/stage1/dead_fraction"] <= 1.0 and metrics["diag/warnings/overfitting"] == 0
    assert FIGURE_FILE in {a.path for a in client.list_artifacts(run_id)}
    assert (tmp_path / "on" / FIGURE_FILE).is_file()   # in the run's folder too

    off_id, _ = tracked_fit(tmp_path / "off", uri)
    logged = client.get_run(off_id).data.metrics
    assert "train/loss" in logged and not [key for key in logged if key.startswith("diag/")]
    assert not client.list_artifacts(off_id) and not (tmp_path / "off" / FIGURE_FILE).exists()
