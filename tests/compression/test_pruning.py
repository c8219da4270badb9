"""Structured (torch-pruning) and unstructured (torch.nn.utils.prune) pruning of a MultiTaskModel: every head
type keeps its output contract, runs forward and backward, shrinks, and its pruned checkpoint reloads."""
from __future__ import annotations

import io

import pytest
import torch

from heads.registry import HEADS
from pipeline.compression.pruning import PruneOptions, load_pruned, prune_model, pruned_state
from pipeline.config.schema import parse_config
from pipeline.model import build_model

STRUCTURED = [name for name in HEADS if name not in ("segnet", "pspnet")]   # refused, see the tests below


def config(heads: dict, backbone: str = "resnet18"):
    raw = {"name": "tiny", "data": {"train": "x.json", "val": "y.json", "image_size": 64},
           "model": {"backbone": {"name": backbone, "pretrained": False}, "heads": heads}}
    return parse_config(raw).model


def model_with(head_type: str, backbone: str = "resnet18"):
    """A fresh model with one `head_type` head (task named like the type) and a classification head."""
    torch.manual_seed(0)
    heads = {head_type: {"type": head_type}, "cls": {"type": "classification"}}
    model_config = config(heads, backbone)
    return model_config, build_model(model_config, num_classes=3).eval()


def shapes(model, image) -> dict[str, torch.Size]:
    with torch.no_grad():
        outputs = model(image)
    return {f"{t}.{n}": v.shape for t, h in model.heads.items() for n, v in h.named_outputs(outputs[t]).items()}


def backward(model, image) -> None:
    """Train-mode forward (denoising heads corrupt) and backward through every named output."""
    model.train()
    outputs = model(image)
    loss = sum(v.float().mean() for t, h in model.heads.items() for v in h.named_outputs(outputs[t]).values())
    loss.backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    model.zero_grad(set_to_none=True)
    model.eval()


def reloaded(model_config, pruned):
    """The pruned checkpoint through torch.save / weights-only torch.load into a fresh, unpruned model."""
    buffer = io.BytesIO()
    torch.save(pruned_state(pruned), buffer)
    buffer.seek(0)
    return load_pruned(build_model(model_config, num_classes=3).eval(), torch.load(buffer, weights_only=True))


def check_pruned(model_config, model, options: PruneOptions):
    small, large = torch.rand(2, 3, 64, 64), torch.rand(2, 3, 96, 96)
    contract = shapes(model, small), shapes(model, large)
    report = prune_model(model, small, options)
    assert report.params_after < report.params_before and report.macs_after < report.macs_before
    assert report.pruned_layers > 0 and report.ignored_layers
    assert (shapes(model, small), shapes(model, large)) == contract   # the heads' outputs keep their shapes
    assert model.backbone.channels == [f.shape[1] for f in model.backbone(small)]
    backward(model, small)
    backward(model, large)
    fresh = reloaded(model_config, model)
    assert fresh.backbone.channels == model.backbone.channels
    with torch.no_grad():
        a, b = model(small), fresh(small)
    for task, head in model.heads.items():
        for name, value in head.named_outputs(a[task]).items():
            assert torch.allclose(value, fresh.heads[task].named_outputs(b[task])[name]), (task, name)
    return report


@pytest.mark.parametrize("head_type", STRUCTURED)
def test_structured_pruning_keeps_every_head_type_valid_and_smaller(head_type):
    model_config, model = model_with(head_type)
    report = check_pruned(model_config, model, PruneOptions(amount=0.3))
    assert any(name.startswith(f"heads.{head_type}.") for name in report.ignored_layers)


def test_taylor_importance_prunes_with_a_given_loss_that_must_reach_every_head():
    model_config, model = model_with("yolo")
    small = torch.rand(2, 3, 64, 64)

    def loss_over(tasks):
        def loss_fn(m):
            outputs = m(small)
            return sum(v.mean() for t in tasks for v in m.heads[t].named_outputs(outputs[t]).values())
        return loss_fn

    with pytest.raises(ValueError, match=r"taylor: the loss reaches no parameter of \['heads.cls'\]"):
        prune_model(model, small, PruneOptions(amount=0.3, method="taylor"), loss_fn=loss_over(["yolo"]))
    report = prune_model(model, small, PruneOptions(amount=0.3, method="taylor"), loss_fn=loss_over(["yolo", "cls"]))
    assert report.params_after < report.params_before
    backward(model, small)


def test_depthwise_groups_of_mobilenet_v2_stay_consistent_under_a_unet_head():
    model_config, model = model_with("unet", backbone="mobilenet_v2")
    check_pruned(model_config, model, PruneOptions(amount=0.3, round_to=4))
    depthwise = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.groups > 1]
    assert depthwise and all(m.groups == m.in_channels == m.out_channels for m in depthwise)


def test_segnet_is_refused_by_structured_pruning_and_left_untouched():
    _, model = model_with("segnet")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="'segnet'.*max-pool indices"):
        prune_model(model, torch.rand(1, 3, 64, 64), PruneOptions(amount=0.3))
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_training_only_branches_are_refused_by_structured_pruning():
    _, model = model_with("pspnet")      # its auxiliary classifier runs in training only
    with pytest.raises(ValueError, match=r"heads.pspnet.aux.* run only in training"):
        prune_model(model, torch.rand(1, 3, 64, 64), PruneOptions(amount=0.3))


@pytest.mark.parametrize("head_type", ["yolo", "segnet"])
def test_unstructured_pruning_zeroes_half_of_the_prunable_weights(head_type):
    _, model = model_with(head_type)
    image = torch.rand(2, 3, 64, 64)
    contract = shapes(model, image)
    report = prune_model(model, image, PruneOptions(amount=0.5, structured=False))
    assert report.sparsity == pytest.approx(0.5, abs=0.01)
    assert report.params_after == report.params_before   # zeros, not removed channels
    assert shapes(model, image) == contract
    modules = dict(model.named_modules())
    assert all(bool((modules[name].weight != 0).all()) for name in report.ignored_layers)
    assert not any(name.endswith(("weight_orig", "weight_mask")) for name, _ in model.named_parameters())
    assert not any(name.endswith("weight_mask") for name, _ in model.named_buffers())


@pytest.mark.parametrize("amount", [0.0, 1.0, -0.2, 1.5])
def test_amount_outside_the_open_unit_interval_is_refused(amount):
    _, model = model_with("classification")
    with pytest.raises(ValueError, match="amount"):
        prune_model(model, torch.rand(1, 3, 64, 64), PruneOptions(amount=amount))
