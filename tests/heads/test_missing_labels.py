"""Partially labelled batches (dataset mixtures): each head learns only from the samples that have its labels.

A head whose labels are all missing gives exactly zero, stays in the graph (DDP expects every parameter to
get a gradient) and never produces a NaN gradient; a partly labelled batch gives the loss of its labelled
samples alone. Reconstruction heads have no labels to miss: their target is the image itself.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch

import backbones
from datasets.sample import IGNORE_INDEX, Batch
from heads.base import zero_loss
from heads.registry import HEADS, build
from pipeline.model import MultiTaskModel
from support import make_batch, without_targets

NUM_CLASSES = 3
EVERY_SEGMENTATION_TERM = {"focal_weight": 1.0, "lovasz_weight": 1.0}  # ce and dice are on by default
LABELLED_HEADS = [
    ("classification", {}),
    ("classification", {"multi_label": True}),
    ("classification", {"aux_stages": [2, 3]}),
    ("fcn", EVERY_SEGMENTATION_TERM),
    ("unet", EVERY_SEGMENTATION_TERM),
    ("segnet", EVERY_SEGMENTATION_TERM),
    ("pspnet", EVERY_SEGMENTATION_TERM),
    ("deeplabv3", EVERY_SEGMENTATION_TERM),
    ("deeplabv3plus", EVERY_SEGMENTATION_TERM),
    ("yolo", {}),
    ("yolo_v1", {}),
    ("ssd", {}),
]
RECONSTRUCTION_HEADS = ["ae", "dae", "vae"]
CASE_IDS = [f"{head}{'-' + '-'.join(options) if options else ''}" for head, options in LABELLED_HEADS]


def test_every_registered_head_is_covered():
    assert {head for head, _ in LABELLED_HEADS} | set(RECONSTRUCTION_HEADS) == set(HEADS)


def model_with(head_type: str, **options) -> MultiTaskModel:
    torch.manual_seed(0)
    backbone = backbones.build("resnet18", pretrained=False)
    head_options = dataclasses.replace(HEADS[head_type].Options(), **options)
    return MultiTaskModel(backbone, {"task": build(head_type, backbone.channels, backbone.strides, NUM_CLASSES,
                                                   head_options)})


def labelled_batch() -> Batch:
    batch = make_batch(size=64, batch=2)
    batch.multi_label = torch.nn.functional.one_hot(batch.label, NUM_CLASSES).float()
    batch.has_multi_label = torch.ones(2, dtype=torch.bool)
    return batch


def task_loss(model: MultiTaskModel, batch: Batch) -> dict[str, torch.Tensor]:
    return model.heads["task"].loss(model(batch.image)["task"], batch)


@pytest.mark.parametrize("head_type, options", LABELLED_HEADS, ids=CASE_IDS)
def test_all_labels_missing_gives_exact_zero_and_a_finite_gradient_for_every_head_parameter(head_type, options):
    model = model_with(head_type, **options).train()
    terms = task_loss(model, without_targets(labelled_batch()))
    loss = torch.stack(list(terms.values())).sum()
    loss.backward()
    assert all(term.item() == 0.0 for term in terms.values()), terms
    head_grads = {name: p.grad for name, p in model.heads["task"].named_parameters()}
    assert all(grad is not None for grad in head_grads.values()), [n for n, g in head_grads.items() if g is None]
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def first_only(batch: Batch) -> Batch:
    return Batch(
        image=batch.image[:1], image_id=batch.image_id[:1], orig_size=batch.orig_size[:1],
        label=batch.label[:1], has_label=batch.has_label[:1], mask=batch.mask[:1], has_mask=batch.has_mask[:1],
        boxes=batch.boxes[:1], box_labels=batch.box_labels[:1], has_boxes=batch.has_boxes[:1],
        multi_label=batch.multi_label[:1], has_multi_label=batch.has_multi_label[:1],
    )


@pytest.mark.parametrize("head_type, options", LABELLED_HEADS, ids=CASE_IDS)
def test_a_partly_labelled_batch_gives_the_loss_of_its_labelled_samples_alone(head_type, options):
    model = model_with(head_type, **options).eval()  # eval: each sample's outputs independent of the batch
    batch = labelled_batch()
    # The second sample keeps real-looking targets; only its has_* flags say they are missing.
    for flag in ("has_label", "has_mask", "has_boxes", "has_multi_label"):
        getattr(batch, flag)[1] = False
    with torch.no_grad():
        partial, alone = task_loss(model, batch), task_loss(model, first_only(batch))
    assert partial.keys() == alone.keys()
    for name in partial:
        assert torch.allclose(partial[name], alone[name], rtol=1e-4, atol=1e-6), (name, partial[name], alone[name])
    assert any(term.item() > 0 for term in partial.values())


@pytest.mark.parametrize("head_type", RECONSTRUCTION_HEADS)
def test_reconstruction_heads_learn_from_images_without_any_labels(head_type):
    model = model_with(head_type).train()
    terms = task_loss(model, without_targets(labelled_batch()))
    loss = torch.stack(list(terms.values())).sum()
    loss.backward()
    assert torch.isfinite(loss) and loss.item() > 0
    backbone_grads = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert backbone_grads and all(torch.isfinite(g).all() for g in backbone_grads)
    assert any(g.abs().sum() > 0 for g in backbone_grads)


def test_zero_loss_of_large_half_precision_outputs_is_zero_not_nan():
    # Under fp16 autocast a [B, K, H, W] logit map easily sums past fp16's 65504: inf * 0 would be NaN.
    outputs = torch.full((100_000,), 2.0, dtype=torch.float16, requires_grad=True)
    loss = zero_loss(outputs)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(outputs.grad).all()


def test_yolo_without_boxes_is_zero_on_large_half_precision_outputs():
    # Its zero keeps every level's raw output [B, A, H, W, 5 + C] in the graph: at 64 px already > 65504 here.
    model = model_with("yolo")
    batch = without_targets(labelled_batch())
    outputs = model(batch.image)["task"]
    levels = [torch.full_like(level, -100.0, dtype=torch.float16).requires_grad_() for level in outputs.levels]
    terms = model.heads["task"].loss(dataclasses.replace(outputs, levels=levels), batch)
    torch.stack(list(terms.values())).sum().backward()
    assert all(term.item() == 0.0 for term in terms.values()), terms
    assert all(torch.isfinite(level.grad).all() for level in levels)


def test_a_segmentation_head_whose_masks_are_all_ignore_is_zero_on_large_half_precision_logits():
    head = model_with("unet", **EVERY_SEGMENTATION_TERM).heads["task"]
    batch = labelled_batch()
    batch.mask.fill_(IGNORE_INDEX)  # annotated, but no pixel labelled: every mean would be 0/0
    logits = torch.full((2, NUM_CLASSES + 1, 64, 64), 8.0, dtype=torch.float16, requires_grad=True)
    terms = head.loss(logits, batch)
    torch.stack(list(terms.values())).sum().backward()
    assert all(term.item() == 0.0 for term in terms.values()), terms
    assert torch.isfinite(logits.grad).all()
