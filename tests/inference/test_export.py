"""Export to ONNX and TorchScript: every head's outputs by name, equal to PyTorch's at other batch and image
sizes, decoded alike through the runners; the sidecar; the fallback to a static size; a file of other heads
refused; the `export` command's parity check; the MLflow-logged model under the same names."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch
from torch import nn

import backbones
from backbones import registry as backbone_registry
from backbones.base import Backbone
from datasets.image_io import ImagePolicy
from heads.base import Head
from pipeline.config.schema import parse_config
from pipeline.inference.export import ExportError, export_model
from pipeline.inference.named_outputs import NamedOutputsModel, raw_outputs
from pipeline.inference.onnx_runner import (
    ExportedFileError, InputShapeError, OnnxRunner, OutputMismatchError, TorchScriptRunner,
)
from pipeline.inference.parity import check_parity
from pipeline.inference.trained import TrainedModel, load_trained
from pipeline.jobs.cli import main
from pipeline.model import MultiTaskModel, build_model

CLASSES = ["circle", "square", "triangle"]
EVERY_HEAD = {
    "cls": {"type": "classification"},
    "fcn": {"type": "fcn", "variant": "8s", "fc_channels": 8},
    "unet": {"type": "unet", "decoder_channels": [4, 4, 4, 4, 4]},
    "segnet": {"type": "segnet", "convs_per_step": 1},
    "yolo": {"type": "yolo", "neck_channels": 8},
    "yolo1": {"type": "yolo_v1", "hidden_channels": 8},
    "ae": {"type": "ae", "decoder_channels": [4, 4, 4, 4, 4]},
    "dae": {"type": "dae", "decoder_channels": [4, 4, 4, 4, 4]},
    "vae": {"type": "vae", "decoder_channels": [4, 4, 4, 4, 4], "latent_channels": 2},
}
EVERY_OUTPUT = ["cls_logits", "fcn_logits", "unet_logits", "segnet_logits", "yolo_8", "yolo_16", "yolo_32",
                "yolo1_grid", "ae_image", "dae_image", "vae_image", "vae_mu", "vae_logvar"]


def tiny_backbone(pretrained: bool = False) -> Backbone:
    """Five conv-BN-ReLU-max-pool stages (strides 2 to 32): every head fits on it, SegNet unpools with its
    indices, and exporting it at 64 px takes seconds (MobileNet takes half a minute)."""
    widths = [3, 4, 6, 8, 8, 8]
    stages = [nn.Sequential(nn.Conv2d(a, b, 3, padding=1), nn.BatchNorm2d(b), nn.ReLU(), nn.MaxPool2d(2))
              for a, b in zip(widths, widths[1:])]
    return Backbone(stages, widths[1:], [2, 4, 8, 16, 32], mean=(0.5,) * 3, std=(0.25,) * 3)


def trained_model(heads: dict, backbone: str = "tiny5", size: int = 64, val: str = "unused",
                  model: MultiTaskModel | None = None) -> TrainedModel:
    """What load_trained gives, for a model built here (random weights, BatchNorm statistics far from 0 and 1,
    so a model exported in training mode would give other numbers)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(backbone_registry.BACKBONES, "tiny5", tiny_backbone)
        config = parse_config({"data": {"train": "unused", "val": val, "image_size": size},
                               "model": {"backbone": {"name": backbone, "pretrained": False}, "heads": heads}})
        torch.manual_seed(0)
        model = model if model is not None else build_model(config.model, num_classes=len(CLASSES))
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    return TrainedModel(model.eval(), config, CLASSES, [1, 2, 3], ImagePolicy(intensity=(0.0, 4095.0)),
                        Path("tiny/last.pt"), {})


@pytest.fixture(scope="module")
def every_head(tmp_path_factory):
    """A model with one task per head type, exported to ONNX (dynamic batch and size)."""
    trained = trained_model(EVERY_HEAD)
    result = export_model(trained, tmp_path_factory.mktemp("export") / "every_head.onnx")
    return trained, result


def decoded_alike(head: Head, got, expected) -> None:
    if head.kind == "detection":
        assert len(got) == len(expected)
        for mine, theirs in zip(got, expected):
            assert torch.equal(mine["labels"], theirs["labels"])
            torch.testing.assert_close(mine["boxes"], theirs["boxes"], rtol=0, atol=1e-3)
            torch.testing.assert_close(mine["scores"], theirs["scores"], rtol=0, atol=1e-5)
    elif head.kind == "segmentation":
        assert torch.equal(got, expected)
    else:
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)


def test_onnx_export_names_every_head_output_and_matches_pytorch_at_other_batch_and_image_sizes(every_head):
    trained, result = every_head
    runner = OnnxRunner(result.model_path, trained.model.heads)
    assert runner.output_names == EVERY_OUTPUT
    assert result.input_shape == ["batch", 3, "height", "width"] and result.fallbacks == []
    assert result.outputs["yolo"] == ["yolo_8", "yolo_16", "yolo_32"] and result.outputs["cls"] == ["cls_logits"]
    reference = NamedOutputsModel(trained.model).eval()
    for shape in [(2, 3, 64, 64), (3, 3, 96, 128)]:
        image = torch.rand(*shape, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            expected = reference(image)
        got = runner.named(image)
        for name in EVERY_OUTPUT:
            assert got[name].shape == expected[name].shape, name
            assert (got[name] - expected[name]).abs().max().item() < 1e-4, name


def test_onnx_runner_decodes_what_the_model_decodes(every_head):
    trained, result = every_head
    runner = OnnxRunner(result.model_path, trained.model.heads)
    assert runner.eval() is runner   # evaluate() calls model.eval()
    image = torch.rand(2, 3, 96, 64, generator=torch.Generator().manual_seed(6))
    got = runner(image)
    with torch.no_grad():
        expected = trained.model(image)
    assert got["yolo"].image_size == (96, 64) and got["yolo1"].image_size == (96, 64)
    for task, head in trained.model.heads.items():
        decoded_alike(head, head.decode(got[task]), head.decode(expected[task]))
    with pytest.raises(InputShapeError, match="multiples of 32.*got \\[96, 80\\]"):
        runner(torch.rand(1, 3, 96, 80))


def test_sidecar_says_how_to_feed_the_model_and_read_each_output(every_head):
    trained, result = every_head
    sidecar = json.loads(result.sidecar_path.read_text())
    assert result.sidecar_path == result.model_path.with_name("every_head.onnx.json")
    assert sidecar["format"] == "onnx" and sidecar["versions"]["opset"] == 18 and sidecar["versions"]["onnxruntime"]
    assert sidecar["input"]["shape"] == ["batch", 3, "height", "width"] and sidecar["input"]["range"] == [0.0, 1.0]
    assert "multiples of 32" in sidecar["input"]["size_rule"]
    assert sidecar["preprocessing"]["image_size"] == 64 and sidecar["preprocessing"]["resize"] == "stretch"
    assert sidecar["preprocessing"]["image_policy"]["intensity"] == [0.0, 4095.0]
    assert sidecar["class_names"] == CLASSES and sidecar["category_ids"] == [1, 2, 3]
    outputs = {o["name"]: o for o in sidecar["outputs"]}
    assert list(outputs) == EVERY_OUTPUT
    assert outputs["segnet_logits"]["shape"] == "[B, 4, H, W]" and "class 0 = background" in outputs["segnet_logits"]["meaning"]
    assert outputs["yolo_16"]["shape"] == "[B, 3, H/16, W/16, 8]" and "stride 16" in outputs["yolo_16"]["meaning"]
    assert outputs["yolo1_grid"]["shape"] == "[B, H/32, W/32, 13]" and outputs["yolo1_grid"]["kind"] == "detection"
    assert outputs["vae_mu"]["shape"] == "[B, 2, H/32, W/32]" and outputs["vae_mu"]["head"] == "vae"
    assert outputs["cls_logits"]["shape"] == "[B, 3]" and "softmax" in outputs["cls_logits"]["meaning"]
    yolo = trained.model.heads["yolo"]
    assert sidecar["tasks"]["yolo"]["strides"] == [8, 16, 32]
    assert sidecar["tasks"]["yolo"]["anchors"]["32"] == yolo.anchors[2].tolist() == [[48, 48], [56, 80], [80, 56]]


def test_parity_without_the_val_data_compares_the_outputs_on_example_images_and_says_so(every_head):
    trained, result = every_head
    report = check_parity(trained, result)
    assert report.agrees and report.metrics_torch == {} and report.images == 2
    assert "not there" in report.data and "2 example images (random, 64 px) only" in report.data
    assert set(report.max_abs_diff) == set(EVERY_OUTPUT) and max(report.max_abs_diff.values()) < 1e-4


def test_a_file_exported_for_other_heads_is_refused_naming_the_outputs(every_head):
    trained, result = every_head
    heads = trained.model.heads
    other = nn.ModuleDict({**{task: head for task, head in heads.items() if task != "segnet"}, "extra": heads["cls"]})
    with pytest.raises(OutputMismatchError) as error:
        OnnxRunner(result.model_path, other)
    message = str(error.value)
    assert str(result.model_path) in message and "missing ['extra_logits']" in message
    assert "unexpected ['segnet_logits']" in message
    with pytest.raises(ExportedFileError, match="torch.jit.load cannot read it"):
        TorchScriptRunner(result.model_path, heads)
    # Some of the file's tasks (predict --tasks) when asked for: the others are neither required nor computed.
    some = nn.ModuleDict({task: heads[task] for task in ("cls", "vae")})
    runner = OnnxRunner(result.model_path, some, allow_unused=True)
    assert runner.output_names == ["cls_logits", "vae_image", "vae_mu", "vae_logvar"]
    assert set(runner(torch.rand(1, 3, 64, 64))) == {"cls", "vae"}


def test_torchscript_export_returns_the_same_names_and_numbers(tmp_path):
    # A head of each output structure (one tensor, one per level, several per head) keeps the trace quick.
    heads = {task: EVERY_HEAD[task] for task in ("cls", "unet", "yolo", "vae")}
    trained = trained_model(heads)
    result = export_model(trained, tmp_path / "model.torchscript.pt", format="torchscript")
    assert result.input_shape == ["batch", 3, "height", "width"]
    assert json.loads(result.sidecar_path.read_text())["outputs_note"].startswith("torch.jit.load")
    runner = TorchScriptRunner(result.model_path, trained.model.heads)
    image = torch.rand(3, 3, 96, 128, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = trained.model(image)
    named = runner.named(image)
    assert list(named) == ["cls_logits", "unet_logits", "yolo_8", "yolo_16", "yolo_32", "vae_image", "vae_mu",
                           "vae_logvar"]
    got = runner(image)
    for task, head in trained.model.heads.items():
        decoded_alike(head, head.decode(got[task]), head.decode(expected[task]))


def test_torchscript_of_segnet_is_a_named_error_pointing_to_onnx(tmp_path):
    trained = trained_model({"seg": {"type": "segnet", "convs_per_step": 1}})
    with pytest.raises(ExportError, match="TorchScript tracing fails.*--format onnx"):
        export_model(trained, tmp_path / "seg.torchscript.pt", format="torchscript")
    assert list(tmp_path.iterdir()) == []   # nothing half-written


class FlattenedClassifier(Head):
    """A classifier over the flattened stride-4 map: it only works at the size it was built for."""
    kind = "classification"

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(16 * 8 * 8, len(CLASSES))

    def forward(self, features, image):
        return self.linear(features[-1].flatten(1))


def test_a_size_the_export_cannot_follow_falls_back_to_a_static_one_with_a_warning(tmp_path, caplog):
    torch.manual_seed(0)
    model = MultiTaskModel(backbones.build("lenet5"), {"cls": FlattenedClassifier()})
    trained = trained_model({"cls": {"type": "classification"}}, backbone="lenet5", size=32, model=model)
    with caplog.at_level(logging.WARNING, logger="pipeline.inference.export"):
        result = export_model(trained, tmp_path / "flat.onnx")
    assert result.input_shape == ["batch", 3, 32, 32]
    assert len(result.fallbacks) == 1 and "batch/height/width" in result.fallbacks[0]
    assert "falling back to dynamic batch only" in caplog.text
    sidecar = json.loads(result.sidecar_path.read_text())
    assert sidecar["static_fallback"] == result.fallbacks and sidecar["input"]["size_rule"] == "fixed at 32 x 32"
    runner = OnnxRunner(result.model_path, trained.model.heads)
    image = torch.rand(5, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(runner(image)["cls"], trained.model(image)["cls"], rtol=0, atol=1e-5)
    with pytest.raises(InputShapeError, match=r"takes shape \['batch', 3, 32, 32\].*got \[1, 3, 64, 64\]"):
        runner(torch.rand(1, 3, 64, 64))


def test_a_static_batch_file_runs_any_batch_in_chunks_of_its_size(tmp_path):
    trained = trained_model({"cls": {"type": "classification"}, "seg": {"type": "unet", "decoder_channels": [4, 4]}},
                            backbone="lenet5", size=32)
    result = export_model(trained, tmp_path / "static.onnx", dynamic=False)
    assert result.input_shape == [2, 3, 32, 32] and result.fallbacks == []
    runner = OnnxRunner(result.model_path, trained.model.heads)
    image = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(9))
    got = runner(image)
    with torch.no_grad():
        expected = trained.model(image)
    for task in ("cls", "seg"):
        assert got[task].shape == expected[task].shape
        torch.testing.assert_close(got[task], expected[task], rtol=0, atol=1e-4)
    with pytest.raises(InputShapeError, match="got \\[2, 3, 64, 64\\]"):
        runner(torch.rand(2, 3, 64, 64))


# ---- the command and the MLflow-logged model, on the inference tests' tiny trained run ---------------------

def test_export_command_writes_the_file_and_sidecar_and_checks_parity_on_the_val_split(tiny_run, tmp_path, capsys):
    checkpoint = tmp_path / "last.pt"   # a copy, so the shared run's folder stays as other tests expect it
    shutil.copy(tiny_run.checkpoint, checkpoint)
    # Static, as a dynamic export of this ResNet takes half a minute here (every_head covers dynamic ONNX); a
    # batch fixed at 2 also makes the parity check run the val batches of 8 in chunks.
    assert main(["export", str(checkpoint), "--static", "--max-images", "8"]) == 0
    printed = capsys.readouterr().out
    assert (tmp_path / "last.onnx").is_file() and "parity: metrics equal to 3 decimals: yes" in printed
    for name in ["cls_logits", "seg_logits", "det_8", "det_16", "det_32", "recon_image", "cls/accuracy", "det/mAP"]:
        assert name in printed, name
    sidecar = json.loads((tmp_path / "last.onnx.json").read_text())
    assert sidecar["input"]["shape"] == [2, 3, 64, 64] and sidecar["checkpoint"] == str(checkpoint.resolve())
    parity = sidecar["parity"]
    assert parity["agrees"] and parity["images"] == 8 and max(parity["max_abs_diff"].values()) < 1e-3
    assert parity["metrics_export"].keys() == parity["metrics_torch"].keys()
    assert all(abs(parity["metrics_export"][k] - v) < 1e-4 for k, v in parity["metrics_torch"].items())

    # TorchScript's runner is checked against decoded predictions above; here the command's naming and flags.
    assert main(["export", str(checkpoint), "--format", "torchscript", "--no-check"]) == 0
    assert "parity: not checked" in capsys.readouterr().out
    sidecar = json.loads((tmp_path / "last.torchscript.pt.json").read_text())
    assert sidecar["input"]["shape"] == ["batch", 3, "height", "width"] and sidecar["parity"] is None


def test_export_command_does_not_overwrite_a_file_it_did_not_write(tiny_run, tmp_path, capsys):
    mine = tmp_path / "notes.onnx"
    mine.write_text("keep me")
    assert main(["export", str(tiny_run.checkpoint), "--out", str(mine), "--no-check"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(mine) in err and "not written by" in err and "Traceback" not in err
    assert mine.read_text() == "keep me" and not (tmp_path / "notes.onnx.json").exists()


def test_the_mlflow_logged_model_predicts_what_the_checkpoint_predicts(tiny_run, monkeypatch):
    import mlflow.pytorch

    monkeypatch.setenv("MLFLOW_TRACKING_URI", tiny_run.config["tracking"]["uri"])
    trained = load_trained(tiny_run.checkpoint)
    logged = mlflow.pytorch.load_model(f"runs:/{tiny_run.run_id}/model")
    image = torch.rand(3, 3, 64, 64, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        named = logged(image)
        expected = trained.model(image)
    assert sorted(named) == sorted(["cls_logits", "seg_logits", "det_8", "det_16", "det_32", "recon_image"])
    got = raw_outputs(trained.model.heads, named, (64, 64))
    for task, head in trained.model.heads.items():
        decoded_alike(head, head.decode(got[task]), head.decode(expected[task]))
