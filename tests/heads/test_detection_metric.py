"""CocoDetectionMetric: pycocotools scoring of per-image box predictions."""
import pytest
import torch

from datasets.sample import Batch
from heads.detection_metric import CocoDetectionMetric

NUM_CLASSES = 3


def make_batch(boxes: list[list[list[float]]], labels: list[list[int]], has_boxes: list[bool]) -> Batch:
    n = len(boxes)
    return Batch(
        image=torch.zeros(n, 3, 64, 64), image_id=torch.arange(n), orig_size=torch.full((n, 2), 64),
        label=torch.zeros(n, dtype=torch.long), has_label=torch.zeros(n, dtype=torch.bool),
        mask=torch.zeros(n, 64, 64, dtype=torch.long), has_mask=torch.zeros(n, dtype=torch.bool),
        boxes=[torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes],
        box_labels=[torch.tensor(l, dtype=torch.long) for l in labels],
        has_boxes=torch.tensor(has_boxes),
    )


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
    return make_batch(
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
