"""YoloV1Head: grid shapes, target assignment and encoding, the paper's loss, decoding."""
import pytest
import torch
from torchvision.ops import box_iou

from datasets.sample import Batch
from heads.detection_metric import CocoDetectionMetric
from heads.yolo_v1 import YoloV1Head, YoloV1Options, YoloV1Outputs, to_logits
from support import assert_finds_the_boxes, detection_batch, train_head

CHANNELS, STRIDES = [8, 16, 24], [8, 16, 32]
NUM_CLASSES = 3
HIGH, LOW = 12.0, -12.0  # logits that mean "certain yes" / "certain no"


def fake_features(batch_size: int, size: int) -> list[torch.Tensor]:
    return [torch.randn(batch_size, c, size // s, size // s) for c, s in zip(CHANNELS, STRIDES)]


def make_head(**options) -> YoloV1Head:
    options = {"hidden_channels": 16, **options}
    return YoloV1Head(CHANNELS, STRIDES, NUM_CLASSES, YoloV1Options(**options))


def run(head: YoloV1Head, batch: Batch) -> YoloV1Outputs:
    return head(fake_features(len(batch), batch.image.shape[-1]), batch.image)


def empty_outputs(head: YoloV1Head, batch_size: int, size: int) -> YoloV1Outputs:
    """Raw outputs that predict nothing anywhere."""
    with torch.no_grad():
        outputs = head(fake_features(batch_size, size), torch.zeros(batch_size, 3, size, size))
    outputs.grid.zero_()
    raw, _ = head._split(outputs.grid)
    raw[..., 4] = LOW
    return outputs


def place(head: YoloV1Head, outputs: YoloV1Outputs, slot: tuple, values: torch.Tensor, label: int) -> None:
    """Make predictor `slot` = (image, cell_y, cell_x, predictor) say the box `values`, of class `label`."""
    raw, classes = head._split(outputs.grid)
    image, y, x, predictor = slot
    raw[image, y, x, predictor, :4] = to_logits(values)
    raw[image, y, x, predictor, 4] = HIGH
    classes[image, y, x] = LOW
    classes[image, y, x, label] = HIGH


def test_output_shape_is_one_grid_of_b_boxes_and_c_classes():
    assert tuple(make_head().forward(fake_features(2, 64), torch.zeros(2, 3, 64, 64)).grid.shape) == (
        2, 2, 2, 5 * 2 + NUM_CLASSES)
    outputs = make_head(stride=16, boxes_per_cell=3)(fake_features(2, 96), torch.zeros(2, 3, 96, 96))
    assert tuple(outputs.grid.shape) == (2, 6, 6, 5 * 3 + NUM_CLASSES) and outputs.image_size == (96, 96)


def test_missing_stride_raises_clear_error():
    with pytest.raises(ValueError, match=r"stride 64.*\[8, 16, 32\]"):
        make_head(stride=64)


def test_encoded_targets_decode_to_ground_truth_and_cost_nothing():
    head = make_head(stride=16)
    # Small, large, elongated, touching the border and as large as the image, each in its own cell
    # (a cell has one class distribution, so YOLOv1 cannot hold two objects of different classes in one).
    boxes = [[[4, 6, 16, 18], [30, 20, 70, 80], [80, 0, 96, 14]], [[60, 66, 70, 86], [0, 0, 96, 96]]]
    labels = [[0, 2, 1], [1, 0]]
    batch = detection_batch(boxes, labels, [True, True], size=96)
    outputs = empty_outputs(head, 2, 96)
    targets = head.assign_targets(outputs, batch)
    assert len(targets.image) == 5
    for i in range(5):
        slot = (targets.image[i], targets.cell_y[i], targets.cell_x[i], targets.predictor[i])
        place(head, outputs, slot, targets.values[i], int(targets.labels[i]))

    for prediction, gt_boxes, gt_labels in zip(head.decode(outputs), batch.boxes, batch.box_labels):
        assert len(prediction["boxes"]) == len(gt_boxes)
        iou = box_iou(gt_boxes, prediction["boxes"])
        assert (iou.amax(dim=1) > 0.99).all()
        assert torch.equal(prediction["labels"][iou.argmax(dim=1)], gt_labels)
        assert prediction["labels"].dtype == torch.int64

    losses = head.loss(outputs, batch)
    assert set(losses) == {"coord", "obj", "noobj", "cls"}
    assert all(value < 1e-3 for value in losses.values()), losses


def test_responsible_predictor_is_the_one_overlapping_the_ground_truth_most():
    head = make_head(stride=32, boxes_per_cell=3)
    batch = detection_batch([[[10, 10, 30, 30]]], [[2]], [True])
    outputs = empty_outputs(head, 1, 64)
    place(head, outputs, (0, 0, 0, 0), torch.tensor([0.1, 0.1, 0.2, 0.2]), 2)  # a small box in the corner
    place(head, outputs, (0, 0, 0, 2), torch.tensor([0.6, 0.6, 0.55, 0.55]), 2)  # close to the GT
    target = head.assign_targets(outputs, batch)
    assert (target.cell_y.item(), target.cell_x.item(), target.predictor.item()) == (0, 0, 2)
    # The GT's centre (20, 20) is at 0.625 of the 32 px cell; its width 20 / 64 gives sqrt 0.559.
    assert torch.allclose(target.values[0], torch.tensor([0.625, 0.625, 0.5590, 0.5590]), atol=1e-4)


def test_loss_terms_follow_the_paper():
    head = make_head(stride=32)
    batch = detection_batch([[[0, 0, 32, 32]], [[4, 4, 60, 60]]], [[0], [1]], [True, False])
    outputs = empty_outputs(head, 2, 64)
    raw, classes = head._split(outputs.grid)
    raw[..., 4] = 0.0                       # every confidence 0.5
    raw[0, 0, 0, :, :4] = to_logits(torch.tensor([0.5, 0.5, 0.5 ** 0.5, 0.5 ** 0.5]))  # both: the exact box
    classes[0, 0, 0] = torch.tensor([0.0, 0.0, 0.0])  # class probabilities 1/3 each
    losses = head.loss(outputs, batch)
    # One annotated image (the second has no box annotations and counts for nothing): 7 non-responsible
    # predictors at 0.5 -> 0.5 * 7 * 0.25; the responsible one's IoU target is 1 -> 0.25; classes
    # (2/3)^2 + 2 * (1/3)^2; the box is exact.
    assert losses["noobj"].item() == pytest.approx(0.5 * 7 * 0.25, rel=1e-4)
    assert losses["obj"].item() == pytest.approx(0.25, rel=1e-4)
    assert losses["cls"].item() == pytest.approx(6 / 9, rel=1e-4)
    assert losses["coord"].item() == pytest.approx(0.0, abs=1e-6)


def test_cells_in_an_ignore_region_pay_no_noobj_penalty():
    head = make_head(stride=32)
    batch = detection_batch([[[0, 0, 32, 32]]], [[0]], [True])
    outputs = empty_outputs(head, 1, 64)
    raw, _ = head._split(outputs.grid)
    raw[..., 4] = 0.0                      # every confidence 0.5: 7 unmatched predictors pay 0.5 * 0.25 each
    batch.ignore_boxes = [torch.tensor([[32.0, 32.0, 64.0, 64.0]])]  # holds the centre of cell (1, 1)
    batch.ignore_labels = [torch.tensor([2])]
    assert head.loss(outputs, batch)["noobj"].item() == pytest.approx(0.5 * 5 * 0.25, rel=1e-4)


@pytest.mark.parametrize("confidence_target, expected", [("iou", (0.5 - 0.25) ** 2), ("one", (0.5 - 1.0) ** 2)])
def test_confidence_target_is_the_iou_or_one(confidence_target, expected):
    head = make_head(stride=32, boxes_per_cell=1, confidence_target=confidence_target)
    batch = detection_batch([[[0, 0, 32, 32]]], [[0]], [True])
    outputs = empty_outputs(head, 1, 64)
    raw, _ = head._split(outputs.grid)
    raw[0, 0, 0, 0] = torch.tensor([0.0, 0.0, 0.0, 0.0, 0.0])  # confidence 0.5; a 16 px box, IoU 0.25
    assert head.loss(outputs, batch)["obj"].item() == pytest.approx(expected, rel=1e-4)


def test_coordinate_loss_compares_square_roots_of_the_sizes():
    # The same 8 px width error costs more on a small box than on a large one (the paper's sqrt).
    head = make_head(stride=32, boxes_per_cell=1)

    def coord_loss(width: float) -> float:
        batch = detection_batch([[[32 - width / 2, 20, 32 + width / 2, 44]]], [[0]], [True])
        outputs = empty_outputs(head, 1, 64)
        target = head.assign_targets(outputs, batch)
        wrong = target.values[0].clone()
        wrong[2] = ((width + 8) / 64) ** 0.5
        place(head, outputs, (0, target.cell_y[0], target.cell_x[0], 0), wrong, 0)
        return head.loss(outputs, batch)["coord"].item()

    small, large = coord_loss(8), coord_loss(48)
    assert small > 3 * large and large > 0
    assert small == pytest.approx(5.0 * ((16 / 64) ** 0.5 - (8 / 64) ** 0.5) ** 2, rel=1e-4)


def test_batch_without_box_annotations_gives_zero_loss_and_finite_gradients():
    head = make_head()
    batch = detection_batch([[[4, 4, 20, 20]], []], [[1], []], [False, False])
    losses = head.loss(run(head, batch), batch)
    assert set(losses) == {"coord", "obj", "noobj", "cls"}
    for value in losses.values():
        assert value.item() == 0.0
    sum(losses.values()).backward()
    for parameter in head.parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all()


def test_annotated_image_without_objects_trains_confidence_only():
    head = make_head()
    batch = detection_batch([[]], [[]], [True])
    losses = head.loss(run(head, batch), batch)
    assert losses["noobj"] > 0
    assert losses["coord"].item() == losses["obj"].item() == losses["cls"].item() == 0.0


def test_overfits_one_batch():
    torch.manual_seed(0)
    head = make_head(stride=16, hidden_channels=32)
    features, image = fake_features(2, 64), torch.zeros(2, 3, 64, 64)
    batch = detection_batch([[[5, 5, 18, 18], [36, 12, 60, 52]], [[20, 30, 44, 50]]], [[0, 2], [1]], [True, True])
    totals = [sum(terms.values()) for terms in train_head(head, features, image, batch, steps=80, lr=3e-3)]
    assert totals[-1] < 0.2 * totals[0]
    assert_finds_the_boxes(head, features, image, batch, min_iou=0.5)


def test_metric_is_coco_detection_metric():
    assert isinstance(make_head().metric(), CocoDetectionMetric)
