"""`python -m pipeline explain`: every method on every head type, the page it writes, and what it refuses."""
from __future__ import annotations

import copy
import re

import torch
from mlflow.tracking import MlflowClient

from heads.registry import HEADS
from pipeline.analysis.explain.inputs import ExplainInputs, ExplainOptions
from pipeline.analysis.explain.methods import METHODS, run_methods
from pipeline.config.schema import parse_config
from pipeline.inference.trained import load_trained
from pipeline.inference.val_data import evaluation_dataset
from pipeline.jobs.cli import main
from pipeline.model import build_model

KIND_OF_TYPE = {"classification": "classification", "fcn": "segmentation", "unet": "segmentation",
                "pspnet": "segmentation", "deeplabv3": "segmentation", "deeplabv3plus": "segmentation",
                "segnet": "segmentation", "yolo": "detection", "yolo_v1": "detection", "ssd": "detection",
                "ae": "reconstruction", "dae": "reconstruction", "vae": "reconstruction"}
SMALL = ExplainOptions(channels=2, top_k=2, neighbours=2, queries=2, split_limit=16, smooth_samples=2,
                       ascent_steps=3)


def test_every_method_runs_on_every_head_type_or_says_why_not(tiny_run):
    assert set(KIND_OF_TYPE) == set(HEADS), "a new head type: add it here and check explain covers its kind"
    raw = copy.deepcopy(tiny_run.config)
    raw["model"]["heads"] = {name: {"type": name} for name in HEADS}
    torch.manual_seed(0)
    model = build_model(parse_config(raw).model, num_classes=3).eval()
    trained = load_trained(tiny_run.checkpoint)
    dataset, _ = evaluation_dataset(trained)
    # one query image at 32 px keeps ~900 forward passes (occlusion windows, ascent steps, 9 heads) cheap
    image = torch.nn.functional.interpolate(dataset[0].image[None], size=32, mode="bilinear")
    inputs = ExplainInputs(model, trained.class_names, image, ["a"], dataset, "val", SMALL)
    before = copy.deepcopy(model.state_dict())

    pictures, refusals = run_methods(inputs, list(METHODS), list(HEADS))

    refused = {(r.method, r.task) for r in refusals}
    expected = {("class-visualisation", t) for t, kind in KIND_OF_TYPE.items() if kind == "reconstruction"}
    assert refused == expected, [(r.method, r.task, r.reason) for r in refusals]
    assert all("reconstruction head has no classes" in r.reason for r in refusals)
    made = {p.file for p in pictures}
    for method in ("saliency", "cam", "occlusion"):
        assert {f"{method}/{task}.png" for task in HEADS} <= made
    assert all(p.caption and p.figure.axes for p in pictures)
    for key, value in model.state_dict().items():   # explaining never changes the model
        assert torch.equal(value, before[key]), key


def test_the_explain_command_writes_a_self_contained_page_and_refuses_to_overwrite_it(tiny_run, tmp_path, capsys):
    out = tmp_path / "explain"
    args = ["explain", str(tiny_run.checkpoint), "--out", str(out), "--num-images", "2", "--channels", "2",
            "--ascent-steps", "3", "--methods", "filters,saliency,cam,embedding", "--tasks", "cls,det"]
    assert main(args) == 0
    page = (out / "index.html").read_text()
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert pngs == ["cam/cls.png", "cam/det.png", "embedding/tsne.png", "filters/first_layer.png",
                    "saliency/cls.png", "saliency/det.png"]
    assert page.count('<img src="data:image/png;base64,') == len(pngs)
    assert not re.findall(r'(?:src|href)="(?!data:)[a-z]+:', page)     # nothing from another host
    assert main(args) == 2
    assert "holds an earlier explain page" in capsys.readouterr().err
    assert main(args + ["--overwrite"]) == 0


def test_unknown_methods_and_tasks_are_named(tiny_run, tmp_path, capsys):
    assert main(["explain", str(tiny_run.checkpoint), "--out", str(tmp_path / "a"), "--methods", "saliency,gradcam"]) == 2
    assert "unknown ['gradcam']" in capsys.readouterr().err
    assert main(["explain", str(tiny_run.checkpoint), "--out", str(tmp_path / "b"), "--tasks", "cls,depth"]) == 2
    assert "['depth'] not in the model" in capsys.readouterr().err


def test_explaining_a_run_logs_the_page_to_it(tiny_run, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    uri = tiny_run.config["tracking"]["uri"]
    assert main(["explain", f"runs:/{tiny_run.run_id}", "--tracking-uri", uri, "--methods", "filters,occlusion",
                 "--tasks", "seg", "--num-images", "1"]) == 0
    assert (tmp_path / "explain" / tiny_run.run_id / "index.html").is_file()
    logged = {a.path for a in MlflowClient(tracking_uri=uri).list_artifacts(tiny_run.run_id, "explain")}
    assert {"explain/index.html", "explain/filters", "explain/occlusion"} <= logged
