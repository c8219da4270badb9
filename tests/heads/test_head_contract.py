"""Every registered head honours the Head contract on two real backbones."""
from __future__ import annotations

import pytest
import torch

import backbones
from support import make_batch, without_targets
from heads.registry import HEADS, build
from pipeline.model import MultiTaskModel

NUM_CLASSES = 3


def model_with(head_type: str, backbone_name: str = "resnet18") -> MultiTaskModel:
    torch.manual_seed(0)
    backbone = backbones.build(backbone_name, pretrained=False)
    head = build(head_type, backbone.channels, backbone.strides, NUM_CLASSES, HEADS[head_type].Options())
    return MultiTaskModel(backbone, {"task": head})


def expected_shape(kind: str, batch: int, size: int):
    return {
        "classification": (batch, NUM_CLASSES),
        "segmentation": (batch, NUM_CLASSES + 1, size, size),
    }.get(kind)


@pytest.mark.parametrize("backbone_name", ["resnet18", "mobilenet_v2"])
@pytest.mark.parametrize("head_type", sorted(HEADS))
def test_output_and_decoded_shapes(head_type, backbone_name):
    if HEADS[head_type].needs_pool_indices and backbone_name == "mobilenet_v2":
        with pytest.raises(ValueError, match="no nn.MaxPool2d"):  # unpooling heads refuse a backbone without pools
            model_with(head_type, backbone_name)
        return
    model = model_with(head_type, backbone_name).eval()
    batch = make_batch(size=64, batch=2)
    with torch.no_grad():
        outputs = model(batch.image)["task"]
        head = model.heads["task"]
        decoded = head.decode(outputs)
    shape = expected_shape(head.kind, 2, 64)
    if shape is not None:
        assert tuple(outputs.shape) == shape
    if head.kind == "segmentation":
        assert tuple(decoded.shape) == (2, 64, 64) and decoded.dtype == torch.long
    if head.kind == "reconstruction":  # raw outputs may hold more (a VAE's mu and logvar); decode gives the images
        assert tuple(decoded.shape) == (2, 3, 64, 64) and 0 <= decoded.min() and decoded.max() <= 1
    if head.kind == "detection":
        assert len(decoded) == 2 and all(set(d) >= {"boxes", "scores", "labels"} for d in decoded)


@pytest.mark.parametrize("head_type", sorted(HEADS))
def test_loss_falls_when_overfitting_one_batch(head_type):
    model = model_with(head_type).train()
    batch = make_batch(size=64, batch=2)
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    losses = []
    for _ in range(40):
        terms = model.heads["task"].loss(model(batch.image)["task"], batch)
        loss = torch.stack(list(terms.values())).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], f"{head_type}: loss {losses[0]:.4f} -> {losses[-1]:.4f}"


# A reconstruction head's target is the input image, which no batch lacks.
@pytest.mark.parametrize("head_type", sorted(h for h in HEADS if HEADS[h].kind != "reconstruction"))
def test_missing_targets_give_zero_loss_and_finite_gradients(head_type):
    model = model_with(head_type).train()
    batch = without_targets(make_batch(size=64, batch=2))
    terms = model.heads["task"].loss(model(batch.image)["task"], batch)
    loss = torch.stack(list(terms.values())).sum()
    loss.backward()
    assert loss.item() == 0.0
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_partly_missing_labels_are_ignored_not_counted_as_class_zero():
    model = model_with("classification").eval()
    batch = make_batch(size=64, batch=2)
    outputs = model(batch.image)["task"]
    full = model.heads["task"].loss(outputs[:1], make_batch(size=64, batch=1))["ce"]
    batch.has_label[1] = False
    batch.label[1] = 0
    partial = model.heads["task"].loss(outputs, batch)["ce"]
    assert torch.allclose(full, partial)
