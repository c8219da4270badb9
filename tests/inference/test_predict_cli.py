"""`python -m pipeline predict` and `eval` with ensembles and TTA, end to end on a tiny trained checkpoint."""
from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from pipeline.jobs.cli import main


def _val_images(tiny_run) -> Path:
    return Path(tiny_run.config["data"]["val"]).parent / "images"


def _coco_map(annotations: str, results: Path) -> tuple[float, float]:
    with contextlib.redirect_stdout(io.StringIO()):
        ground_truth = COCO(annotations)
        evaluation = COCOeval(ground_truth, ground_truth.loadRes(str(results)), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    return float(evaluation.stats[0]), float(evaluation.stats[1])


def test_predicted_coco_results_score_what_eval_scores(tiny_run, tmp_path):
    annotations = tiny_run.config["data"]["val"]
    assert main(["eval", str(tiny_run.checkpoint), "--out", str(tmp_path / "eval")]) == 0
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    out = tmp_path / "predict"
    assert main(["predict", str(tiny_run.checkpoint), str(_val_images(tiny_run)), "--out", str(out), "--conf", "0",
                 "--coco-images", annotations, "--quiet"]) == 0
    detections = json.loads((out / "detections.json").read_text())
    assert detections, "the tiny model finds nothing: the comparison would be empty"
    assert metrics["det/mAP50"] > 0
    # Boxes in the file's pixels (64 px input, 96 px files) rounded to 0.01 px: the same figures.
    assert _coco_map(annotations, out / "detections.json") == pytest.approx(
        (metrics["det/mAP"], metrics["det/mAP50"]), abs=1e-4)
    listed = json.loads((out / "predictions.json").read_text())["images"]
    assert len(listed) == 8


def test_predictions_of_other_sizes_are_in_each_file_s_own_pixels(tiny_run, tmp_path):
    folder = tmp_path / "odd"
    folder.mkdir()
    sizes = {"wide": (40, 150), "tall": (130, 50)}
    source = sorted(_val_images(tiny_run).glob("*.png"))[0]
    for name, (height, width) in sizes.items():
        cv2.imwrite(str(folder / f"{name}.png"), cv2.resize(cv2.imread(str(source)), (width, height)))
    out = tmp_path / "out"
    assert main(["predict", str(tiny_run.checkpoint), str(folder), "--out", str(out), "--quiet"]) == 0
    for name, size in sizes.items():
        mask = np.array(Image.open(out / "masks" / "seg" / f"{name}.png"))
        assert mask.shape == size
        overlay = Image.open(out / "overlays" / f"{name}.png")
        assert overlay.size[0] / overlay.size[1] == pytest.approx(size[1] / size[0], rel=0.02)


def test_an_ensemble_of_one_checkpoint_twice_evaluates_like_it(tiny_run, tmp_path):
    checkpoint = str(tiny_run.checkpoint)
    assert main(["eval", checkpoint, "--out", str(tmp_path / "one")]) == 0
    assert main(["eval", checkpoint, checkpoint, "--out", str(tmp_path / "two")]) == 0
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert two.keys() == one.keys()
    assert two == pytest.approx(one, abs=1e-3)


def test_eval_with_tta_reports_every_metric(tiny_run, tmp_path):
    assert main(["eval", str(tiny_run.checkpoint), "--tta", "--out", str(tmp_path)]) == 0
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert {"cls/accuracy", "seg/mIoU", "det/mAP", "recon/psnr"} <= set(metrics)


def test_predict_never_writes_over_earlier_predictions(tiny_run, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["predict", str(tiny_run.checkpoint), str(_val_images(tiny_run)), "--out", str(out), "--quiet",
            "--tasks", "cls"]
    assert main(args) == 0
    assert main(args) == 2
    assert "holds earlier predictions" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


@pytest.mark.parametrize("drop, expected", [("class_names", "lacks ['class_names']"),
                                            ("model", "expected a training checkpoint")])
def test_a_checkpoint_without_what_predict_needs_is_a_named_error(tiny_run, tmp_path, capsys, drop, expected):
    state = torch.load(tiny_run.checkpoint, weights_only=True)
    del state[drop]
    old = tmp_path / "old.pt"
    torch.save(state, old)
    assert main(["predict", str(old), str(_val_images(tiny_run)), "--out", str(tmp_path / "o"), "--quiet"]) == 2
    assert expected in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_unknown_tasks_and_missing_images_are_named(tiny_run, tmp_path, capsys):
    checkpoint = str(tiny_run.checkpoint)
    assert main(["predict", checkpoint, str(_val_images(tiny_run)), "--tasks", "depth", "--quiet"]) == 2
    assert "--tasks: ['depth'] not in the model" in capsys.readouterr().err
    assert main(["predict", checkpoint, str(tmp_path / "nowhere"), "--quiet"]) == 2
    assert "nowhere" in capsys.readouterr().err


def test_predict_takes_a_run_of_the_mlflow_store(tiny_run, tmp_path):
    out = tmp_path / "from_run"
    assert main(["predict", f"runs:/{tiny_run.run_id}", str(_val_images(tiny_run)), "--out", str(out), "--quiet",
                 "--tasks", "cls", "--tracking-uri", tiny_run.config["tracking"]["uri"]]) == 0
    from_file = tmp_path / "from_file"
    assert main(["predict", str(tiny_run.checkpoint), str(_val_images(tiny_run)), "--out", str(from_file),
                 "--quiet", "--tasks", "cls"]) == 0
    # The run's best.pt may differ from last.pt; both are the run's own model with its classes.
    listed = json.loads((out / "predictions.json").read_text())
    assert listed["class_names"] == json.loads((from_file / "predictions.json").read_text())["class_names"]
    assert len(listed["images"]) == 8


def test_a_run_that_does_not_exist_is_a_named_error(tiny_run, tmp_path, capsys):
    assert main(["predict", "runs:/0123456789abcdef", str(_val_images(tiny_run)), "--quiet",
                 "--tracking-uri", tiny_run.config["tracking"]["uri"]]) == 2
    assert "runs:/0123456789abcdef: no checkpoint in the MLflow store" in capsys.readouterr().err


def test_predict_with_the_onnx_export_writes_what_the_checkpoint_predicts(tiny_run, tmp_path):
    import shutil

    checkpoint = tmp_path / "last.pt"
    shutil.copy(tiny_run.checkpoint, checkpoint)
    assert main(["export", str(checkpoint), "--static", "--no-check"]) == 0
    outs = {}
    for runtime in ("torch", "onnx"):
        outs[runtime] = tmp_path / runtime
        assert main(["predict", str(checkpoint), str(_val_images(tiny_run)), "--out", str(outs[runtime]), "--quiet",
                     "--runtime", runtime, "--conf", "0", "--tasks", "cls,seg,det"]) == 0
    torch_images, onnx_images = (json.loads((outs[r] / "predictions.json").read_text())["images"] for r in outs)
    for ours, theirs in zip(torch_images, onnx_images):
        assert [c["class"] for c in theirs["tasks"]["cls"]["top_k"]] == [c["class"] for c in ours["tasks"]["cls"]["top_k"]]
        assert theirs["tasks"]["det"]["count"] == ours["tasks"]["det"]["count"]
        torch_mask, onnx_mask = (np.array(Image.open(outs[r] / ours["tasks"]["seg"]["mask"])) for r in outs)
        assert (torch_mask == onnx_mask).mean() > 0.999
    boxes = {r: json.loads((outs[r] / "detections.json").read_text()) for r in outs}
    assert boxes["torch"] and len(boxes["onnx"]) == len(boxes["torch"])
    flat = {r: [v for d in boxes[r] for v in d["bbox"]] for r in boxes}
    assert flat["onnx"] == pytest.approx(flat["torch"], abs=0.02)
