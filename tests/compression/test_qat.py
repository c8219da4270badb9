"""Quantisation-aware training from the config (`model.qat`): a ternary run trains, its checkpoint reloads, and
its exported ONNX file holds exactly three values per output channel in every quantised layer."""
from __future__ import annotations

import copy

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from pipeline.compression.output_layers import contract_layers
from pipeline.config.schema import parse_config
from pipeline.config.typed import ConfigError
from pipeline.inference.export import export_model
from pipeline.inference.parity import check_parity
from pipeline.inference.trained import load_trained
from pipeline.jobs.train import run_training
from pipeline.model import build_model


def _ternary_config(tiny_run, folder) -> dict:
    raw = copy.deepcopy(tiny_run.config)
    raw.update(name="ternary", output_dir=str(folder / "runs"))
    raw["model"]["heads"] = {"cls": {"type": "classification"}, "det": {"type": "yolo"}}
    raw["model"]["qat"] = {"bits": 2}
    raw["train"]["epochs"] = 1
    return raw


def test_a_ternary_run_exports_three_values_per_output_channel(tiny_run, tmp_path):
    config = parse_config(_ternary_config(tiny_run, tmp_path))
    result, _ = run_training(config)
    trained = load_trained(result.checkpoint)           # the parametrized weights reload into a fresh model
    keep = set(contract_layers(trained.model, config.model, len(trained.class_names), 3))
    exported = export_model(trained, tmp_path / "ternary.onnx", dynamic=False)
    weights = {init.name: numpy_helper.to_array(init) for init in onnx.load(str(exported.model_path)).graph.initializer}
    quantised = [name for name, module in trained.model.named_modules()
                 if isinstance(module, torch.nn.Conv2d) and name not in keep]
    checked = 0
    for name, array in weights.items():
        layer = name.removeprefix("model.").rsplit(".", 1)[0]    # the export wraps the model as `model`
        if array.ndim == 4 and array.shape[0] > 1 and layer not in keep:
            for channel in array.reshape(array.shape[0], -1):
                values = np.unique(channel)
                assert len(values) <= 3 and (len(values) < 3 or values[1] == 0), name
            checked += 1
    assert checked >= len(quantised) > 10
    # Baking the export's copy leaves the trained model whole (deepcopy shares the parametrized class), and the
    # quantiser it runs gives what the file holds: the export command's parity check.
    assert check_parity(trained, exported, max_images=4).agrees


def test_qat_keeps_the_first_convolution_and_the_output_layers_in_float(tiny_run):
    raw = copy.deepcopy(tiny_run.config)
    raw["model"]["qat"] = {"bits": 1}
    config = parse_config(raw)
    model = build_model(config.model, num_classes=3)
    parametrized = {name for name, module in model.named_modules()
                    if torch.nn.utils.parametrize.is_parametrized(module, "weight")}
    keep = contract_layers(model, config.model, 3, 3)
    assert "backbone.stages.0.0" in keep and "heads.cls.classifier.3" in keep
    assert {f"heads.det.predictors.{i}" for i in range(3)} <= set(keep)
    assert not parametrized & set(keep) and len(parametrized) > 20


def test_an_unsupported_bit_width_is_a_named_config_error(tiny_run):
    raw = copy.deepcopy(tiny_run.config)
    raw["model"]["qat"] = {"bits": 3}
    with pytest.raises(ConfigError, match="model.qat.bits"):
        parse_config(raw)
