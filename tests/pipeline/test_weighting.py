"""Loss-weighting strategies on toy problems small enough to check by hand, single process.

The toy: a tiny shared MLP (`backbone`) and one linear head per task, MSE losses; a task's targets scaled
10x make its loss ~100x.
"""
from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from pipeline.config.schema import parse_config
from pipeline.runtime.distributed import DistInfo
from pipeline.model import build_model
from pipeline.config.typed import ConfigError
from pipeline.weighting import (STRATEGIES, BackwardContext, WeightingConfig, backward_context, build_weighting,
                                last_layer_parameters, parse_weighting, weighting_to_dict)
from pipeline.weighting.gradnorm import GradNorm
from pipeline.weighting.pcgrad import project_conflicting
from support import make_batch

REPO = Path(__file__).resolve().parents[2]
NAMES = list(STRATEGIES)


class Toy(nn.Module):
    def __init__(self, tasks: str = "ab", seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.backbone = nn.Sequential(nn.Linear(4, 16), nn.Tanh())
        self.heads = nn.ModuleDict({task: nn.Linear(16, 1) for task in tasks})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        features = self.backbone(x)
        return {task: head(features).squeeze(-1) for task, head in self.heads.items()}


def toy_data(count: int = 64, scales: tuple[float, ...] = (1.0, 10.0), noise_only: bool = False):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(count, 4, generator=g)
    signals = [torch.sin(x.sum(1)), torch.cos(x[:, 0]), torch.sin(x[:, 1])]
    targets = {}
    for task, scale, signal in zip("abc", scales, signals):
        targets[task] = scale * (torch.randn(count, generator=g) if noise_only else signal)
    return x, targets


def toy_losses(model: Toy, x: torch.Tensor, targets: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {task: F.mse_loss(out, targets[task]) for task, out in model(x).items()}


def strategy(name: str, tasks: str = "ab", **options):
    config = WeightingConfig(name, STRATEGIES[name].Options(**options))
    return build_weighting(config, list(tasks), {task: 1.0 for task in tasks})


def plain_scaler() -> torch.amp.GradScaler:
    return torch.amp.GradScaler("cpu", enabled=False)


def backward_step(weighting, model, micro_batches, scaler=None) -> BackwardContext:
    """One optimiser step's backward: each (x, targets) a micro-batch, then finish()."""
    ctx = backward_context(model, scaler or plain_scaler(), len(micro_batches), DistInfo())
    for x, targets in micro_batches:
        weighting.backward(toy_losses(model, x, targets), ctx)
    weighting.finish(ctx)
    return ctx


def sgd_step(weighting, model, data, lr: float = 0.05) -> None:
    optimizer = torch.optim.SGD(list(model.parameters()) + weighting.extra_parameters(), lr=lr)
    optimizer.zero_grad()
    backward_step(weighting, model, [data])
    optimizer.step()
    weighting.after_step()


def gradients(weighting, model) -> dict[str, torch.Tensor]:
    named = {**dict(model.named_parameters()), **{f"w.{k}": v for k, v in weighting.named_parameters()}}
    return {name: p.grad.clone() for name, p in named.items() if p.grad is not None}


# ---- every strategy ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_loss_scaling_and_micro_batches_give_the_gradients_of_one_plain_backward(name):
    """AMP and accumulation safety: 2 micro-batches under a real GradScaler (scale 1024), unscaled by it,
    equal one unscaled backward over the whole batch (equal halves: the mean of means is the mean)."""
    x, targets = toy_data(32)
    plain_model, plain = Toy(), strategy(name)
    backward_step(plain, plain_model, [(x, targets)])

    model, weighting = Toy(), strategy(name)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    halves = [(x[:16], {t: v[:16] for t, v in targets.items()}), (x[16:], {t: v[16:] for t, v in targets.items()})]
    backward_step(weighting, model, halves, scaler)
    optimizer = torch.optim.SGD(list(model.parameters()) + weighting.extra_parameters(), lr=0.1)
    scaler.unscale_(optimizer)

    expected, got = gradients(plain, plain_model), gradients(weighting, model)
    assert expected.keys() == got.keys()
    for key in expected:
        assert torch.allclose(got[key], expected[key], rtol=1e-4, atol=1e-6), key


@pytest.mark.parametrize("name", NAMES)
def test_a_batch_without_a_tasks_labels_gives_it_zero_loss_and_finite_gradients(name):
    """A real model: the classification head's labels are all missing, the autoencoder's target is there."""
    config = parse_config({"data": {"train": "x", "val": "x"},
                           "model": {"backbone": {"name": "lenet5"},
                                     "heads": {"cls": {"type": "classification"},
                                               "recon": {"type": "ae", "decoder_channels": [8, 8]}}}})
    torch.manual_seed(0)
    model = build_model(config.model, num_classes=3)
    weighting = build_weighting(WeightingConfig(name), ["cls", "recon"], {"cls": 1.0, "recon": 1.0})
    batch = make_batch(size=32, batch=4)
    batch.has_label[:] = False
    before = weighting.weights()
    optimizer = torch.optim.SGD(list(model.parameters()) + weighting.extra_parameters(), lr=0.01)
    for _ in range(2):
        optimizer.zero_grad()
        ctx = backward_context(model, plain_scaler(), 1, DistInfo())
        outputs = model(batch.image)
        losses = {task: sum(head.loss(outputs[task], batch).values()) for task, head in model.heads.items()}
        assert losses["cls"].item() == 0 and losses["recon"].item() > 0
        weighting.backward(losses, ctx)
        weighting.finish(ctx)
        grads = [p.grad for p in model.parameters() if p.grad is not None] + \
                [p.grad for p in weighting.extra_parameters()]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        optimizer.step()
        weighting.after_step()
    weighting.epoch_end({"cls": 0.0, "recon": 0.2})
    weighting.epoch_end({"cls": 0.0, "recon": 0.1})
    after = weighting.weights()
    assert all(math.isfinite(w) and w > 0 for w in after.values())
    if name == "uncertainty":   # an absent task's log-variance is not pulled by the 0.5 s term
        assert after["cls"] == pytest.approx(before["cls"])


@pytest.mark.parametrize("name", NAMES)
def test_state_dict_round_trip_resumes_exactly(name, tmp_path):
    """Save after 3 steps (and 3 epochs), restore into a fresh strategy: same weights now and after a step."""
    x, targets = toy_data(16, scales=(1.0, 10.0, 3.0))
    model, weighting = Toy("abc"), strategy(name, "abc")
    for epoch in range(3):
        sgd_step(weighting, model, (x, targets))
        weighting.epoch_end({t: loss.item() for t, loss in toy_losses(model, x, targets).items()})
    torch.save(weighting.state_dict(), tmp_path / "weighting.pt")
    restored = strategy(name, "abc")
    restored.load_state_dict(torch.load(tmp_path / "weighting.pt", weights_only=True))
    restored_model = copy.deepcopy(model)
    assert restored.weights() == weighting.weights()

    sgd_step(weighting, model, (x, targets))
    sgd_step(restored, restored_model, (x, targets))
    assert restored.weights() == weighting.weights()
    for (key, p), q in zip(model.named_parameters(), restored_model.parameters()):
        assert torch.equal(p, q), key


def test_learnable_weights_get_their_own_optimiser_group_without_weight_decay():
    assert strategy("static").param_group(0.002) is None
    group = strategy("gradnorm", lr=0.01).param_group(0.002)
    assert group["lr"] == 0.01 and group["weight_decay"] == 0.0 and len(group["params"]) == 1
    assert strategy("uncertainty").param_group(0.002)["lr"] == 0.002


def test_the_last_shared_layer_is_the_last_one_with_a_weight_matrix():
    backbone = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 8, 1), nn.BatchNorm2d(8), nn.ReLU())
    assert last_layer_parameters(backbone) == [backbone[2].weight, backbone[2].bias]
    backbone[2].requires_grad_(False)
    assert last_layer_parameters(backbone) == [backbone[0].weight, backbone[0].bias]


# ---- uncertainty ---------------------------------------------------------------------------------------


def test_uncertainty_weights_move_to_the_inverse_loss_scale():
    """Pure-noise targets, the second 10x: its loss stays ~100x larger whatever the model does. At the
    optimum of 0.5 exp(-s) L + 0.5 s, exp(-s) = 1 / L, so lambda_b / lambda_a must reach L_a / L_b."""
    x, targets = toy_data(64, noise_only=True)
    model, weighting = Toy(), strategy("uncertainty")
    assert weighting.weights()["a"] == weighting.weights()["b"]
    optimizer = torch.optim.Adam([{"params": model.parameters(), "lr": 0.01},
                                  {"params": weighting.extra_parameters(), "lr": 0.3}])
    for _ in range(200):
        optimizer.zero_grad()
        backward_step(weighting, model, [(x, targets)])
        optimizer.step()
    losses = {t: loss.item() for t, loss in toy_losses(model, x, targets).items()}
    assert losses["b"] / losses["a"] > 50
    ratio = weighting.weights()["b"] / weighting.weights()["a"]
    assert ratio == pytest.approx(losses["a"] / losses["b"], rel=0.25)


def test_uncertainty_forms_and_starting_point():
    weighting = strategy("uncertainty", forms={"a": "classification"})
    assert weighting.weights() == pytest.approx({"a": 1.0, "b": 1.0})    # starts at the static weights
    with torch.no_grad():
        weighting.log_variance.fill_(math.log(2.0))
    assert weighting.weights() == pytest.approx({"a": 0.5, "b": 0.25})   # exp(-s) and 0.5 exp(-s)
    with pytest.raises(ConfigError, match="model.weighting.forms.c: no such task"):
        strategy("uncertainty", forms={"c": "regression"})


# ---- dwa -----------------------------------------------------------------------------------------------


def test_dwa_follows_the_formula_on_a_hand_made_history():
    weighting = strategy("dwa", temperature=2.0)
    weighting.epoch_end({"a": 1.0, "b": 2.0})
    assert weighting.weights() == {"a": 1.0, "b": 1.0}          # the first two epochs: static weights
    weighting.epoch_end({"a": 0.5, "b": 1.8})                  # rates 0.5 and 0.9
    ea, eb = math.exp(0.5 / 2), math.exp(0.9 / 2)
    assert weighting.weights() == pytest.approx({"a": 2 * ea / (ea + eb), "b": 2 * eb / (ea + eb)})
    weighting.epoch_end({"a": 0.4, "b": 0.9})                  # rates 0.8 and 0.5: now a lags
    ea, eb = math.exp(0.8 / 2), math.exp(0.5 / 2)
    assert weighting.weights() == pytest.approx({"a": 2 * ea / (ea + eb), "b": 2 * eb / (ea + eb)})
    assert weighting.weights()["a"] > 1 > weighting.weights()["b"]


def test_dwa_gives_a_task_absent_for_an_epoch_the_neutral_rate():
    weighting = strategy("dwa", temperature=2.0)
    weighting.epoch_end({"a": 0.0, "b": 2.0})
    weighting.epoch_end({"a": 0.5, "b": 2.0})                  # a: 0.5 / 0 is taken as rate 1, like b
    assert weighting.weights() == pytest.approx({"a": 1.0, "b": 1.0})


# ---- gradnorm ------------------------------------------------------------------------------------------


def gradient_norm_ratio(weighting, model, x, targets) -> float:
    """G_b / G_a with G_t = w_t ||dL_t/dW|| on the last shared layer."""
    losses, params = toy_losses(model, x, targets), last_layer_parameters(model.backbone)
    norms = [torch.cat([g.flatten() for g in torch.autograd.grad(losses[t], params, retain_graph=True)]).norm()
             for t in "ab"]
    weights = weighting.weights()
    return float(weights["b"] * norms[1] / (weights["a"] * norms[0]))


@pytest.mark.parametrize("alpha, shrink", [(0.0, 0.25), (1.5, 0.5)])
def test_gradnorm_drives_the_gradient_norms_of_two_scales_toward_each_other(alpha, shrink):
    """b's targets are 10x a's: its gradient norm starts ~27x larger. alpha 0 targets equal norms, so the log
    ratio must shrink to a quarter; alpha 1.5 also pulls toward equal training rates: to a half."""
    x, targets = toy_data(64)
    model, weighting = Toy(), strategy("gradnorm", alpha=alpha)
    start = gradient_norm_ratio(weighting, model, x, targets)
    model_optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    weight_optimizer = torch.optim.SGD(weighting.extra_parameters(), lr=0.003)
    for _ in range(80):
        model_optimizer.zero_grad()
        weight_optimizer.zero_grad()
        backward_step(weighting, model, [(x, targets)])
        model_optimizer.step()
        weight_optimizer.step()
        weighting.after_step()
    end = gradient_norm_ratio(weighting, model, x, targets)
    assert start > 10
    assert abs(math.log(end)) < shrink * abs(math.log(start))
    assert sum(weighting.weights().values()) == pytest.approx(2.0)     # renormalised to the static sum


def test_gradnorm_sets_the_initial_loss_at_a_tasks_first_step_with_labels():
    weighting = GradNorm(["a", "b"], {"a": 1.0, "b": 1.0})
    model = Toy()
    x, targets = toy_data(8)
    ctx = backward_context(model, plain_scaler(), 1, DistInfo())
    losses = toy_losses(model, x, targets)
    weighting.backward({"a": losses["a"], "b": losses["b"] * 0.0}, ctx)
    weighting.finish(ctx)
    assert weighting.initial_losses[0] == pytest.approx(losses["a"].item()) and weighting.initial_losses[1] == 0
    assert torch.equal(weighting.task_weights.grad, torch.zeros(2))  # one active task: nothing to balance


# ---- pcgrad --------------------------------------------------------------------------------------------


class Linear(nn.Module):
    """Shared parameter p; task losses a.p and b.p, so the task gradients are exactly a and b."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Module()
        self.backbone.p = nn.Parameter(torch.zeros(3))
        self.heads = nn.ModuleDict()


def pcgrad_shared_gradient(a: list[float], b: list[float]) -> torch.Tensor:
    model, weighting = Linear(), strategy("pcgrad")
    ctx = backward_context(model, plain_scaler(), 1, DistInfo())
    p = model.backbone.p
    weighting.backward({"a": (torch.tensor(a) * p).sum(), "b": (torch.tensor(b) * p).sum()}, ctx)
    weighting.finish(ctx)
    return p.grad


def test_pcgrad_removes_the_conflicting_component():
    a, b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([-1.0, 1.0, 0.0])      # a.b = -1 < 0
    projected = project_conflicting(torch.stack([a, b]), torch.Generator().manual_seed(0))
    assert projected[0] @ b == pytest.approx(0.0, abs=1e-7)
    assert projected[1] @ a == pytest.approx(0.0, abs=1e-7)
    assert torch.allclose(projected, torch.tensor([[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]]))
    assert torch.allclose(pcgrad_shared_gradient(a.tolist(), b.tolist()), torch.tensor([0.5, 1.5, 0.0]))


def test_pcgrad_leaves_non_conflicting_gradients_untouched():
    a, b = [1.0, 0.0, 2.0], [1.0, 1.0, 0.0]                                    # a.b = 1 > 0
    assert torch.equal(pcgrad_shared_gradient(a, b), torch.tensor(a) + torch.tensor(b))
    orthogonal = torch.tensor([[1.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    assert torch.equal(project_conflicting(orthogonal, torch.Generator()), orthogonal)


def test_pcgrad_with_a_zero_gradient_does_not_divide_by_zero():
    assert torch.equal(pcgrad_shared_gradient([0.0, 0.0, 0.0], [-1.0, 2.0, 0.0]), torch.tensor([-1.0, 2.0, 0.0]))


def test_pcgrad_keeps_a_non_finite_gradient_non_finite():
    grads = torch.tensor([[1.0, float("nan"), 0.0], [-1.0, 1.0, 0.0]])
    assert not torch.isfinite(project_conflicting(grads, torch.Generator()).sum(0)).all()


def test_pcgrad_gives_the_heads_the_gradient_of_the_weighted_sum():
    x, targets = toy_data(16)
    model, weighting = Toy(), strategy("pcgrad")
    backward_step(weighting, model, [(x, targets)])
    reference = Toy()
    sum(toy_losses(reference, x, targets).values()).backward()
    for p, q in zip(model.heads.parameters(), reference.heads.parameters()):
        assert torch.allclose(p.grad, q.grad)


# ---- config --------------------------------------------------------------------------------------------


def test_weighting_config_validates_the_name_and_each_strategys_own_options():
    assert parse_weighting(None) == WeightingConfig("static", STRATEGIES["static"].Options())
    config = parse_weighting({"name": "dwa", "temperature": 3}, "x.yaml")
    assert config.options.temperature == 3.0
    assert parse_weighting(weighting_to_dict(config)) == config
    with pytest.raises(ConfigError, match="x.yaml: model.weighting.name: unknown strategy 'gradnrom'"):
        parse_weighting({"name": "gradnrom"}, "x.yaml")
    with pytest.raises(ConfigError, match="model.weighting.alpah: unknown key. Did you mean 'alpha'"):
        parse_weighting({"name": "gradnorm", "alpah": 1.0}, "x.yaml")
    with pytest.raises(ConfigError, match="model.weighting.alpha: unknown key"):   # dwa has no alpha
        parse_weighting({"name": "dwa", "alpha": 1.0}, "x.yaml")


@pytest.mark.parametrize("name", NAMES)
def test_each_strategy_has_an_example_config_that_validates(name):
    path = REPO / "configs" / "weighting" / f"{name}.yaml"
    raw = yaml.safe_load(path.read_text())
    block = raw["model"].pop("weighting")       # until model.weighting is part of pipeline/config/schema.py
    assert parse_weighting(block, str(path)).name == name
    config = parse_config(raw, str(path))
    build_weighting(parse_weighting(block, str(path)), list(config.model.heads),
                    {task: head.weight for task, head in config.model.heads.items()})
