"""Knowledge distillation from the config (`model.distill`): the per-kind losses (zero at agreement, the
temperature, the ensemble average, the detection layout check), a distilled run that leaves its teacher alone,
an exact resume with feature adapters, and bad teachers or values refused before training."""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import shutil
from dataclasses import dataclass
from typing import Any
from pathlib import Path

import pytest
import torch

from heads import registry as head_registry
from pipeline.compression.distill_losses import KINDS, HeadOutputs, classification_loss, detection_loss
from pipeline.compression.distillation import load_distiller
from pipeline.config.schema import parse_config
from pipeline.config.typed import ConfigError
from pipeline.engine.checkpoint import load_checkpoint
from pipeline.engine.trainer import DataInfo, Trainer
from pipeline.inference.trained import load_trained
from pipeline.jobs import train as train_job
from pipeline.jobs.train import run_training
from pipeline.model import build_model
from pipeline.runtime.device import select_precision
from support import CHANNELS, STRIDES, batch_loader, fake_features, make_batch

SMALL_DECODER = [16, 8, 8, 8, 8]
HEADS = {   # (type, options): one of each head kind, small
    "classification": ("classification", {}),
    "multi_label": ("classification", {"multi_label": True}),
    "segmentation": ("unet", {"decoder_channels": SMALL_DECODER}),
    "yolo": ("yolo", {"neck_channels": 16}),
    "yolo_v1": ("yolo_v1", {"hidden_channels": 16}),
    "ssd": ("ssd", {"extra_channels": 16}),
    "ae": ("ae", {"decoder_channels": SMALL_DECODER}),
    "vae": ("vae", {"decoder_channels": SMALL_DECODER, "latent_channels": 4}),
}


def make_head(name: str):
    kind, options = HEADS[name]
    torch.manual_seed(0)
    head = head_registry.build(kind, CHANNELS, STRIDES, 3, head_registry.head_class(kind).Options(**options))
    return head.eval()


def distill(head, student, teachers, temperature: float = 2.0) -> torch.Tensor:
    return KINDS[head.kind].loss(HeadOutputs(head, student), [HeadOutputs(head, t) for t in teachers], temperature)


def perturbed(outputs: Any, generator: torch.Generator) -> Any:
    """The same output structure with unit Gaussian noise added to every tensor."""
    if isinstance(outputs, torch.Tensor):
        return outputs + torch.randn(outputs.shape, generator=generator)
    if isinstance(outputs, list):
        return [perturbed(o, generator) for o in outputs]
    if dataclasses.is_dataclass(outputs):
        return dataclasses.replace(outputs, **{f.name: perturbed(getattr(outputs, f.name), generator)
                                               for f in dataclasses.fields(outputs)})
    return outputs


# ---- the losses --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(HEADS))
def test_each_kind_is_zero_when_the_student_agrees_and_positive_otherwise(name):
    head = make_head(name)
    image = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        teacher = head(fake_features(2, 64, seed=0), image)
        same = head(fake_features(2, 64, seed=0), image)      # equal values, other tensors
    other = perturbed(teacher, torch.Generator().manual_seed(1))
    assert abs(float(distill(head, same, [teacher]))) < 1e-6
    assert float(distill(head, other, [teacher])) > 1e-3


def test_the_classification_loss_is_t_squared_kl_and_its_gradient_scales_as_the_hand_formula():
    head = make_head("classification")
    student_logits, teacher_logits = [1.5, -0.5], [0.2, 0.9]

    def by_hand(temperature: float) -> tuple[float, float]:
        """T^2 KL(p || q) for two classes, and its derivative by the first student logit: T (q1 - p1)."""
        p1 = 1 / (1 + math.exp(-(teacher_logits[0] - teacher_logits[1]) / temperature))
        q1 = 1 / (1 + math.exp(-(student_logits[0] - student_logits[1]) / temperature))
        kl = p1 * math.log(p1 / q1) + (1 - p1) * math.log((1 - p1) / (1 - q1))
        return temperature ** 2 * kl, temperature * (q1 - p1)

    for temperature in (1.0, 4.0, 100.0):
        student = torch.tensor([student_logits], dtype=torch.float64, requires_grad=True)   # float64: exact to 1e-6
        teacher = torch.tensor([teacher_logits], dtype=torch.float64)
        loss = classification_loss(HeadOutputs(head, student), [HeadOutputs(head, teacher)], temperature)
        loss.backward()
        expected_loss, expected_grad = by_hand(temperature)
        assert loss.item() == pytest.approx(expected_loss, rel=1e-6)
        assert student.grad[0, 0].item() == pytest.approx(expected_grad, rel=1e-6)
        assert student.grad[0, 1].item() == pytest.approx(-expected_grad, rel=1e-6)
    # at a high temperature the gradient tends to (difference of the logit gaps) / 4, whatever T (Hinton's limit)
    limit = ((student_logits[0] - student_logits[1]) - (teacher_logits[0] - teacher_logits[1])) / 4
    assert by_hand(100.0)[1] == pytest.approx(limit, rel=1e-2)


def test_an_ensemble_teaches_the_mean_of_its_probabilities():
    head = make_head("classification")
    student, first, second = torch.randn(3, 4, 3, generator=torch.Generator().manual_seed(0))
    mean = (first.softmax(1) + second.softmax(1)) / 2
    expected = (mean * (mean.log() - student.log_softmax(1))).sum(1).mean()
    assert float(distill(head, student, [first, second], temperature=1.0)) == pytest.approx(float(expected), rel=1e-5)


def test_detection_distils_boxes_only_where_the_teacher_is_confident():
    head = make_head("yolo")
    with torch.no_grad():
        teacher = head(fake_features(2, 64, seed=0), torch.rand(2, 3, 64, 64))
    level = teacher.levels[0]
    level[..., 4] = -8.0                  # nowhere confident ...
    level[0, 0, 2, 3, 4] = 8.0            # ... but at one candidate
    elsewhere, there = copy.deepcopy(teacher), copy.deepcopy(teacher)
    elsewhere.levels[0][1, 1, 4, 4, :4] += 1.0
    there.levels[0][0, 0, 2, 3, :4] += 1.0
    outputs = lambda o: HeadOutputs(head, o)  # noqa: E731
    assert float(detection_loss(outputs(elsewhere), [outputs(teacher)], 1.0)) < 1e-6
    assert float(detection_loss(outputs(there), [outputs(teacher)], 1.0)) > 1e-2


def test_detection_refuses_a_teacher_with_another_candidate_layout():
    yolo, yolo_v1 = make_head("yolo"), make_head("yolo_v1")
    coarse = head_registry.build("yolo", CHANNELS, STRIDES, 3, head_registry.head_class("yolo").Options(
        strides=[16, 32], neck_channels=16))
    mismatch = KINDS["detection"].mismatch
    assert mismatch(yolo, make_head("yolo")) is None
    assert "strides" in mismatch(yolo, coarse) and "(16, 32)" in mismatch(yolo, coarse)
    assert "yolo_v1" in mismatch(yolo, yolo_v1)
    with torch.no_grad():
        yolo.anchor_sizes.mul_(2)     # other (fitted) anchors
    assert mismatch(yolo, make_head("yolo")) is not None


# ---- runs --------------------------------------------------------------------------------------------------

@dataclass
class Teacher:
    folder: Path
    checkpoint: Path


def tiny_config(folder: Path, name: str, heads: dict, backbone: str = "mobilenet_v3_small", **model) -> dict:
    data = folder / "data"     # one shapes set for every run of the module
    return {
        "name": name, "seed": 3, "output_dir": str(folder / "runs"),
        "data": {"train": str(data / "train/annotations.json"), "val": str(data / "val/annotations.json"),
                 "image_size": 32, "batch_size": 8, "num_workers": 0,
                 "shapes": {"train_images": 16, "val_images": 4}},
        "model": {"backbone": {"name": backbone, "pretrained": False}, "heads": heads, **model},
        "train": {"epochs": 1, "device": "cpu", "scheduler": {"name": "constant", "warmup_epochs": 0}},
        "tracking": {"uri": f"sqlite:///{folder}/mlflow.db", "experiment": "distill"},
    }


TEACHER_HEADS = {"cls": {"type": "classification"}, "det": {"type": "yolo", "neck_channels": 16},
                 "recon": {"type": "ae", "decoder_channels": SMALL_DECODER}}


@pytest.fixture(scope="module", autouse=True)
def without_the_run_end():
    """The MLflow model and the run report at a run's end take most of a tiny run's time; nothing here reads them."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(train_job, "record_run_end", lambda *args: None)
        yield


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Teacher:
    folder = tmp_path_factory.mktemp("distill")
    result, _ = run_training(parse_config(tiny_config(folder, "teacher", TEACHER_HEADS)))
    return Teacher(folder, Path(result.checkpoint))


def student_config(teacher: Teacher, name: str, heads: dict, distill: dict, **options) -> dict:
    return tiny_config(teacher.folder, name, heads, distill={"teacher": str(teacher.checkpoint), **distill},
                       **options)


def recording_trainers(monkeypatch) -> list:
    made = []

    class Recorded(train_job.Trainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(train_job, "Trainer", Recorded)
    return made


def logged_values(run_folder: Path) -> dict[str, list[float]]:
    values: dict[str, list[float]] = {}
    for line in (run_folder / "metrics.jsonl").read_text().splitlines():
        event = json.loads(line)
        for key, value in event.get("values", {}).items():
            values.setdefault(key, []).append(value)
    return values


def test_a_distilled_run_logs_the_distill_terms_and_leaves_the_teacher_alone(teacher, monkeypatch):
    trainers = recording_trainers(monkeypatch)
    heads = {"cls": {"type": "classification"}, "det": {"type": "yolo", "neck_channels": 16}}
    config = parse_config(student_config(teacher, "student", heads, {"alpha": 0.7}))
    result, _ = run_training(config)

    distiller = trainers[0].distiller
    assert distiller.tasks == {"cls": "classification", "det": "detection"}
    logged = logged_values(result.checkpoint.parent)
    for key in ("train/cls/distill", "train/det/distill", "train/cls/ce", "train/det/obj"):
        assert logged.get(key) and all(math.isfinite(v) for v in logged[key]), key
    assert all(v > 0 for v in logged["train/cls/distill"])

    used = distiller.teachers[0].model
    fresh = load_trained(teacher.checkpoint).model
    assert not used.training and not any(p.requires_grad for p in used.parameters())
    assert all(torch.equal(value, fresh.state_dict()[key]) for key, value in used.state_dict().items())
    optimised = {id(p) for group in trainers[0].optimizer.param_groups for p in group["params"]}
    assert not optimised & {id(p) for p in used.parameters()}

    saved = load_checkpoint(result.checkpoint)
    assert saved["model"].keys() == build_model(config.model, num_classes=3).state_dict().keys()
    assert saved["distill"] == {"adapters": {}}
    assert saved["config"]["model"]["distill"]["teacher"] == str(teacher.checkpoint)


def test_a_run_with_feature_adapters_resumed_from_epoch_one_ends_bitwise_equal(teacher, tmp_path):
    heads = {"cls": {"type": "classification", "dropout": 0.3}}     # dropout draws from the RNG a resume restores
    raw = student_config(teacher, "features", heads, {"features": {"stages": [-1], "weight": 0.5}},
                         backbone="lenet5")
    raw["train"].update(epochs=2, deterministic=True, checkpoint={"keep_last": 2})
    straight, _ = run_training(parse_config(raw))
    expected = load_checkpoint(straight.checkpoint)
    assert set(expected["distill"]["adapters"]) == {"teacher0_pair0.weight", "teacher0_pair0.bias"}
    assert "distill" in [group.get("name") for group in expected["optimizer"]["param_groups"]]
    assert not any("pair" in key for key in expected["model"])
    logged = logged_values(straight.checkpoint.parent)
    assert logged.get("train/features") and logged.get("train/cls/distill")

    # the straight run's epoch-1 checkpoint, continued in a folder of its own
    epoch_one = tmp_path / "resumed" / "last.pt"
    epoch_one.parent.mkdir()
    shutil.copyfile(straight.checkpoint.parent / f"step-{expected['position']['global_step'] // 2}.pt", epoch_one)
    at_epoch_one = load_checkpoint(epoch_one)
    assert at_epoch_one["position"]["epoch"] == 1
    weight = "teacher0_pair0.weight"    # the adapter trains: epoch 2 moved it
    assert not torch.equal(at_epoch_one["distill"]["adapters"][weight], expected["distill"]["adapters"][weight])
    resumed, _ = run_training(parse_config(raw), resume=str(epoch_one))
    actual = load_checkpoint(resumed.checkpoint)
    assert actual["position"] == expected["position"]
    for part in ("model", "ema"):
        if expected[part] is not None:
            assert all(torch.equal(actual[part][k], v) for k, v in expected[part].items()), part
    assert all(torch.equal(actual["distill"]["adapters"][k], v) for k, v in expected["distill"]["adapters"].items())
    assert actual["metrics"] == expected["metrics"]


@pytest.mark.parametrize("weighting", ["static", "uncertainty", "dwa", "gradnorm", "pcgrad"])
def test_every_weighting_strategy_trains_the_adapters_and_sees_the_distill_term(teacher, tmp_path, weighting):
    names = load_checkpoint(teacher.checkpoint)["class_names"]
    heads = {"cls": {"type": "classification", "dropout": 0.0}, "recon": {"type": "ae", "decoder_channels": [8, 8]}}
    raw = student_config(teacher, "weighted", heads, {"features": {"stages": [-1]}}, backbone="lenet5",
                         weighting={"name": weighting})
    raw["train"]["optimizer"] = {"name": "sgd", "lr": 0.05}
    config = parse_config(raw)
    torch.manual_seed(0)
    model = build_model(config.model, num_classes=len(names))
    distiller = load_distiller(config.model.distill, model, names, torch.device("cpu"), None)
    trainer = Trainer(config, model, batch_loader([make_batch(size=32, batch=4, seed=i) for i in range(2)]),
                      [make_batch(size=32, batch=4, seed=9)], DataInfo(names, [1, 2, 3]), torch.device("cpu"),
                      select_precision("fp32", torch.device("cpu")), tmp_path, distiller=distiller)
    before = [p.detach().clone() for p in distiller.parameters()]
    values = trainer.step.run([make_batch(size=32, batch=4, seed=0)], trainer.state)
    assert {"train/cls/distill", "train/recon/distill", "train/features"} <= set(values)
    assert values["train/cls/loss"] == pytest.approx(values["train/cls/ce"] + values["train/cls/distill"], rel=1e-5)
    assert all(not torch.equal(b, p) for b, p in zip(before, distiller.parameters()))


def other_classes(teacher: Teacher, folder: Path) -> Path:
    state = load_checkpoint(teacher.checkpoint)
    state["class_names"] = list(reversed(state["class_names"]))
    path = folder / "other-classes.pt"
    torch.save(state, path)
    return path


@pytest.mark.parametrize("case", ["classes", "task", "layout"])
def test_a_teacher_that_cannot_teach_fails_before_training_naming_the_key_and_the_file(teacher, tmp_path, case):
    heads = {"cls": {"type": "classification"}}
    distill: dict = {}
    if case == "classes":
        distill["teacher"] = str(other_classes(teacher, tmp_path))
        key, file = "model.distill.teacher", distill["teacher"]
    elif case == "task":
        heads["seg"] = {"type": "unet", "decoder_channels": SMALL_DECODER}
        distill["tasks"] = ["cls", "seg"]
        key, file = r"model.distill.tasks\[1\]: task 'seg'", str(teacher.checkpoint)
    else:
        heads["det"] = {"type": "yolo", "neck_channels": 16, "strides": [16, 32]}
        key, file = "model.distill.teacher", str(teacher.checkpoint)
    raw = student_config(teacher, f"refused-{case}", heads, distill)
    with pytest.raises(ConfigError, match=key) as error:
        run_training(parse_config(raw))
    assert file in str(error.value)
    assert not (teacher.folder / "runs" / f"refused-{case}").exists()     # no run folder, no run


@pytest.mark.parametrize("key, value, expected", [
    ("temperature", 0, "model.distill.temperature: expected > 0"),
    ("temperature", -1, "model.distill.temperature: expected > 0"),
    ("alpha", 1.5, r"model.distill.alpha: expected a weight in \[0, 1\]"),
    ("alpha", -0.1, r"model.distill.alpha: expected a weight in \[0, 1\]"),
    ("tasks", ["cls", "nope"], r"model.distill.tasks\[1\]: no task 'nope'"),
    ("teacher", [], "model.distill.teacher: expected a checkpoint path"),
])
def test_bad_distill_values_are_config_errors_naming_the_key(tmp_path, key, value, expected):
    raw = tiny_config(tmp_path, "bad", {"cls": {"type": "classification"}},
                      distill={"teacher": "runs/x/best.pt", key: value})
    with pytest.raises(ConfigError, match=expected):
        parse_config(raw)
