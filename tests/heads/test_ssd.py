"""SSDHead: default boxes by the paper's formula, matching, hard negative mining, decoding with class-wise NMS,
the loss contract, overfitting one batch, a multi-task model, and SSD as a distillation teacher."""
import math
from pathlib import Path

import pytest
import torch
from torch import nn
from torchvision.ops import box_iou

from backbones import registry as backbone_registry
from backbones.base import Backbone
from datasets.image_io import ImagePolicy
from heads.box_targets import flatten_ground_truth
from heads.registry import HEADS
from heads.ssd import SSDHead, SSDOptions, SSDOutputs
from heads.ssd_matching import IGNORED, box_coder, hard_negatives, match_priors
from pipeline.compression.distill_losses import KINDS, HeadOutputs
from pipeline.config.schema import parse_config
from pipeline.inference.export import export_model
from pipeline.inference.onnx_runner import OnnxRunner
from pipeline.inference.trained import TrainedModel
from pipeline.model import build_model
from support import assert_finds_the_boxes, detection_batch, multitask_backward, train_head

CHANNELS, STRIDES = [8, 12, 16, 24, 32], [2, 4, 8, 16, 32]
NUM_CLASSES = 3
HIGH, LOW = 12.0, -12.0  # logits that mean "certain yes" / "certain no"


def fake_features(batch_size: int, size: int | tuple[int, int]) -> list[torch.Tensor]:
    height, width = (size, size) if isinstance(size, int) else size
    return [torch.randn(batch_size, c, height // s, width // s) for c, s in zip(CHANNELS, STRIDES)]


def make_head(**options) -> SSDHead:
    """In eval mode: BatchNorm in training mode cannot take the one value per channel of a 1 x 1 map of one image."""
    torch.manual_seed(0)
    return SSDHead(CHANNELS, STRIDES, NUM_CLASSES, SSDOptions(**{"extra_channels": 16, **options})).eval()


def empty_outputs(head: SSDHead, batch_size: int, size: int) -> SSDOutputs:
    """Raw outputs that say "background" with certainty everywhere, offsets 0 (the priors themselves)."""
    with torch.no_grad():
        outputs = head(fake_features(batch_size, size), torch.zeros(batch_size, 3, size, size))
    for offsets, logits in zip(outputs.offsets, outputs.logits):
        offsets.zero_()
        logits.fill_(LOW)
        logits[..., 0] = HIGH
    return outputs


def flat_view(outputs: SSDOutputs) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per prior index of the flattened order, the writable [4] offsets and [C + 1] logits rows (image 0)."""
    offsets = [row for level in outputs.offsets for row in level[0].reshape(-1, 4)]
    logits = [row for level in outputs.logits for row in level[0].reshape(-1, NUM_CLASSES + 1)]
    return offsets, logits


def place(outputs: SSDOutputs, image: int, prior: int, encoded: torch.Tensor, label: int) -> None:
    """Make one default box of one image say `encoded` offsets, class `label`, with certainty."""
    sizes = [level.shape[1] * level.shape[2] * level.shape[3] for level in outputs.offsets]
    for offsets, logits, size in zip(outputs.offsets, outputs.logits, sizes):
        if prior < size:
            offsets[image].view(-1, 4)[prior] = encoded
            row = logits[image].view(-1, NUM_CLASSES + 1)[prior]
            row.fill_(LOW)
            row[label + 1] = HIGH
            return
        prior -= size
    raise IndexError("prior index beyond the outputs")


def paper_priors(grids: list[tuple[int, int]], size: tuple[int, int], ratios: list[list[float]],
                 s_min: float, s_max: float) -> torch.Tensor:
    """The paper's section 2.2 written out: per map, cell, then box; xyxy px, widths clipped to the image."""
    m = len(grids)
    scales = [s_min + (s_max - s_min) * k / (m - 1) for k in range(m)] + [1.0]
    height, width = size
    boxes = []
    for k, (rows, cols) in enumerate(grids):
        shapes = [(scales[k], scales[k]), (math.sqrt(scales[k] * scales[k + 1]),) * 2]
        for r in ratios[k]:
            shapes += [(scales[k] * math.sqrt(r), scales[k] / math.sqrt(r)),
                       (scales[k] / math.sqrt(r), scales[k] * math.sqrt(r))]
        for i in range(rows):
            for j in range(cols):
                cx, cy = (j + 0.5) / cols, (i + 0.5) / rows
                for w, h in shapes:
                    w, h = min(w, 1.0), min(h, 1.0)
                    boxes.append([(cx - w / 2) * width, (cy - h / 2) * height, (cx + w / 2) * width,
                                  (cy + h / 2) * height])
    return torch.tensor(boxes)


# ---- default boxes ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(96, 96), (64, 96)])
def test_default_boxes_follow_the_papers_formula(size):
    head = make_head()
    outputs = head(fake_features(1, size), torch.zeros(1, 3, *size))
    grids = [tuple(level.shape[1:3]) for level in outputs.offsets]
    # strides 8, 16, 32 of the backbone, then three padded stride-2 blocks
    assert grids == [(size[0] // 8, size[1] // 8), (size[0] // 16, size[1] // 16), (size[0] // 32, size[1] // 32),
                     (math.ceil(size[0] / 64), math.ceil(size[1] / 64)), (1, 1), (1, 1)]
    ssd300 = [[2.0], [2.0, 3.0], [2.0, 3.0], [2.0, 3.0], [2.0, 3.0], [2.0]]
    assert head.boxes_per_location == [4, 6, 6, 6, 6, 4]
    assert head.default_boxes.scales == pytest.approx([0.2, 0.34, 0.48, 0.62, 0.76, 0.9, 1.0])
    priors = head.priors(outputs)
    assert priors.shape[0] == sum(rows * cols * a for (rows, cols), a in zip(grids, head.boxes_per_location))
    torch.testing.assert_close(priors, paper_priors(grids, size, ssd300, 0.2, 0.9), rtol=0, atol=1e-3)


def test_tiny_images_keep_every_map_at_least_one_cell():
    head = make_head(extra_layers=4)
    outputs = head(fake_features(2, 32), torch.zeros(2, 3, 32, 32))
    assert [tuple(level.shape[1:3]) for level in outputs.offsets] == [(4, 4), (2, 2), (1, 1), (1, 1), (1, 1), (1, 1),
                                                                      (1, 1)]
    assert all(len(d["boxes"]) <= 100 for d in head.decode(outputs))


def test_bad_options_are_refused_naming_the_field():
    with pytest.raises(ValueError, match=r"stride 64.*\[2, 4, 8, 16, 32\]"):
        make_head(strides=[16, 32, 64])
    with pytest.raises(ValueError, match="aspect_ratios has 2 entries for 6 maps"):
        make_head(aspect_ratios=[[2.0], [2.0]])
    with pytest.raises(ValueError, match="aspect_ratios must all be > 1"):
        SSDOptions(aspect_ratios=[[0.5]] * 6)
    with pytest.raises(ValueError, match="min_scale and max_scale"):
        SSDOptions(min_scale=0.9, max_scale=0.2)


# ---- matching and encoding ----------------------------------------------------------------------------------

def test_every_box_gets_its_best_prior_and_priors_over_the_threshold_are_positives():
    priors = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 11], [50, 50, 60, 60], [20, 20, 40, 40]], dtype=torch.float32)
    # box 0 overlaps priors 0 and 1 above 0.5; box 1 overlaps prior 2 at 100/289 only; image 1 has no box
    batch = detection_batch([[[0, 0, 10, 10.5], [45, 45, 62, 62]], []], [[2, 0], []], [True, True])
    targets = match_priors(priors, flatten_ground_truth(batch, torch.device("cpu")), 2, iou_threshold=0.5)
    assert box_iou(batch.boxes[0][1:], priors).max() < 0.5
    assert targets.labels.tolist() == [[3, 3, 1, 0], [0, 0, 0, 0]]
    decoded = box_coder().decode_single(targets.encoded[0, :3], priors[:3])
    torch.testing.assert_close(decoded, batch.boxes[0][[0, 0, 1]], rtol=0, atol=1e-4)


def test_encoded_targets_decode_to_the_ground_truth_and_cost_nothing():
    head = make_head()
    # small, medium, large and elongated boxes, one touching the border: several maps
    boxes = [[[4, 6, 16, 18], [30, 20, 70, 80], [80, 0, 96, 14]], [[50, 50, 60, 70], [8, 40, 88, 90]]]
    labels = [[0, 2, 1], [1, 0]]
    batch = detection_batch(boxes, labels, [True, True], size=96)
    outputs = empty_outputs(head, 2, 96)
    targets = head.targets(outputs, batch)
    positive = targets.labels > 0
    assert positive.sum() >= 5
    for image, prior in positive.nonzero().tolist():
        place(outputs, image, prior, targets.encoded[image, prior], int(targets.labels[image, prior]) - 1)
    for prediction, gt_boxes, gt_labels in zip(head.decode(outputs), batch.boxes, batch.box_labels):
        iou = box_iou(gt_boxes, prediction["boxes"])
        assert (iou.amax(dim=1) > 0.99).all()
        assert torch.equal(prediction["labels"][iou.argmax(dim=1)], gt_labels)
        assert prediction["labels"].dtype == torch.int64
    losses = head.loss(outputs, batch)
    assert losses["box"] < 1e-4 and losses["cls"] < 1e-3


def test_priors_in_ignore_regions_are_neither_positives_nor_negatives():
    head = make_head()
    outputs = empty_outputs(head, 1, 64)
    batch = detection_batch([[[2, 2, 14, 14]]], [[0]], [True])
    batch.ignore_boxes = [torch.tensor([[32.0, 32.0, 64.0, 64.0]])]
    batch.ignore_labels = [torch.tensor([1])]
    labels = head.targets(outputs, batch).labels[0]
    centres = (head.priors(outputs)[:, :2] + head.priors(outputs)[:, 2:]) / 2
    inside = (centres >= 32).all(dim=1)
    assert (labels[inside] == IGNORED).all() and (labels[~inside] != IGNORED).all()
    assert (labels > 0).any()


# ---- hard negative mining -----------------------------------------------------------------------------------

def test_hard_negative_mining_keeps_the_highest_loss_negatives_three_per_positive():
    generator = torch.Generator().manual_seed(0)
    loss = torch.rand(3, 40, generator=generator)
    positive = torch.zeros(3, 40, dtype=torch.bool)
    positive[0, :2] = True            # 2 positives, 38 negatives: keeps 6
    positive[1, :5] = True            # 5 positives, but only 7 negatives may count: keeps all 7
    candidate = ~positive             # image 2 has no positive: keeps none
    candidate[1, 12:] = False         # ignored priors are never chosen, even with the highest loss
    loss[1, 12:] = 10.0
    kept = hard_negatives(loss, positive, candidate, ratio=3)
    assert kept.sum(dim=1).tolist() == [6, 7, 0]
    assert not (kept & ~candidate).any()
    negatives = loss[0][candidate[0]]
    assert set(loss[0][kept[0]].tolist()) == set(negatives.topk(6).values.tolist())


def test_the_loss_counts_exactly_the_mined_negatives():
    head = make_head(neg_pos_ratio=3)
    batch = detection_batch([[[8, 8, 40, 40]]], [[1]], [True])
    outputs = head(fake_features(1, 64), batch.image)
    targets = head.targets(outputs, batch)
    positive = targets.labels[0] > 0
    logits = torch.cat([level[0].reshape(-1, NUM_CLASSES + 1) for level in outputs.logits]).detach()
    ce = torch.nn.functional.cross_entropy(logits, targets.labels[0].clamp(min=0), reduction="none")
    expected = (ce[positive].sum() + ce[~positive].topk(3 * int(positive.sum())).values.sum()) / positive.sum()
    assert head.loss(outputs, batch)["cls"].item() == pytest.approx(expected.item(), rel=1e-5)


# ---- decoding and the loss contract -------------------------------------------------------------------------

def test_nms_is_class_wise():
    head = make_head()
    outputs = empty_outputs(head, 1, 64)
    priors = head.priors(outputs)
    coder = box_coder()
    overlapping = [[12.0, 12.0, 36.0, 36.0], [13.0, 12.0, 37.0, 36.0], [14.0, 14.0, 34.0, 34.0]]
    for prior, box, label in zip([0, 1, 2], overlapping, [0, 0, 1]):
        place(outputs, 0, prior, coder.encode_single(torch.tensor([box]), priors[prior:prior + 1])[0], label)
    found = head.decode(outputs)[0]
    assert sorted(found["labels"].tolist()) == [0, 1]    # the two class-0 boxes merge; class 1 survives beside
    assert (found["boxes"] >= 0).all() and (found["boxes"] <= 64).all()


def test_dense_predictions_are_float32_and_carry_gradients():
    head = make_head()
    outputs = head(fake_features(2, 64), torch.zeros(2, 3, 64, 64))
    half = SSDOutputs([o.bfloat16() for o in outputs.offsets], [l.bfloat16() for l in outputs.logits],
                      outputs.image_size)
    boxes, scores = head.dense_predictions(half)
    n = head.priors(outputs).shape[0]
    assert boxes.shape == (2, n, 4) and scores.shape == (2, n, NUM_CLASSES)
    assert boxes.dtype == scores.dtype == torch.float32
    assert (scores.sum(dim=-1) < 1).all()                # the background column is left out
    scores[..., 1].max().backward()
    assert head.class_convs[0].weight.grad is not None


def test_a_batch_without_box_annotations_gives_zero_terms_in_the_graph():
    head = make_head()
    batch = detection_batch([[[4, 4, 20, 20]], []], [[1], []], [False, False])
    losses = head.loss(head(fake_features(2, 64), batch.image), batch)
    assert set(losses) == {"cls", "box"}
    assert all(value.item() == 0.0 and value.requires_grad for value in losses.values())
    sum(losses.values()).backward()
    for parameter in head.parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()


def test_named_outputs_rebuild_what_decode_takes():
    head = make_head().eval()
    with torch.no_grad():
        outputs = head(fake_features(1, (64, 96)), torch.zeros(1, 3, 64, 96))
    named = head.named_outputs(outputs)
    assert list(named)[:4] == ["offsets_8", "logits_8", "offsets_16", "logits_16"] and len(named) == 12
    rebuilt = head.from_named_outputs(named, (64, 96))
    for mine, theirs in zip(head.decode(rebuilt), head.decode(outputs)):
        assert torch.equal(mine["boxes"], theirs["boxes"]) and torch.equal(mine["labels"], theirs["labels"])


# ---- training -----------------------------------------------------------------------------------------------

def test_overfits_one_batch():
    torch.manual_seed(0)
    channels, strides, size = [8, 16, 32], [8, 16, 32], 64
    head = SSDHead(channels, strides, NUM_CLASSES, SSDOptions(extra_channels=32))
    features = [torch.randn(2, c, size // s, size // s) for c, s in zip(channels, strides)]
    image = torch.zeros(2, 3, size, size)
    batch = detection_batch([[[5, 5, 18, 18], [24, 12, 60, 52]], [[30, 30, 44, 50]]], [[0, 2], [1]], [True, True])
    totals = [sum(terms.values()) for terms in train_head(head, features, image, batch, steps=60, lr=3e-3)]
    assert totals[-1] < 0.1 * totals[0]
    assert_finds_the_boxes(head, features, image, batch, min_iou=0.7)
    metric = head.metric()
    with torch.no_grad():
        metric.update(head.decode(head.eval()(features, image)), batch)
    assert metric.compute()["mAP50"] > 0.5


def test_plugs_into_a_multi_task_model_beside_the_other_heads():
    heads = {"cls": {"type": "classification"}, "seg": {"type": "unet"}, "yolo": {"type": "yolo"},
             "ssd": {"type": "ssd", "extra_channels": 32}}
    model, batch, terms = multitask_backward(heads, num_classes=NUM_CLASSES)
    assert {"ssd/cls", "ssd/box"} <= set(terms) and all(torch.isfinite(v) for v in terms.values())
    assert all(p.grad is not None for p in model.heads["ssd"].parameters())
    model.eval()
    with torch.no_grad():
        decoded = model.heads["ssd"].decode(model(batch.image)["ssd"])
    assert len(decoded) == 2 and all(set(d) == {"boxes", "scores", "labels"} for d in decoded)
    assert "ssd" in HEADS and model.heads["ssd"].metric().__class__.__name__ == "CocoDetectionMetric"


# ---- export -------------------------------------------------------------------------------------------------

def tiny_backbone(pretrained: bool = False) -> Backbone:
    """Five conv-BN-ReLU-max-pool stages (strides 2 to 32), as in tests/inference/test_export.py: quick to export."""
    widths = [3, 4, 6, 8, 8, 8]
    stages = [nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2))
              for a, b in zip(widths, widths[1:])]
    return Backbone(stages, widths[1:], [2, 4, 8, 16, 32], mean=(0.5,) * 3, std=(0.25,) * 3)


def test_onnx_export_follows_batch_and_size_and_decodes_what_the_model_decodes(tmp_path, monkeypatch):
    monkeypatch.setitem(backbone_registry.BACKBONES, "tiny5", tiny_backbone)
    # One extra map (stride 32, from 16): no map is 1 x 1 at the 64 px example, which would fix the exported size.
    heads = {"det": {"type": "ssd", "strides": [8, 16], "extra_layers": 1, "extra_channels": 8}}
    config = parse_config({"data": {"train": "unused", "val": "unused", "image_size": 64},
                           "model": {"backbone": {"name": "tiny5", "pretrained": False}, "heads": heads}})
    torch.manual_seed(0)
    model = build_model(config.model, num_classes=NUM_CLASSES).eval()
    trained = TrainedModel(model, config, ["a", "b", "c"], [1, 2, 3], ImagePolicy(intensity=(0.0, 4095.0)),
                           Path("tiny/last.pt"), {})
    result = export_model(trained, tmp_path / "ssd.onnx")
    assert result.fallbacks == [] and result.input_shape == ["batch", 3, "height", "width"]
    assert result.outputs["det"] == ["det_offsets_8", "det_logits_8", "det_offsets_16", "det_logits_16",
                                     "det_offsets_32", "det_logits_32"]
    runner = OnnxRunner(result.model_path, model.heads)
    image = torch.rand(3, 3, 96, 128, generator=torch.Generator().manual_seed(5))
    got = runner(image)["det"]
    with torch.no_grad():
        expected = model(image)["det"]
    assert got.image_size == (96, 128)
    for mine, theirs in zip(got.offsets + got.logits, expected.offsets + expected.logits):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-4)
    head = model.heads["det"]
    for mine, theirs in zip(head.decode(got), head.decode(expected)):
        assert torch.equal(mine["labels"], theirs["labels"])
        torch.testing.assert_close(mine["boxes"], theirs["boxes"], rtol=0, atol=1e-3)


# ---- distillation -------------------------------------------------------------------------------------------

def test_distillation_reads_ssd_as_objectness_and_classes_and_refuses_another_layout():
    student, teacher = make_head(), make_head()
    mismatch = KINDS["detection"].mismatch
    assert mismatch(student, teacher) is None
    assert "ssd" in mismatch(student, make_head(min_scale=0.1))
    assert "ssd" in mismatch(student, make_head(extra_layers=2))
    assert "yolo" in mismatch(student, HEADS["yolo"](CHANNELS, STRIDES, NUM_CLASSES, HEADS["yolo"].Options()))
    # a teacher sure of "background" everywhere but one box: only the student's objectness there is pulled up
    target = empty_outputs(teacher, 1, 64)
    place(target, 0, 5, torch.zeros(4), label=2)
    agreeing = empty_outputs(student, 1, 64)
    place(agreeing, 0, 5, torch.zeros(4), label=2)
    loss = KINDS["detection"].loss
    assert float(loss(HeadOutputs(student, agreeing), [HeadOutputs(teacher, target)], 1.0)) < 1e-6
    blind = empty_outputs(student, 1, 64)
    assert float(loss(HeadOutputs(student, blind), [HeadOutputs(teacher, target)], 1.0)) > 1.0
