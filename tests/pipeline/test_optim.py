"""Optimisers, weight penalties and learning-rate schedules (pipeline/engine/optim.py, pipeline/engine/schedules.py)."""
from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from pipeline.config.schema import OptimizerConfig, SchedulerConfig, TrainConfig, config_to_dict, parse_config
from pipeline.model import build_model
from pipeline.engine.optim import build_optimizer, penalty
from pipeline.engine.optimizer_step import group_lr
from pipeline.engine.schedules import build_scheduler, validate_scheduler
from pipeline.config.typed import ConfigError

ALL_SCHEDULES = ["constant", "cosine", "linear", "step", "multistep", "inverse_sqrt", "plateau"]


def sgd(lrs: tuple[float, ...] = (1.0,)) -> torch.optim.SGD:
    """One tiny parameter per group, each with its own base lr."""
    return torch.optim.SGD([{"params": [nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs])


def run(schedule, optimizer, steps: int) -> list[list[float]]:
    """The lrs each optimiser step ran with, per group."""
    used = []
    for _ in range(steps):
        used.append([group["lr"] for group in optimizer.param_groups])
        optimizer.step()
        schedule.step()
    return used


def curve(steps: int, steps_per_epoch: int = 10, epochs: int = 3, **config) -> list[float]:
    optimizer = sgd()
    schedule = build_scheduler(optimizer, SchedulerConfig(**config), steps_per_epoch, epochs)
    return [lrs[0] for lrs in run(schedule, optimizer, steps)]


# --- schedules: lr curves against hand-computed values (base lr 1) ---

def test_warmup_ramps_linearly_then_holds():
    lrs = curve(8, name="constant", warmup_epochs=0.5)  # 5 warm-up steps
    assert lrs == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 1.0, 1.0])


@pytest.mark.parametrize("warmup_epochs", [0.0, 0.01])  # 0 and 0.1 steps: one step, i.e. no ramp
def test_warmup_of_less_than_a_step_is_one_step_at_full_lr(warmup_epochs):
    assert curve(2, name="cosine", warmup_epochs=warmup_epochs)[0] == 1.0


@pytest.mark.parametrize("name, halfway, three_quarters_up", [
    ("cosine", 0.1 + 0.9 * 0.5, 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))),
    ("linear", 0.1 + 0.9 * 0.5, 0.1 + 0.9 * 0.75),
])
def test_cosine_and_linear_decay_after_warmup_to_the_floor(name, halfway, three_quarters_up):
    # 10 warm-up steps, 30 in all: the decay spans steps 10..30
    lrs = curve(40, name=name, warmup_epochs=1.0, min_lr_ratio=0.1)
    assert lrs[0] == pytest.approx(0.1)
    assert lrs[9] == lrs[10] == 1.0
    assert lrs[15] == pytest.approx(three_quarters_up)
    assert lrs[20] == pytest.approx(halfway)
    assert lrs[29] > 0.1
    assert lrs[30] == pytest.approx(0.1) and lrs[39] == pytest.approx(0.1)  # the floor after the last step


def test_step_multiplies_by_gamma_every_step_epochs():
    lrs = curve(41, name="step", warmup_epochs=0.0, step_epochs=2, gamma=0.1, epochs=5)
    assert lrs[0] == lrs[19] == 1.0
    assert lrs[20] == pytest.approx(0.1) and lrs[39] == pytest.approx(0.1)
    assert lrs[40] == pytest.approx(0.01)


def test_multistep_multiplies_by_gamma_at_each_milestone_epoch():
    lrs = curve(30, name="multistep", warmup_epochs=0.0, milestones=[1, 2.5], gamma=0.5)
    assert lrs[9] == 1.0
    assert lrs[10] == lrs[24] == 0.5
    assert lrs[25] == lrs[29] == 0.25


def test_boundaries_count_from_the_start_and_multiply_the_warmup():
    lrs = curve(12, name="step", warmup_epochs=1.0, step_epochs=0.5, gamma=0.5)  # 10-step ramp, drop every 5
    assert lrs[4] == pytest.approx(0.5)
    assert lrs[5] == pytest.approx(0.6 * 0.5)
    assert lrs[10] == pytest.approx(0.25)


def test_inverse_sqrt_decays_as_sqrt_of_warmup_over_step():
    lrs = curve(36, name="inverse_sqrt", warmup_epochs=0.4)  # 4 warm-up steps
    assert lrs[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, math.sqrt(4 / 5)])
    assert lrs[15] == pytest.approx(0.5)   # the 16th step: sqrt(4 / 16)
    assert lrs[35] == pytest.approx(1 / 3)  # the 36th step: sqrt(4 / 36)


def test_inverse_sqrt_without_warmup_uses_one_step():
    lrs = curve(9, name="inverse_sqrt", warmup_epochs=0.0)
    assert lrs[0] == 1.0 and lrs[3] == pytest.approx(0.5) and lrs[8] == pytest.approx(1 / 3)


# --- plateau ---

def plateau(mode: str = "max", patience: int = 2, warmup_epochs: float = 0.0):
    optimizer = sgd()
    config = SchedulerConfig(name="plateau", warmup_epochs=warmup_epochs, gamma=0.5, patience=patience)
    return optimizer, build_scheduler(optimizer, config, steps_per_epoch=10, epochs=10, monitor_mode=mode)


def lrs_after_each_epoch(mode: str, values: list[float], patience: int = 2) -> list[float]:
    optimizer, schedule = plateau(mode, patience)
    lrs = []
    for value in values:
        run(schedule, optimizer, 10)
        schedule.epoch_end(value)
        lrs.append(optimizer.param_groups[0]["lr"])  # the lr the next epoch starts with
    return lrs


@pytest.mark.parametrize("mode, values", [
    ("max", [1.0, 2.0, 2.0, 1.5, 1.9, 1.0, 2.5]),
    ("min", [1.0, 0.5, 0.5, 0.6, 0.7, 0.9, 0.1]),
])
def test_plateau_decays_after_patience_epochs_without_improvement(mode, values):
    # best at epoch 2; epochs 3-4 do not improve -> decay; 5-6 do not either -> decay again; 7 improves
    assert lrs_after_each_epoch(mode, values) == [1.0, 1.0, 1.0, 0.5, 0.5, 0.25, 0.25]


@pytest.mark.parametrize("mode, values", [("max", [0.1, 0.2, 0.3, 0.4]), ("min", [0.4, 0.3, 0.2, 0.1])])
def test_plateau_keeps_the_lr_while_improving(mode, values):
    assert lrs_after_each_epoch(mode, values, patience=0) == [1.0] * 4


def test_plateau_warms_up_and_a_nan_metric_is_no_improvement():
    optimizer, schedule = plateau(patience=1, warmup_epochs=0.5)
    assert [lrs[0] for lrs in run(schedule, optimizer, 6)] == pytest.approx([0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    schedule.epoch_end(1.0)
    schedule.epoch_end(float("nan"))
    assert optimizer.param_groups[0]["lr"] == 0.5


def test_plateau_without_a_monitored_metric_is_a_config_error():
    _, schedule = plateau()
    with pytest.raises(ConfigError, match=r"train\.monitor"):
        schedule.epoch_end(None)
    with pytest.raises(ConfigError, match=r"train\.monitor is not set"):
        validate_scheduler(TrainConfig(scheduler=SchedulerConfig(name="plateau")))
    validate_scheduler(TrainConfig(scheduler=SchedulerConfig(name="plateau"), monitor="val/cls/accuracy"))
    validate_scheduler(TrainConfig(scheduler=SchedulerConfig(name="cosine")))


def test_out_of_range_scheduler_fields_name_the_field():
    with pytest.raises(ConfigError, match=r"train\.scheduler\.gamma: expected 0 < gamma <= 1, got 0"):
        build_scheduler(sgd(), SchedulerConfig(gamma=0), 10, 3)
    with pytest.raises(ConfigError, match=r"train\.scheduler\.min_lr_ratio"):
        validate_scheduler(TrainConfig(scheduler=SchedulerConfig(min_lr_ratio=1.5)))


# --- every schedule: exact resume and per-group multipliers ---

def every_feature(name: str) -> SchedulerConfig:
    return SchedulerConfig(name=name, warmup_epochs=1.3, min_lr_ratio=0.1, step_epochs=2, milestones=[1.5, 3],
                           gamma=0.5, patience=1)


METRICS = [1.0, 1.0, 2.0, 2.0, 2.0, 3.0]  # with patience 1, plateau decays after epochs 2, 4 and 5


def train(schedule, optimizer, steps: range, steps_per_epoch: int = 10) -> list[list[float]]:
    used = []
    for step in steps:
        used += run(schedule, optimizer, 1)
        if (step + 1) % steps_per_epoch == 0:
            schedule.epoch_end(METRICS[step // steps_per_epoch])
    return used


def saved_and_loaded(state: dict) -> dict:
    """Through torch.save / torch.load(weights_only=True), as in a checkpoint."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


@pytest.mark.parametrize("optimizer_state_first", [False, True])
@pytest.mark.parametrize("name", ALL_SCHEDULES)
def test_resume_from_the_state_dict_gives_the_same_lrs_bit_for_bit(name, optimizer_state_first):
    total, stop = 60, 27  # stop mid-epoch, after a plateau decay
    optimizer = sgd((0.1, 1.0))
    schedule = build_scheduler(optimizer, every_feature(name), 10, 6, monitor_mode="max")
    uninterrupted = train(schedule, optimizer, range(total))

    optimizer = sgd((0.1, 1.0))
    schedule = build_scheduler(optimizer, every_feature(name), 10, 6, monitor_mode="max")
    first = train(schedule, optimizer, range(stop))
    optimizer_state, schedule_state = saved_and_loaded([optimizer.state_dict(), schedule.state_dict()])

    # a fresh run; without the optimiser's state its lrs are the initial ones and the schedule must restore them
    optimizer = sgd((0.1, 1.0))
    if optimizer_state_first:  # the schedule is then built on the saved (decayed) lrs
        optimizer.load_state_dict(optimizer_state)
    schedule = build_scheduler(optimizer, every_feature(name), 10, 6, monitor_mode="max")
    schedule.load_state_dict(schedule_state)
    resumed = first + train(schedule, optimizer, range(stop, total))
    assert resumed == uninterrupted
    assert len({lrs[1] for lrs in uninterrupted}) > 3  # the schedule did move


def tiny_model_config(optimizer: dict, stage_lr: list[float] | None = None):
    return parse_config({
        "data": {"train": "unused", "val": "unused"},
        "model": {"backbone": {"name": "lenet5", "stage_lr": stage_lr}, "heads": {"cls": {"type": "classification"}}},
        "train": {"optimizer": optimizer},
    })


def multiplier_of(group: dict) -> float:
    """The stage_lr multiplier a group's name says it must have: a stage's decay and no-decay parts alike."""
    stage = group["name"].removeprefix("backbone.stages.").removesuffix(".no_decay")
    return 1.0 if stage.startswith("heads") else STAGE_LR[int(stage)]


STAGE_LR = [0.01, 0.1]


@pytest.mark.parametrize("name", ALL_SCHEDULES)
def test_every_schedule_keeps_the_per_stage_multipliers(name):
    config = tiny_model_config({"name": "sgd", "lr": 0.5}, stage_lr=STAGE_LR)
    model = build_model(config.model, num_classes=3)
    optimizer = build_optimizer(model, config.train.optimizer, config.model.backbone)
    names = [group["name"] for group in optimizer.param_groups]
    assert {"backbone.stages.0", "backbone.stages.0.no_decay", "heads", "heads.no_decay"} <= set(names)
    schedule = build_scheduler(optimizer, every_feature(name), 10, 6)
    used = train(schedule, optimizer, range(60))
    heads = names.index("heads")
    for lrs in used:
        for group, lr in zip(optimizer.param_groups, lrs, strict=True):
            assert lr / lrs[heads] == pytest.approx(multiplier_of(group), rel=1e-12), group["name"]
    assert len({lrs[heads] for lrs in used}) > 1  # and the lrs did move (warm-up at least)
    assert schedule.get_last_lr() == [group["lr"] for group in optimizer.param_groups]


# --- optimisers ---

def built(optimizer: dict) -> torch.optim.Optimizer:
    config = tiny_model_config(optimizer)
    return build_optimizer(build_model(config.model, num_classes=3), config.train.optimizer, config.model.backbone)


@pytest.mark.parametrize("optimizer, cls, expected", [
    ({"name": "sgd", "momentum": 0.8}, torch.optim.SGD, {"momentum": 0.8, "nesterov": True}),
    ({"name": "sgd", "momentum": 0.0}, torch.optim.SGD, {"momentum": 0.0, "nesterov": False}),
    ({"name": "sgd", "nesterov": False}, torch.optim.SGD, {"momentum": 0.9, "nesterov": False}),
    ({"name": "adam", "betas": [0.8, 0.99], "eps": 1e-6}, torch.optim.Adam, {"betas": (0.8, 0.99), "eps": 1e-6}),
    ({"name": "adamw", "betas": [0.85, 0.9]}, torch.optim.AdamW, {"betas": (0.85, 0.9), "eps": 1e-8}),
    ({"name": "rmsprop", "momentum": 0.5, "eps": 1e-5}, torch.optim.RMSprop, {"momentum": 0.5, "eps": 1e-5}),
])
def test_each_optimizer_gets_its_hyperparameters(optimizer, cls, expected):
    result = built({"lr": 0.03, "weight_decay": 0.02, **optimizer})
    assert type(result) is cls
    for group in result.param_groups:
        assert group["lr"] == 0.03 and group["weight_decay"] == (0.0 if group["name"].endswith("no_decay") else 0.02)
        assert {key: group[key] for key in expected} == expected


@pytest.mark.parametrize("penalty_name, decay", [("l2", {0.02, 0.0}), ("l1", {0.0}), ("elastic_net", {0.0})])
def test_only_the_l2_penalty_is_the_optimizers_weight_decay(penalty_name, decay):
    result = built({"name": "adamw", "weight_decay": 0.02, "penalty": penalty_name})
    assert {group["weight_decay"] for group in result.param_groups} == decay


def test_bad_optimizer_fields_name_the_field():
    with pytest.raises(ConfigError, match=r"train\.optimizer\.l1_ratio: expected a ratio in \[0, 1\], got 1.5"):
        built({"penalty": "elastic_net", "l1_ratio": 1.5})


@pytest.mark.parametrize("field, value", [("name", "adamm"), ("penalty", "l3")])
def test_an_unknown_optimizer_or_penalty_is_a_config_error_naming_the_field(field, value):
    with pytest.raises(ConfigError, match=rf"train\.optimizer\.{field}: expected one of .*got '{value}'"):
        tiny_model_config({field: value})


# --- weight decay: which parameters, and its default ---

def mobilenet(optimizer: dict, stage_lr: list[float] | None = None):
    """A real backbone with BatchNorm, biased convs (squeeze-excitation) and a biased linear head."""
    config = parse_config({
        "data": {"train": "unused", "val": "unused"},
        "model": {"backbone": {"name": "mobilenet_v3_small", "pretrained": False, "stage_lr": stage_lr},
                  "heads": {"cls": {"type": "classification"}}},
        "train": {"optimizer": optimizer},
    })
    torch.manual_seed(0)
    model = build_model(config.model, num_classes=3)
    return model, build_optimizer(model, config.train.optimizer, config.model.backbone)


def norms_and_biases(model: nn.Module) -> list[nn.Parameter]:
    """Found by layer type, not by shape: what the optimiser must leave alone by default."""
    found = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            found += [module.weight, module.bias]
        elif isinstance(module, (nn.Conv2d, nn.Linear)) and module.bias is not None:
            found.append(module.bias)
    return found


def kernels(model: nn.Module) -> list[nn.Parameter]:
    return [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]


def step_with_zero_gradients(model: nn.Module, optimizer: torch.optim.Optimizer) -> dict[int, torch.Tensor]:
    """One step in which only weight decay can move a parameter; returns the parameters from before it."""
    before = {id(p): p.detach().clone() for p in model.parameters()}
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    return before


def test_norm_layers_and_biases_get_no_weight_decay_by_default():
    model, optimizer = mobilenet({"name": "adamw", "weight_decay": 0.5})
    decay_of = {id(p): group["weight_decay"] for group in optimizer.param_groups for p in group["params"]}
    found = norms_and_biases(model)
    assert any(isinstance(m, nn.Conv2d) and m.bias is not None for m in model.modules())  # the test has conv biases
    assert found and {decay_of[id(p)] for p in found} == {0.0}
    assert {decay_of[id(p)] for p in kernels(model)} == {0.5}


def test_a_step_shrinks_the_conv_and_linear_weights_and_leaves_norms_and_biases_alone():
    model, optimizer = mobilenet({"name": "adamw", "lr": 0.1, "weight_decay": 0.5})
    for p in norms_and_biases(model):  # BatchNorm shifts and most biases start at 0: make decay visible on them
        p.data.fill_(1.0)
    before = step_with_zero_gradients(model, optimizer)
    for p in norms_and_biases(model):
        assert torch.equal(p, before[id(p)])
    for p in kernels(model):  # decoupled decay with a zero gradient: w <- w * (1 - lr * weight_decay)
        torch.testing.assert_close(p, before[id(p)] * (1 - 0.1 * 0.5))


def test_decay_norm_and_bias_decays_every_parameter():
    model, optimizer = mobilenet({"name": "adamw", "lr": 0.1, "weight_decay": 0.5, "decay_norm_and_bias": True})
    for p in norms_and_biases(model):
        p.data.fill_(1.0)
    before = step_with_zero_gradients(model, optimizer)
    for p in model.parameters():
        torch.testing.assert_close(p, before[id(p)] * (1 - 0.1 * 0.5))
    assert [group["name"] for group in optimizer.param_groups] == [*(f"backbone.stages.{i}" for i in range(5)),
                                                                   "heads"]


def test_every_parameter_is_in_exactly_one_group_frozen_ones_included():
    config = tiny_model_config({"name": "sgd"})
    model = build_model(config.model, num_classes=3)
    model.backbone.stages[0].requires_grad_(False)  # frozen now, thawed later without rebuilding the optimiser
    optimizer = build_optimizer(model, config.train.optimizer, config.model.backbone)
    grouped = [p for group in optimizer.param_groups for p in group["params"]]
    assert len(grouped) == len({id(p) for p in grouped}) == len(list(model.parameters()))
    assert {group["name"] for group in optimizer.param_groups if group["params"][0] in
            set(model.backbone.stages[0].parameters())} == {"backbone.stages.0", "backbone.stages.0.no_decay"}


def test_stage_multipliers_are_exact_for_both_parts_of_every_stage():
    stage_lr = [0.01, 0.03, 0.1, 0.3, 0.5]
    model, optimizer = mobilenet({"name": "adamw", "lr": 0.2}, stage_lr=stage_lr)
    schedule = build_scheduler(optimizer, SchedulerConfig(name="cosine", warmup_epochs=0.5), 10, 3)
    for _ in range(7):  # into the cosine decay, past the warm-up
        optimizer.step()
        schedule.step()
    groups = {group["name"]: group for group in optimizer.param_groups}
    heads = groups["heads"]["lr"]
    assert 0 < heads < 0.2 and groups["heads.no_decay"]["lr"] == heads
    for i, m in enumerate(stage_lr):
        assert groups[f"backbone.stages.{i}"]["lr"] == groups[f"backbone.stages.{i}.no_decay"]["lr"]
        assert groups[f"backbone.stages.{i}"]["lr"] / heads == pytest.approx(m, rel=1e-12)
    assert group_lr(optimizer, "heads") == heads


@pytest.mark.parametrize("name, expected", [("adamw", 0.05), ("sgd", 1e-4), ("adam", 1e-4), ("rmsprop", 1e-4)])
def test_an_unspecified_weight_decay_defaults_by_optimizer_and_is_recorded(name, expected):
    config = tiny_model_config({"name": name})
    assert config.train.optimizer.weight_decay == expected
    assert config_to_dict(config)["train"]["optimizer"]["weight_decay"] == expected  # what MLflow and resume see
    assert parse_config(config_to_dict(config)) == config


def test_adamw_by_default_has_a_weight_decay_that_acts():
    assert tiny_model_config({}).train.optimizer.weight_decay > 0.01  # decoupled: lr x this per step


@pytest.mark.parametrize("weight_decay", [1e-4, 0.0, 0.3])
def test_an_explicit_weight_decay_is_kept(weight_decay):
    optimizer = built({"name": "adamw", "weight_decay": weight_decay})
    assert group_weight_decay(optimizer, "heads") == weight_decay
    assert group_weight_decay(optimizer, "heads.no_decay") == 0.0


def group_weight_decay(optimizer: torch.optim.Optimizer, name: str) -> float:
    return next(group["weight_decay"] for group in optimizer.param_groups if group["name"] == name)


# --- penalties ---

def hand_made() -> nn.Module:
    """Decaying weights |w| sum 10, w^2 sum 30; a bias, a BatchNorm and a frozen layer that must not count."""
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2), nn.Linear(2, 1))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, -4.0]]))
        model[0].bias.fill_(5.0)
        model[1].weight.fill_(7.0)
        model[2].weight.fill_(100.0)
    model[2].requires_grad_(False)
    return model


def test_l1_penalty_sums_absolute_weights_without_biases_norms_or_frozen_layers():
    model = hand_made()
    value = penalty(model, OptimizerConfig(penalty="l1", weight_decay=0.1))
    assert value.item() == pytest.approx(1.0)
    value.backward()  # differentiable: the trainer adds it to the loss
    assert torch.allclose(model[0].weight.grad, 0.1 * torch.tensor([[1.0, -1.0], [1.0, -1.0]]))
    assert model[0].bias.grad is None


def test_elastic_net_mixes_l1_and_half_squared_l2():
    value = penalty(hand_made(), OptimizerConfig(penalty="elastic_net", weight_decay=0.1, l1_ratio=0.25))
    assert value.item() == pytest.approx(0.1 * (0.25 * 10 + 0.75 / 2 * 30))


def test_l2_penalty_is_left_to_the_optimizer():
    assert penalty(hand_made(), OptimizerConfig(penalty="l2", weight_decay=0.1)) is None


def test_decay_norm_and_bias_puts_biases_and_norms_in_the_l1_penalty_too():
    config = OptimizerConfig(penalty="l1", weight_decay=0.1, decay_norm_and_bias=True)
    assert penalty(hand_made(), config).item() == pytest.approx(0.1 * (10 + 2 * 5 + 2 * 7))  # + biases, BN scale
