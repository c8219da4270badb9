"""predict's outputs: mask PNGs that read back as class indices, COCO results that score as eval's do,
overlays, reconstructions and predictions.json, each written without ever leaving half a file."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from datasets.image_io import read_label_image
from pipeline.config.typed import DataCheckError
from pipeline.data_check.drawing import MASK_ALPHA, class_colour
from pipeline.engine.validation import coco_results
from pipeline.inference.predictions import ImagePrediction, InputImage, TaskPrediction
from pipeline.inference.writers import PredictionWriter
from support import detection_batch

CLASSES = ["cat", "dog", "owl"]
CATEGORY_IDS = [3, 5, 9]  # not 1..N, so a writer that forgets to map labels to ids is caught


def prediction(name: str, size=(32, 40), path: str | None = None, channels: int = 3, **tasks) -> ImagePrediction:
    image = np.random.default_rng(0).random((*size, channels), dtype=np.float32) * 0.3
    return ImagePrediction(InputImage(Path(path or f"in/{name}.png"), name), size, image, tasks)


def detection(boxes, scores, labels) -> TaskPrediction:
    return TaskPrediction("detection", boxes=np.asarray(boxes, np.float32).reshape(-1, 4),
                          scores=np.asarray(scores, np.float32), labels=np.asarray(labels, np.int64))


def writer(out: Path, **options) -> PredictionWriter:
    return PredictionWriter(out, CLASSES, CATEGORY_IDS, **options)


def test_a_mask_png_is_indexed_with_the_class_colours_and_reads_back_as_the_indices(tmp_path):
    mask = np.zeros((32, 40), np.int64)
    mask[2:10, 3:20], mask[12:30, 5:9], mask[20:, 30:] = 1, 3, 2
    with writer(tmp_path, overlays=False) as w:
        w.add(prediction("site_b/tile_003", seg=TaskPrediction("segmentation", mask=mask)))
    path = tmp_path / "masks/seg/site_b/tile_003.png"
    with Image.open(path) as stored:
        assert stored.mode == "P" and stored.size == (40, 32)
        palette = stored.getpalette()
        assert np.array_equal(np.array(stored), mask)
    assert palette[:3] == [0, 0, 0] and all(palette[3 * k:3 * k + 3] == list(class_colour(k - 1)) for k in (1, 2, 3))
    assert np.array_equal(read_label_image(path), mask)
    (record,) = json.loads((tmp_path / "predictions.json").read_text())["images"]
    assert record["tasks"]["seg"] == {"mask": "masks/seg/site_b/tile_003.png",
                                      "pixels": {"cat": 8 * 17, "dog": 12 * 10, "owl": 18 * 4}}


def test_a_mask_that_does_not_fit_the_image_or_the_classes_is_refused(tmp_path):
    w = writer(tmp_path)
    with pytest.raises(ValueError, match=r"in/a.png: task 'seg': mask of shape \(16, 40\); expected .* \(32, 40\)"):
        w.add(prediction("a", seg=TaskPrediction("segmentation", mask=np.zeros((16, 40), np.int64))))
    with pytest.raises(ValueError, match=r"mask values 0..4; expected class indices 0..3"):
        w.add(prediction("b", seg=TaskPrediction("segmentation", mask=np.arange(32 * 40).reshape(32, 40) % 5)))


def test_an_image_that_fails_leaves_no_trace_in_the_json_and_takes_no_id(tmp_path):
    with writer(tmp_path) as w:
        with pytest.raises(ValueError, match="mask of shape"):
            w.add(prediction("bad", det=detection([[1, 1, 5, 5]], [0.9], [0]),
                             seg=TaskPrediction("segmentation", mask=np.zeros((3, 3), np.int64))))
        w.add(prediction("good", det=detection([[2, 2, 6, 6]], [0.8], [1]),
                         seg=TaskPrediction("segmentation", mask=np.zeros((32, 40), np.int64))))
    assert [(r["image_id"], r["score"]) for r in json.loads((tmp_path / "detections.json").read_text())] == [(1, 0.8)]
    assert [i["id"] for i in json.loads((tmp_path / "images.json").read_text())["images"]] == [1]
    assert [i["name"] for i in json.loads((tmp_path / "predictions.json").read_text())["images"]] == ["good"]
    assert w.close().tasks["det"].detections == 1


def coco_ground_truth(root: Path) -> Path:
    """Two images whose ids (7, 3) are neither 1..N nor in file order, three boxes."""
    images = [{"id": 7, "file_name": "val/img_1.png", "height": 32, "width": 40},
              {"id": 3, "file_name": "val/img_2.png", "height": 48, "width": 64}]
    boxes = [(7, 3, [4, 5, 10, 12]), (7, 5, [20, 2, 15, 20]), (3, 9, [30.5, 10.25, 20, 30])]
    annotations = [{"id": i + 1, "image_id": image_id, "category_id": category, "bbox": box, "area": box[2] * box[3],
                    "iscrowd": 0} for i, (image_id, category, box) in enumerate(boxes)]
    categories = [{"id": i, "name": n} for i, n in zip(CATEGORY_IDS, CLASSES)]
    path = root / "annotations.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path


def test_detections_at_the_ground_truth_score_map_1_with_the_annotation_files_ids(tmp_path, capsys):
    ground_truth = coco_ground_truth(tmp_path)
    with writer(tmp_path / "out", coco_images=ground_truth) as w:
        w.add(prediction("img_1", (32, 40), "data/val/img_1.png",
                         det=detection([[4, 5, 14, 17], [20, 2, 35, 22]], [0.9, 0.8], [0, 1])))
        w.add(prediction("img_2", (48, 64), "data/val/img_2.png",
                         det=detection([[30.5, 10.25, 50.5, 40.25]], [0.7], [2])))
    gt = COCO(str(ground_truth))
    evaluation = COCOeval(gt, gt.loadRes(str(tmp_path / "out/detections.json")), "bbox")
    evaluation.evaluate(), evaluation.accumulate(), evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)
    # images.json + detections.json are a COCO set on their own.
    own = COCO(str(tmp_path / "out/images.json"))
    assert sorted(own.getImgIds()) == [3, 7] and own.imgs[7]["file_name"] == "val/img_1.png"
    assert [c["name"] for c in own.loadCats(CATEGORY_IDS)] == CLASSES
    assert len(own.loadRes(str(tmp_path / "out/detections.json")).getAnnIds(imgIds=[7])) == 2
    records = json.loads((tmp_path / "out/predictions.json").read_text())["images"]
    assert [(r["id"], r["tasks"]["det"]) for r in records] == [(7, {"count": 2, "results_file": "detections.json"}),
                                                               (3, {"count": 1, "results_file": "detections.json"})]


def test_results_are_rounded_and_clipped_exactly_as_eval_writes_them(tmp_path):
    boxes, scores, labels = [[-3.0, 1.23456, 20.98765, 70.0], [5.5, 6.125, 7.0625, 8.3]], [0.1234567, 0.99999], [2, 0]
    with writer(tmp_path, overlays=False) as w:
        w.add(prediction("a", (64, 64), det=detection(boxes, scores, labels)))
    written = json.loads((tmp_path / "detections.json").read_text())
    predictions = [{"boxes": torch.tensor(boxes), "scores": torch.tensor(scores), "labels": torch.tensor(labels)}]
    as_eval = coco_results(predictions, detection_batch([[]], [[]], [False], size=64), CATEGORY_IDS)
    assert [{**r, "image_id": 1} for r in as_eval] == written
    assert written[0]["bbox"][0] == 0 and written[0]["category_id"] == 9


def test_image_ids_match_by_the_end_of_the_path_then_by_a_unique_file_name(tmp_path):
    ground_truth = tmp_path / "gt.json"
    ground_truth.write_text(json.dumps({"images": [
        {"id": 1, "file_name": "train/a.png"}, {"id": 2, "file_name": "val/a.png"},
        {"id": 3, "file_name": "somewhere/else/b.png"}]}))
    w = writer(tmp_path / "out", coco_images=ground_truth, overlays=False)
    w.add(prediction("a", path="x/val/a.png", det=detection([], [], [])))
    w.add(prediction("b", path="x/y/b.png", det=detection([], [], [])))
    with pytest.raises(DataCheckError, match=r"x/z/a.png: 2 image entries \(ids 1, 2\) in .*gt.json match"):
        w.add(prediction("a2", path="x/z/a.png", det=detection([], [], [])))
    with pytest.raises(DataCheckError, match=r"x/unknown.png: no image entry in .*gt.json match"):
        w.add(prediction("unknown", path="x/unknown.png", det=detection([], [], [])))
    with pytest.raises(DataCheckError, match=r"other/val/a.png: matches image id 2 in .*gt.json, as x/val/a.png did"):
        w.add(prediction("a3", path="other/val/a.png", det=detection([], [], [])))
    w.close()
    images = json.loads((tmp_path / "out/images.json").read_text())["images"]
    assert [(i["id"], i["file_name"]) for i in images] == [(2, "val/a.png"), (3, "somewhere/else/b.png")]


def test_without_annotations_ids_are_1_to_n_in_input_order_and_each_detection_task_has_its_file(tmp_path):
    with writer(tmp_path, overlays=False) as w:
        for name in ["z", "a", "m"]:
            w.add(prediction(name, big=detection([[1, 1, 9, 9]], [0.5], [1]), small=detection([], [], [])))
    big = json.loads((tmp_path / "detections_big.json").read_text())
    assert [r["image_id"] for r in big] == [1, 2, 3] and {r["category_id"] for r in big} == {5}
    assert json.loads((tmp_path / "detections_small.json").read_text()) == []
    coco = json.loads((tmp_path / "images.json").read_text())
    assert [(i["id"], i["file_name"], i["height"], i["width"]) for i in coco["images"]] == \
        [(1, "in/z.png", 32, 40), (2, "in/a.png", 32, 40), (3, "in/m.png", 32, 40)]
    assert not (tmp_path / "detections.json").exists()


def test_predictions_json_lists_every_image_with_the_top_k_by_score(tmp_path):
    probabilities = [[0.1, 0.7, 0.2], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5]]
    with writer(tmp_path, top_k=2, overlays=False) as w:
        for i, p in enumerate(probabilities):
            w.add(prediction(f"site/{i}", cls=TaskPrediction("classification", probabilities=np.array(p, np.float32))))
    document = json.loads((tmp_path / "predictions.json").read_text())
    assert document["class_names"] == CLASSES
    assert [(r["file"], r["name"], r["height"], r["width"]) for r in document["images"]] == \
        [(f"in/site/{i}.png", f"site/{i}", 32, 40) for i in range(3)]
    tops = [[(t["class"], t["index"], t["score"]) for t in r["tasks"]["cls"]["top_k"]] for r in document["images"]]
    assert tops == [[("dog", 1, 0.7), ("owl", 2, 0.2)], [("cat", 0, 0.5), ("owl", 2, 0.3)],
                    [("owl", 2, 0.5), ("dog", 1, 0.3)]]


def test_reconstructions_are_8_bit_grey_or_the_first_three_channels(tmp_path):
    grey = np.linspace(0, 1, 32 * 40, dtype=np.float32).reshape(32, 40, 1)
    bands = np.stack([grey[..., 0], 1 - grey[..., 0], np.full((32, 40), 0.5), np.ones((32, 40))], axis=2)
    with writer(tmp_path, overlays=False) as w:
        w.add(prediction("g", ae=TaskPrediction("reconstruction", image=grey)))
        w.add(prediction("b", ae=TaskPrediction("reconstruction", image=bands.astype(np.float32))))
    with Image.open(tmp_path / "reconstructions/ae/g.png") as g, Image.open(tmp_path / "reconstructions/ae/b.png") as b:
        assert g.mode == "L" and b.mode == "RGB"
        assert np.array_equal(np.array(g), np.round(grey[..., 0] * 255).astype(np.uint8))
        assert np.array_equal(np.array(b), np.round(bands[..., :3] * 255).astype(np.uint8))


def test_an_overlay_is_the_enlarged_image_with_boxes_masks_and_the_class_drawn_only_where_they_are(tmp_path):
    mask = np.zeros((32, 40), np.int64)
    mask[20:28, 2:10] = 2
    tasks = {"seg": TaskPrediction("segmentation", mask=mask), "det": detection([[20, 4, 36, 16]], [0.87], [0]),
             "cls": TaskPrediction("classification", probabilities=np.array([0.1, 0.2, 0.7], np.float32))}
    item = prediction("small", (32, 40), channels=1, **tasks)
    with writer(tmp_path) as w:
        w.add(item)
    with writer(tmp_path / "large") as w:
        w.add(prediction("large", (240, 300), det=detection([[20, 40, 100, 120]], [0.5], [1])))
    with Image.open(tmp_path / "overlays/small.png") as drawn:
        assert drawn.mode == "RGB" and drawn.size == (200, 160)  # 32 x 40 enlarged 5 times, to at least 192 px
        drawn = np.array(drawn).astype(int)
    plain = np.repeat(np.repeat(np.round(item.image * 255).astype(int), 5, 0), 5, 1).repeat(3, axis=2)
    blended = plain[110:130, 20:40] * (1 - MASK_ALPHA) + np.array(class_colour(1)) * MASK_ALPHA  # class 2 = "dog"
    assert np.abs(drawn[110:130, 20:40] - blended).max() <= 1                             # the mask, as check-data
    assert (drawn[79, 110:170] == class_colour(0)).all() and (drawn[30:70, 100] == class_colour(0)).all()  # box
    assert (drawn[22:30, 102:130] != plain[22:30, 102:130]).any()                         # its label
    assert np.array_equal(drawn[50:70, 130:170], plain[50:70, 130:170])                   # its inside
    assert (drawn[:8, :60] != plain[:8, :60]).any()                                      # the caption
    assert np.array_equal(drawn[150:, 100:], plain[150:, 100:])                           # nothing drawn here
    with Image.open(tmp_path / "large/overlays/large.png") as large:
        assert large.size == (300, 240)  # large images are drawn at their size


def test_files_are_written_per_image_and_json_only_whole_at_close(tmp_path):
    w = writer(tmp_path)
    w.add(prediction("a", det=detection([[1, 1, 5, 5]], [0.5], [0])))
    assert (tmp_path / "overlays/a.png").exists() and not (tmp_path / "predictions.json").exists()
    summary = w.close()
    assert summary.images == 1 and summary.tasks["det"].detections == 1 and summary.tasks["det"].images == 1
    assert sorted(p.name for p in summary.files) == ["detections.json", "images.json", "predictions.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["detections.json", "images.json", "overlays",
                                                           "predictions.json"]
    with pytest.raises(RuntimeError), writer(tmp_path / "failed") as failing:
        failing.add(prediction("a", det=detection([[1, 1, 5, 5]], [0.5], [0])))
        raise RuntimeError("the model failed")
    assert [p.name for p in (tmp_path / "failed").iterdir()] == ["overlays"]


def test_names_leading_out_of_the_output_folder_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"output name '../a' leads out of the output folder"):
        writer(tmp_path / "out").add(prediction("../a"))
