"""TTA, ensembles, tiling and the way back to the file's coordinates, with a runner whose answer is known:
it segments bright pixels and boxes the bright region, so a shape drawn at a known place must come back
there, whatever the file's size, the resize mode, the views or the tiles."""
from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch
from torch import nn

from datasets.image_io import ImagePolicy
from heads.base import Head
from heads.segmentation_head import SegmentationHead
from heads.segmentation_loss import SegmentationLossOptions
from pipeline.inference.box_merging import merge_boxes
from pipeline.inference.predict_images import PredictOptions, predict_images, window_starts
from pipeline.inference.predictions import InputImage
from pipeline.inference.predictor import Predictor, View, parse_views

RECT = (20, 30, 52, 62)   # x1, y1, x2, y2 of the bright rectangle in the file


class BrightBoxes(Head):
    """One box around the bright pixels of each image (channel 0 > 0.5), score 0.9, class 0."""
    kind = "detection"
    options = SimpleNamespace(nms_iou=0.5, max_detections=10)

    def decode(self, image):
        results = []
        for one in image:
            ys, xs = torch.nonzero(one[0] > 0.5, as_tuple=True)
            boxes = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()[None] if len(xs) else \
                torch.zeros(0, 4)
            results.append({"boxes": boxes, "scores": torch.full((len(boxes),), 0.9),
                            "labels": torch.zeros(len(boxes), dtype=torch.long)})
        return results


class BrightRunner:
    def __init__(self) -> None:
        self.heads = nn.ModuleDict({"seg": SegmentationHead(1, SegmentationLossOptions()), "det": BrightBoxes()})

    def __call__(self, image):
        bright = image[:, :1] - 0.5
        return {"seg": torch.cat([-bright, bright], dim=1) * 20, "det": image}


@pytest.fixture
def bright_file(tmp_path) -> Path:
    image = np.full((96, 128, 3), 30, np.uint8)   # H 96, W 128: neither square nor the model's size
    x1, y1, x2, y2 = RECT
    image[y1:y2, x1:x2] = 230
    path = tmp_path / "bright.png"
    cv2.imwrite(str(path), image)
    return path


def _predict(path: Path, predictor: Predictor, **options):
    defaults = dict(image_size=64, resize="stretch", policy=ImagePolicy())
    (prediction,) = predict_images(predictor, [InputImage(path, "bright")], PredictOptions(**{**defaults, **options}),
                                   torch.device("cpu"), progress=False)
    return prediction


def _truth_mask() -> np.ndarray:
    mask = np.zeros((96, 128), np.int64)
    x1, y1, x2, y2 = RECT
    mask[y1:y2, x1:x2] = 1
    return mask


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


@pytest.mark.parametrize("options", [
    dict(resize="stretch"), dict(resize="letterbox"), dict(tile=64, tile_overlap=0.5), dict(image_size=32),
], ids=["stretch", "letterbox", "tiles", "coarse"])
def test_a_known_shape_comes_back_at_its_place_in_the_file(bright_file, options):
    prediction = _predict(bright_file, Predictor([BrightRunner()]), **options)
    assert prediction.size == (96, 128)
    mask = prediction.tasks["seg"].mask
    assert mask.shape == (96, 128)
    assert _iou(mask == 1, _truth_mask() == 1) > 0.9
    (box,) = prediction.tasks["det"].boxes
    # One input pixel is up to 128/32 = 4 file pixels at the coarsest size.
    assert box == pytest.approx(RECT, abs=4.1 if options.get("image_size") == 32 else 2.1)


def test_tta_of_a_flip_symmetric_model_equals_no_tta(bright_file):
    plain = _predict(bright_file, Predictor([BrightRunner()]))
    tta = _predict(bright_file, Predictor([BrightRunner()], parse_views("hflip,vflip,hvflip")))
    np.testing.assert_array_equal(tta.tasks["seg"].mask, plain.tasks["seg"].mask)
    np.testing.assert_allclose(tta.tasks["det"].boxes, plain.tasks["det"].boxes, atol=1e-3)
    np.testing.assert_allclose(tta.tasks["det"].scores, plain.tasks["det"].scores, atol=1e-6)


def test_views_are_undone_before_merging():
    """A runner that sees only the left half: a flipped view finds the right half; merging must flip it back,
    so the merged probability is 1 on the left half (both views agree) and 0.5 nowhere else but the right."""
    class LeftHalf:
        heads = nn.ModuleDict({"seg": SegmentationHead(1, SegmentationLossOptions())})

        def __call__(self, image):
            logits = torch.zeros(image.shape[0], 2, *image.shape[-2:])
            logits[:, 1, :, : image.shape[-1] // 2] = 50
            logits[:, 0, :, image.shape[-1] // 2:] = 50
            return {"seg": logits}

    image = torch.rand(1, 3, 32, 64)
    probabilities = Predictor([LeftHalf()], parse_views("hflip")).soft(image)["seg"][0, 1]
    # The flipped view's "left half" is the image's right half: the mean is 0.5 everywhere.
    assert probabilities == pytest.approx(torch.full((32, 64), 0.5), abs=1e-6)


def test_an_ensemble_of_one_model_twice_equals_that_model(tiny_run):
    from pipeline.inference.trained import load_trained

    model = load_trained(tiny_run.checkpoint).model
    image = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    alone, twice = Predictor([model])(image), Predictor([model, model])(image)
    torch.testing.assert_close(twice["cls"], alone["cls"])
    torch.testing.assert_close(twice["recon"], alone["recon"])
    assert torch.equal(twice["seg"], alone["seg"])
    for one, two in zip(alone["det"], twice["det"]):
        torch.testing.assert_close(two["boxes"], one["boxes"], atol=1e-3, rtol=0)
        torch.testing.assert_close(two["scores"], one["scores"])
        assert torch.equal(two["labels"], one["labels"])


def test_ensemble_members_must_have_the_same_tasks():
    other = SimpleNamespace(heads=nn.ModuleDict({"seg": BrightBoxes()}))
    with pytest.raises(ValueError, match="model 2 has tasks"):
        Predictor([BrightRunner(), other])


@pytest.mark.parametrize("spec, error", [("hflip,spin", "unknown view 'spin'"), ("scale=9", "between 0.25 and 4"),
                                         ("scale=x", "between 0.25 and 4")])
def test_bad_tta_specs_are_named(spec, error):
    with pytest.raises(ValueError, match=error):
        parse_views(spec)


def test_default_tta_starts_with_the_plain_view_and_has_no_duplicates():
    views = parse_views("default")
    assert views[0] == View() and len(views) == len(set(views)) == 4
    assert parse_views("hflip,hflip") == [View(), View(hflip=True)]


@pytest.mark.parametrize("method", ["wbf", "nms"])
def test_box_merging_fuses_agreeing_boxes_and_keeps_distinct_ones(method):
    a = {"boxes": torch.tensor([[10., 10, 30, 30], [50, 50, 70, 70]]), "scores": torch.tensor([0.9, 0.8]),
         "labels": torch.tensor([0, 1])}
    b = {"boxes": torch.tensor([[12., 10, 32, 30]]), "scores": torch.tensor([0.7]), "labels": torch.tensor([0])}
    merged = merge_boxes([a, b], method, iou=0.5, max_detections=10)
    assert sorted(merged["labels"].tolist()) == [0, 1]
    fused = merged["boxes"][merged["labels"] == 0][0]
    if method == "wbf":  # score-weighted mean of the two; found by one of two views: the lone box's score halves
        assert fused.tolist() == pytest.approx([10 + 2 * 0.7 / 1.6, 10, 30 + 2 * 0.7 / 1.6, 30], abs=1e-3)
        assert float(merged["scores"][merged["labels"] == 1][0]) == pytest.approx(0.4, abs=1e-5)
    else:
        assert fused.tolist() == [10, 10, 30, 30]


def test_windows_cover_every_pixel_and_end_flush():
    for length, tile in [(100, 48), (48, 48), (30, 48), (1000, 256)]:
        starts = window_starts(length, tile, 0.25)
        covered = np.zeros(length, bool)
        for start in starts:
            covered[start:start + tile] = True
        assert covered.all() and starts[-1] + min(tile, length) == length


def test_a_dim_16_bit_file_reaches_the_model_with_the_checkpoint_s_policy(tmp_path):
    """Values 30..300 of 65535: divided by 65535 the model would see black; the 'auto' policy stretches them."""
    image = np.full((96, 128), 30, np.uint16)
    x1, y1, x2, y2 = RECT
    image[y1:y2, x1:x2] = 300
    path = tmp_path / "dim16.png"
    cv2.imwrite(str(path), image)
    prediction = _predict(path, Predictor([BrightRunner()]), policy=ImagePolicy(channels=3))
    assert prediction.image.max() == pytest.approx(1.0, abs=0.01)
    assert _iou(prediction.tasks["seg"].mask == 1, _truth_mask() == 1) > 0.9
