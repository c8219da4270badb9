"""YoloHead: shapes, target encoding, decoding with NMS, loss behaviour."""
import math

import pytest
import torch
from torchvision.ops import box_iou

from datasets.summary import DataSummary
from heads.detection_metric import CocoDetectionMetric
from heads.yolo import YoloHead, YoloOptions, YoloOutputs, _default_anchors, decode_boxes, encode_boxes
from support import assert_finds_the_boxes, detection_batch, train_head

CHANNELS, STRIDES = [16, 24, 32, 96, 320], [2, 4, 8, 16, 32]
NUM_CLASSES = 3
HIGH, LOW = 12.0, -12.0  # logits that mean "certain yes" / "certain no"


def fake_features(batch_size: int, size: int, channels=CHANNELS, strides=STRIDES) -> list[torch.Tensor]:
    return [torch.randn(batch_size, c, size // s, size // s) for c, s in zip(channels, strides)]


def make_head(**options) -> YoloHead:
    return YoloHead(CHANNELS, STRIDES, NUM_CLASSES, YoloOptions(**options))


def empty_outputs(head: YoloHead, batch_size: int, size: int) -> YoloOutputs:
    """Raw outputs that predict nothing anywhere."""
    with torch.no_grad():
        outputs = head(fake_features(batch_size, size), torch.zeros(batch_size, 3, size, size))
    for level in outputs.levels:
        level.zero_()
        level[..., 4:] = LOW
    return outputs


def place(outputs: YoloOutputs, index: tuple, encoded: torch.Tensor, label: int) -> None:
    """Make one prediction slot (image, anchor, y, x) of a level say `encoded` box of class `label`."""
    level, *slot = index
    raw = outputs.levels[level][tuple(slot)]
    raw[:4] = encoded
    raw[4] = HIGH
    raw[5 + label] = HIGH


def test_output_shapes_per_level():
    head = make_head()
    outputs = head(fake_features(2, 64), torch.zeros(2, 3, 64, 64))
    assert outputs.image_size == (64, 64)
    assert [tuple(level.shape) for level in outputs.levels] == [
        (2, 3, 64 // s, 64 // s, 5 + NUM_CLASSES) for s in (8, 16, 32)
    ]


def test_missing_stride_raises_clear_error():
    with pytest.raises(ValueError, match=r"stride 64.*\[2, 4, 8, 16, 32\]"):
        make_head(strides=[16, 32, 64])


@pytest.mark.parametrize("box_loss", ["giou", "ciou", "mse"])
def test_encoded_targets_decode_to_ground_truth(box_loss):
    # YOLOv3's assignment: one anchor, one cell per box (the default adds more; see the next test).
    head = make_head(box_loss=box_loss, anchors=_default_anchors(), anchor_threshold=0.0, neighbour_cells=False)
    # Small, medium, large and elongated boxes, one touching the border: several levels and anchors.
    boxes = [[[4, 6, 16, 18], [30, 20, 70, 80], [80, 0, 96, 14]], [[50, 50, 60, 70], [8, 40, 88, 90]]]
    labels = [[0, 2, 1], [1, 0]]
    batch = detection_batch(boxes, labels, [True, True], size=96)
    outputs = empty_outputs(head, 2, 96)
    targets = head.assign_targets(outputs, batch)
    assert sum(len(t.image) for t in targets) == 5
    assert sum(len(t.image) > 0 for t in targets) >= 2  # the boxes spread over several levels
    for level, target in enumerate(targets):
        for i in range(len(target.image)):
            slot = (level, target.image[i], target.anchor[i], target.cell_y[i], target.cell_x[i])
            place(outputs, slot, target.raw[i], int(target.labels[i]))

    for prediction, gt_boxes, gt_labels in zip(head.decode(outputs), batch.boxes, batch.box_labels):
        assert len(prediction["boxes"]) == len(gt_boxes)
        iou = box_iou(gt_boxes, prediction["boxes"])
        best = iou.argmax(dim=1)
        assert (iou.amax(dim=1) > 0.99).all()
        assert torch.equal(prediction["labels"][best], gt_labels)
        assert prediction["labels"].dtype == torch.int64

    losses = head.loss(outputs, batch)
    # obj sums every cell's BCE (each ~6e-6 at a logit of -12) per positive: near zero, not below 1e-3
    assert losses["box"] < 1e-3 and losses["cls"] < 1e-3 and losses["obj"] < 5e-3


def test_each_box_also_gets_the_near_anchors_and_the_two_nearest_neighbour_cells():
    head = make_head(anchors=_default_anchors())
    batch = detection_batch([[[20, 20, 34, 34], [0, 40, 6, 54]]], [[1, 0]], [True], size=64)
    targets = head.assign_targets(empty_outputs(head, 1, 64), batch)
    rows = {}
    for level, target in enumerate(targets):
        decoded = decode_boxes(target.raw, torch.stack([target.cell_x, target.cell_y], 1).float(),
                               head.anchors[level][target.anchor], head.strides[level])
        torch.testing.assert_close(decoded, target.boxes, atol=1e-3, rtol=0)  # every row encodes its own box
        for box, y, x, anchor in zip(target.boxes.tolist(), target.cell_y.tolist(), target.cell_x.tolist(),
                                     target.anchor.tolist()):
            rows.setdefault(tuple(box), set()).add((level, anchor, y, x))
    inner, edge = rows[(20.0, 20.0, 34.0, 34.0)], rows[(0.0, 40.0, 6.0, 54.0)]
    # centre (27, 27) = stride-8 cell (3, 3) at fraction .375: plus the cells to its left and above
    assert {(y, x) for level, _, y, x in inner if level == 0} == {(3, 3), (3, 2), (2, 3)}
    assert len({(level, anchor) for level, anchor, _, _ in inner}) > 1   # several anchors within 4x fit it
    # centre (3, 47): the cell left of column 0 does not exist, so only the one below joins
    assert {(y, x) for level, _, y, x in edge if level == 0} == {(5, 0), (6, 0)}


def test_nms_is_class_aware():
    head = make_head()
    outputs = empty_outputs(head, 1, 64)
    stride, anchors = head.strides[1], head.anchors[1].clone()
    cell = torch.tensor([[1.0, 1.0]])  # box centres (24, 24) fall in cell (1, 1) of stride 16

    def encoded(box, anchor):
        return encode_boxes(torch.tensor([box]), cell, anchors[anchor:anchor + 1], stride)[0]

    # Class 0 twice, nearly the same box from two anchors; class 1 overlapping it.
    place(outputs, (1, 0, 0, 1, 1), encoded([12.0, 12.0, 36.0, 36.0], 0), label=0)
    place(outputs, (1, 0, 1, 1, 1), encoded([13.0, 12.0, 37.0, 36.0], 1), label=0)
    place(outputs, (1, 0, 2, 1, 1), encoded([14.0, 14.0, 34.0, 34.0], 2), label=1)
    prediction = head.decode(outputs)[0]
    assert sorted(prediction["labels"].tolist()) == [0, 1]
    assert (prediction["boxes"] >= 0).all() and (prediction["boxes"] <= 64).all()


@pytest.mark.parametrize("box_loss", ["giou", "mse"])
def test_overfits_one_batch(box_loss):
    torch.manual_seed(0)
    channels, strides, size = [8, 16, 32], [8, 16, 32], 64
    head = YoloHead(channels, strides, NUM_CLASSES, YoloOptions(neck_channels=32, box_loss=box_loss))
    features = fake_features(2, size, channels, strides)
    image = torch.zeros(2, 3, size, size)
    batch = detection_batch([[[5, 5, 18, 18], [24, 12, 60, 52]], [[30, 30, 44, 50]]], [[0, 2], [1]], [True, True])
    totals = [sum(terms.values()) for terms in train_head(head, features, image, batch, steps=150, lr=3e-3)]
    assert totals[-1] < 0.5 * totals[0]
    assert_finds_the_boxes(head, features, image, batch, min_iou=0.7)


def test_batch_without_box_annotations_gives_zero_loss_and_finite_gradients():
    head = make_head()
    batch = detection_batch([[[4, 4, 20, 20]], []], [[1], []], [False, False])
    losses = head.loss(head(fake_features(2, 64), batch.image), batch)
    assert set(losses) == {"obj", "box", "cls"}
    for value in losses.values():
        assert value.item() == 0.0
    sum(losses.values()).backward()
    for parameter in head.parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()


def test_images_without_box_annotations_contribute_nothing():
    torch.manual_seed(0)
    head = make_head()
    features = fake_features(2, 64)
    annotated = [[10, 10, 30, 40]]
    with_garbage = detection_batch([annotated, [[0, 0, 64, 64], [5, 5, 9, 9]]], [[0], [2, 1]], [True, False])
    without = detection_batch([annotated, []], [[0], []], [True, False])
    head.eval()  # same BN statistics for both calls
    outputs = head(features, with_garbage.image)
    a, b = head.loss(outputs, with_garbage), head.loss(outputs, without)
    for name in a:
        assert torch.allclose(a[name], b[name])


def test_annotated_image_without_objects_trains_objectness_only():
    head = make_head()
    batch = detection_batch([[]], [[]], [True])
    losses = head.loss(head(fake_features(1, 64), batch.image), batch)
    assert losses["obj"] > 0
    assert losses["box"].item() == 0.0 and losses["cls"].item() == 0.0
    # no positives: every cell's -log(1 - 0.01) (the prior), summed over the one annotated image
    cells = 3 * sum((64 // stride) ** 2 for stride in (8, 16, 32))
    assert math.isclose(losses["obj"].item(), -cells * math.log(0.99), rel_tol=0.5)


def test_metric_is_coco_detection_metric():
    assert isinstance(make_head().metric(), CocoDetectionMetric)


def test_ciou_loss_trains_the_boxes():
    torch.manual_seed(0)
    channels, strides, size = [8, 16], [8, 16], 32
    head = YoloHead(channels, strides, NUM_CLASSES, YoloOptions(
        strides=[8, 16], anchors=[[[8, 8]], [[20, 20]]], neck_channels=16, box_loss="ciou"))
    features, image = fake_features(1, size, channels, strides), torch.zeros(1, 3, size, size)
    batch = detection_batch([[[3, 4, 13, 12], [10, 6, 30, 28]]], [[0, 2]], [True], size=size)
    history = [terms["box"] for terms in train_head(head, features, image, batch, steps=40, lr=3e-3)]
    assert history[-1] < 0.5 * history[0]
    giou = YoloHead(channels, strides, NUM_CLASSES, YoloOptions(
        strides=[8, 16], anchors=[[[8, 8]], [[20, 20]]], neck_channels=16, box_loss="giou"))
    giou.load_state_dict(head.state_dict())
    outputs = head(features, image)
    assert head.loss(outputs, batch)["box"] != giou.loss(outputs, batch)["box"]  # really another loss


def box_summary(sizes: list[tuple[float, float]], repeats: int = 20) -> DataSummary:
    g = torch.Generator().manual_seed(0)
    boxes = torch.cat([torch.tensor(wh) + torch.rand(repeats, 2, generator=g) - 0.5 for wh in sizes])
    return DataSummary(image_size=64, num_classes=NUM_CLASSES, box_sizes=boxes)


# Six shapes of clearly different areas: two anchors per level, the smallest pair at stride 8.
SIX_SHAPES = [(6, 6), (9, 12), (16, 16), (20, 30), (40, 40), (60, 50)]


def test_auto_anchors_start_from_the_defaults():
    head = make_head(anchors="auto")
    assert [level.tolist() for level in head.anchors] == _default_anchors()


def test_fit_data_fits_auto_anchors_smallest_on_the_finest_stride():
    # Strides listed coarse-first, to check the order follows the stride and not the list position.
    head = make_head(anchors="auto", anchors_per_level=2, strides=[32, 8, 16])
    head.fit_data(box_summary(SIX_SHAPES))
    by_level = {stride: level for stride, level in zip(head.strides, head.anchors)}
    expected = torch.tensor(SIX_SHAPES, dtype=torch.float32)
    assert torch.allclose(torch.cat([by_level[8], by_level[16], by_level[32]]), expected, atol=0.6)
    assert [p.out_channels for p in head.predictors] == [2 * (5 + NUM_CLASSES)] * 3


def test_fitted_anchors_survive_a_checkpoint_and_are_used():
    head = make_head(anchors="auto", anchors_per_level=2)
    head.fit_data(box_summary(SIX_SHAPES))
    restored = make_head(anchors="auto", anchors_per_level=2)  # what evaluation rebuilds from the config
    restored.load_state_dict(head.state_dict())
    assert torch.equal(restored.anchor_sizes, head.anchor_sizes)
    # Decoding must use them: tw = th = 0 decodes to exactly the anchor's size.
    outputs = empty_outputs(restored, 1, 64)
    boxes = restored.decode_level_boxes(outputs, 0)[0, :, 0, 0]
    assert torch.allclose(boxes[:, 2:] - boxes[:, :2], head.anchors[0])


def test_fit_data_keeps_given_anchors():
    head = make_head(anchors=_default_anchors())
    head.fit_data(box_summary(SIX_SHAPES))
    assert [level.tolist() for level in head.anchors] == _default_anchors()


def test_auto_anchors_without_training_boxes_raise_a_clear_error():
    head = make_head(anchors="auto")
    with pytest.raises(ValueError, match="anchors 'auto'.*no"):
        head.fit_data(DataSummary(image_size=64, num_classes=NUM_CLASSES, box_sizes=torch.zeros(0, 2)))


def _obj_gradient(head: YoloHead, outputs: YoloOutputs, batch) -> list[torch.Tensor]:
    """d(obj loss) / d(objectness logit) per level, [B, A, H, W]."""
    levels = [level.detach().clone().requires_grad_(True) for level in outputs.levels]
    head.loss(YoloOutputs(levels, outputs.image_size), batch)["obj"].backward()
    return [level.grad[..., 4] for level in levels]


def test_ignore_regions_get_no_objectness_loss():
    head = make_head(anchors=_default_anchors())
    outputs = empty_outputs(head, 1, 64)
    for level in outputs.levels:
        level[..., 4] = 3.0  # confident everywhere: every counted negative has a gradient
    batch = detection_batch([[[2, 2, 14, 14]]], [[0]], [True])
    batch.ignore_boxes = [torch.tensor([[32.0, 32.0, 64.0, 64.0]])]
    batch.ignore_labels = [torch.tensor([1])]
    fine = _obj_gradient(head, outputs, batch)[0][0]  # stride 8: an 8 x 8 grid, cell centres at 4, 12, ...
    assert (fine[:, 4:, 4:] == 0).all()                # centres inside the region: not counted
    assert (fine[:, 4:, :3] > 0).all() and (fine[:, :3, 4:] > 0).all()  # background elsewhere: pushed down


def test_objectness_keeps_its_weight_when_the_grid_grows():
    """The same picture at 4x the size has 16x the cells; the pull on the object's own cell must not fade."""
    pulls = []
    for size in (64, 256):
        head = make_head(obj_target="one", anchors=[[[s * size / 64] * 2 for s in (4, 6, 8)], [[s * size / 64] * 2 for s in (12, 16, 20)],
                                  [[s * size / 64] * 2 for s in (28, 36, 44)]])
        outputs = empty_outputs(head, 1, size)
        for level in outputs.levels:
            level[..., 4] = 0.0
        k = size / 64
        gradients = _obj_gradient(head, outputs, detection_batch([[[20 * k, 20 * k, 36 * k, 36 * k]]], [[0]], [True], size))
        pulls.append(-min(float(g.min()) for g in gradients))  # the strongest push towards "object"
    assert 0.5 < pulls[1] / pulls[0] < 2.0


def test_strides_given_coarse_first_are_sorted_with_their_anchors():
    anchors = _default_anchors()
    head = make_head(strides=[32, 16, 8], anchors=anchors[::-1])
    assert head.strides == [8, 16, 32]
    assert head.anchors[0].tolist() == anchors[0] and head.anchors[2].tolist() == anchors[2]
    outputs = head(fake_features(1, 64), torch.zeros(1, 3, 64, 64))
    assert [level.shape[2] for level in outputs.levels] == [8, 4, 2]


def test_decoding_is_float32_even_when_the_outputs_are_bf16():
    head = make_head(anchors=_default_anchors())
    outputs = empty_outputs(head, 1, 256)
    box = torch.tensor([[201.3, 97.6, 233.9, 141.2]])
    cell = torch.tensor([[27.0, 14.0]])  # (x, y) of the centre's stride-8 cell: (217.6 / 8, 119.4 / 8)
    place(outputs, (0, 0, 0, 14, 27), encode_boxes(box, cell, head.anchors[0][:1], 8)[0], label=1)
    low = YoloOutputs([level.bfloat16() for level in outputs.levels], outputs.image_size)
    found = head.decode(low)[0]
    assert found["boxes"].dtype == torch.float32
    # bf16 raw values carry ~3 significant digits; decoding them in bf16 would add ~1 px more on top
    assert (found["boxes"][0] - box[0]).abs().max() < 1.0
