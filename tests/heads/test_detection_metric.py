"""CocoDetectionMetric: pycocotools scoring of per-image box predictions."""
import pytest
import torch

from datasets.sample import Batch
from heads.detection_metric import CocoDetectionMetric
from support import detection_batch

NUM_CLASSES = 3


def predictions_from(batch: Batch, shift: float = 0.0) -> list[dict]:
    """The batch's own GT as confident predictions, optionally shifted right by a fraction of the width."""
    out = []
    for boxes, labels in zip(batch.boxes, batch.box_labels):
        moved = boxes.clone()
        moved[:, [0, 2]] += shift * (boxes[:, 2] - boxes[:, 0]).unsqueeze(1)
        out.append({"boxes": moved, "scores": torch.linspace(0.9, 0.8, len(boxes)), "labels": labels.clone()})
    return out


@pytest.fixture
def batch() -> Batch:
    return detection_batch(
        boxes=[[[4, 4, 20, 24], [30, 30, 60, 50]], [[10, 12, 40, 44]], []],
        labels=[[0, 2], [0], []],
        has_boxes=[True, True, True],
    )


def compute(batch: Batch, predictions: list[dict]) -> dict[str, float]:
    metric = CocoDetectionMetric(NUM_CLASSES)
    metric.update(predictions, batch)
    return metric.compute()


def test_ground_truth_against_itself_is_perfect(batch):
    result = compute(batch, predictions_from(batch))
    assert result["mAP"] == pytest.approx(1.0)
    assert result["mAP50"] == pytest.approx(1.0)
    assert result["mAP75"] == pytest.approx(1.0)
    assert result["AP/0"] == pytest.approx(1.0) and result["AP/2"] == pytest.approx(1.0)
    assert "AP/1" not in result  # class without ground truth is skipped


def test_shifted_boxes_score_lower(batch):
    perfect = compute(batch, predictions_from(batch))["mAP"]
    shifted = compute(batch, predictions_from(batch, shift=0.3))  # IoU ~0.54
    assert shifted["mAP"] < perfect - 0.3
    assert shifted["mAP50"] == pytest.approx(1.0)
    assert shifted["mAP75"] == pytest.approx(0.0)


def test_no_predictions_give_zero(batch):
    empty = [{"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.long)}
             for _ in range(len(batch))]
    result = compute(batch, empty)
    assert result["mAP"] == 0.0 and result["mAP50"] == 0.0 and result["AP/0"] == 0.0


def test_images_without_box_annotations_are_ignored(batch):
    # The third image's source has no boxes: its missed "GT" and its wild prediction must not count.
    batch.has_boxes[2] = False
    batch.boxes[2] = torch.tensor([[0.0, 0.0, 30.0, 30.0]])
    batch.box_labels[2] = torch.tensor([1])
    predictions = predictions_from(batch)
    predictions[2] = {"boxes": torch.tensor([[40.0, 40.0, 60.0, 60.0]]), "scores": torch.tensor([1.0]),
                      "labels": torch.tensor([0])}
    result = compute(batch, predictions)
    assert result["mAP"] == pytest.approx(1.0)
    assert "AP/1" not in result


def test_false_positive_on_annotated_empty_image_counts(batch):
    predictions = predictions_from(batch)
    predictions[2] = {"boxes": torch.tensor([[40.0, 40.0, 60.0, 60.0]]), "scores": torch.tensor([1.0]),
                      "labels": torch.tensor([0])}
    assert compute(batch, predictions)["AP/0"] < 1.0


def test_no_annotated_images_gives_empty_dict_and_reset_clears(batch):
    batch.has_boxes[:] = False
    assert compute(batch, predictions_from(batch)) == {}
    metric = CocoDetectionMetric(NUM_CLASSES)
    batch.has_boxes[:] = True
    metric.update(predictions_from(batch), batch)
    metric.reset()
    assert metric.compute() == {}


def random_detection_run(seed: int, images: int = 6) -> tuple[Batch, list[dict]]:
    """Ground truth with near-miss, mislabelled and spurious predictions, so AP is far from 0 and 1."""
    g = torch.Generator().manual_seed(seed)
    boxes, labels, predictions = [], [], []
    for _ in range(images):
        count = int(torch.randint(0, 5, (1,), generator=g))
        top_left = torch.rand(count, 2, generator=g) * 40
        gt = torch.cat([top_left, top_left + 6 + torch.rand(count, 2, generator=g) * 20], dim=1)
        gt_labels = torch.randint(0, NUM_CLASSES, (count,), generator=g)
        near = gt + torch.randn(count, 4, generator=g) * 2.5
        near = torch.cat([near[:, :2], torch.maximum(near[:, 2:], near[:, :2] + 1)], dim=1)
        spurious_corner = torch.rand(3, 2, generator=g) * 50
        spurious = torch.cat([spurious_corner, spurious_corner + 4 + torch.rand(3, 2, generator=g) * 10], dim=1)
        flipped = torch.where(torch.rand(count, generator=g) < 0.2, (gt_labels + 1) % NUM_CLASSES, gt_labels)
        predicted = torch.cat([near, spurious])
        boxes.append(gt.tolist())
        labels.append(gt_labels.tolist())
        predictions.append({"boxes": predicted, "scores": torch.rand(len(predicted), generator=g),
                            "labels": torch.cat([flipped, torch.randint(0, NUM_CLASSES, (3,), generator=g)])})
    return detection_batch(boxes, labels, [True] * images), predictions


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_map_agrees_with_torchmetrics(seed):
    from torchmetrics.detection import MeanAveragePrecision

    batch, predictions = random_detection_run(seed)
    ours = compute(batch, predictions)
    # Same conventions as ours: xyxy pixels, COCO's 1/10/100 max detections, pycocotools underneath.
    reference = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
    reference.update(predictions, [{"boxes": b, "labels": l} for b, l in zip(batch.boxes, batch.box_labels)])
    expected = reference.compute()
    assert 0.05 < ours["mAP"] < 0.95  # a case where a wrong convention would show
    assert ours["mAP"] == pytest.approx(float(expected["map"]), abs=1e-6)
    assert ours["mAP50"] == pytest.approx(float(expected["map_50"]), abs=1e-6)
    assert ours["mAP75"] == pytest.approx(float(expected["map_75"]), abs=1e-6)


def test_a_crowd_regions_detections_do_not_lower_map_and_official_pycocotools_agrees():
    """One object and one crowd region; the detector also fires, most confidently, inside the crowd."""
    batch = detection_batch(boxes=[[[4, 4, 20, 24]]], labels=[[1]], has_boxes=[True])
    batch.ignore_boxes, batch.ignore_labels = [torch.tensor([[30.0, 30.0, 60.0, 60.0]])], [torch.tensor([1])]
    predictions = [{"boxes": torch.tensor([[35.0, 35.0, 50.0, 50.0], [4.0, 4.0, 20.0, 24.0]]),
                    "scores": torch.tensor([0.95, 0.9]), "labels": torch.tensor([1, 1])}]
    ours = compute(batch, predictions)
    assert ours["mAP50"] == pytest.approx(1.0)  # without the region the top detection is a false positive
    batch.ignore_boxes = [torch.zeros(0, 4)]
    batch.ignore_labels = [torch.zeros(0, dtype=torch.long)]
    assert compute(batch, predictions)["mAP50"] < 0.6

    # The official evaluation of the same thing, from a COCO file with an iscrowd annotation.
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    official = COCO()
    official.dataset = {
        "images": [{"id": 7, "width": 64, "height": 64}],
        "categories": [{"id": c, "name": str(c)} for c in (1, 2, 3)],
        "annotations": [{"id": 1, "image_id": 7, "category_id": 2, "bbox": [4, 4, 16, 20], "area": 320, "iscrowd": 0},
                        {"id": 2, "image_id": 7, "category_id": 2, "bbox": [30, 30, 30, 30], "area": 900, "iscrowd": 1}],
    }
    detections = [{"image_id": 7, "category_id": 2, "bbox": [35, 35, 15, 15], "score": 0.95},
                  {"image_id": 7, "category_id": 2, "bbox": [4, 4, 16, 20], "score": 0.9}]
    with contextlib.redirect_stdout(io.StringIO()):
        official.createIndex()
        evaluation = COCOeval(official, official.loadRes(detections), iouType="bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert ours["mAP"] == pytest.approx(evaluation.stats[0]) and ours["mAP50"] == pytest.approx(evaluation.stats[1])
