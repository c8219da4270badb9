"""`model.init`: every weight from a trained checkpoint, into the model the config builds: a float checkpoint
into a quantisation-aware model, with a clear error when the classes or the weights do not fit."""
from __future__ import annotations

import copy

import pytest
import torch

from pipeline.config.schema import parse_config
from pipeline.config.typed import ConfigError
from pipeline.engine.initial_weights import load_initial_weights
from pipeline.inference.trained import load_trained
from pipeline.model import build_model


def model_for(tiny_run, **model_changes):
    raw = copy.deepcopy(tiny_run.config)
    raw["model"].update(model_changes)
    config = parse_config(raw)
    return build_model(config.model, num_classes=len(load_trained(tiny_run.checkpoint).class_names))


def test_a_float_checkpoint_starts_a_quantisation_aware_model_from_its_weights(tiny_run):
    trained = load_trained(tiny_run.checkpoint)
    classes = trained.class_names
    model = model_for(tiny_run, qat={"bits": 2})
    load_initial_weights(model, str(tiny_run.checkpoint), classes, None)
    float_weights = trained.model.state_dict()
    mapped = 0
    for key, value in model.state_dict().items():
        plain = key.replace(".parametrizations.weight.original", ".weight")
        mapped += plain != key
        assert torch.equal(value, float_weights[plain]), key
    assert mapped > 10     # the quantised layers' weights came from the float ones


def test_other_classes_are_refused_naming_the_key(tiny_run):
    model = model_for(tiny_run)
    with pytest.raises(ConfigError, match=r"model.init: .* trained on classes .* expected the same classes"):
        load_initial_weights(model, str(tiny_run.checkpoint), ["a", "b", "c"], None)


def test_weights_of_another_model_are_refused_naming_the_key(tiny_run):
    classes = load_trained(tiny_run.checkpoint).class_names
    model = model_for(tiny_run, backbone={"name": "mobilenet_v2", "pretrained": False})
    with pytest.raises(ConfigError, match=r"model.init: .*do not fit the model this config builds"):
        load_initial_weights(model, str(tiny_run.checkpoint), classes, None)


def test_a_missing_file_is_refused_naming_the_key(tiny_run, tmp_path):
    with pytest.raises(ConfigError, match=r"model.init: .*missing.pt is not a file"):
        load_initial_weights(model_for(tiny_run), str(tmp_path / "missing.pt"), [], None)
