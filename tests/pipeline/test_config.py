from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from heads.unet import UNetOptions
from pipeline.config.schema import apply_overrides, config_to_dict, load_config, parse_config
from pipeline.config.typed import ConfigError

REPO = Path(__file__).resolve().parents[2]


def minimal() -> dict:
    return {
        "data": {"train": "t/annotations.json", "val": "v/annotations.json"},
        "model": {"heads": {"seg": {"type": "unet", "weight": 2, "decoder_channels": [8, 8, 8, 8, 8]}}},
    }


def test_shipped_configs_load():
    for path in sorted((REPO / "configs").rglob("*.yaml")):
        load_config(path)


def test_heads_are_validated_into_their_own_options():
    config = parse_config(minimal())
    head = config.model.heads["seg"]
    assert head.weight == 2.0 and isinstance(head.weight, float)
    assert head.options == UNetOptions(decoder_channels=[8, 8, 8, 8, 8])


def test_typo_names_the_file_the_key_and_the_nearest_valid_key(tmp_path):
    raw = minimal()
    raw["train"] = {"epochz": 3}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ConfigError, match=r"exp\.yaml: train\.epochz: unknown key\. Did you mean 'epochs'\?"):
        load_config(path)


def test_typo_inside_a_head_suggests_that_heads_option():
    raw = minimal()
    raw["model"]["heads"]["seg"]["decoder_channel"] = [4]
    with pytest.raises(ConfigError, match=r"model\.heads\.seg\.decoder_channel: unknown key\. Did you mean 'decoder_channels'"):
        parse_config(raw)


def test_wrong_type_and_unknown_head_type_are_errors():
    raw = minimal()
    raw["train"] = {"epochs": "ten"}
    with pytest.raises(ConfigError, match=r"train\.epochs: expected int, got 'ten'"):
        parse_config(raw)
    raw = minimal()
    raw["model"]["heads"]["seg"]["type"] = "unett"
    with pytest.raises(ConfigError, match=r"unknown head type 'unett'; valid: .*unet"):
        parse_config(raw)


def test_overrides_are_parsed_as_yaml_and_validated():
    raw = apply_overrides(minimal(), ["train.epochs=3", "train.optimizer.lr=0.01", "model.backbone.pretrained=false"])
    config = parse_config(raw)
    assert (config.train.epochs, config.train.optimizer.lr, config.model.backbone.pretrained) == (3, 0.01, False)
    with pytest.raises(ConfigError, match="unknown key"):
        parse_config(apply_overrides(minimal(), ["train.optimiser.lr=0.1"]))


def test_round_trip_through_plain_data():
    config = parse_config(minimal())
    assert parse_config(yaml.safe_load(yaml.safe_dump(config_to_dict(config)))) == config


def test_numbers_as_people_write_them_are_numbers_in_yaml_and_overrides(tmp_path):
    raw = minimal()
    raw["train"] = {"optimizer": {"weight_decay": "1e-4"}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw).replace("'1e-4'", "1e-4"))  # unquoted, as a person types it
    assert "weight_decay: 1e-4" in path.read_text()
    config = load_config(path, ["train.optimizer.lr=3e-4", "train.grad_clip=1e5"])
    assert config.train.optimizer.weight_decay == 1e-4 and config.train.optimizer.lr == 3e-4
    assert config.train.grad_clip == 100000.0


def test_a_typo_inside_an_optional_section_names_the_key_and_the_nearest_one():
    raw = minimal()
    raw["data"]["shapes"] = {"train_imagez": 10}
    with pytest.raises(ConfigError, match=r"data\.shapes\.train_imagez: unknown key\. Did you mean 'train_images'"):
        parse_config(raw)


def test_a_split_can_name_its_images_folder_and_the_image_policy_is_validated():
    raw = minimal()
    raw["data"]["train"] = {"annotations": "annotations/instances_train2017.json", "images": "train2017"}
    config = parse_config(raw)
    assert config.data.train.annotations == "annotations/instances_train2017.json"
    assert config.data.train.images == "train2017"
    assert parse_config(config_to_dict(config)) == config
    raw["data"]["intensity"] = [100, 10]
    with pytest.raises(ConfigError, match=r"data\.intensity: expected auto, dataset or a range \[lo, hi\] with hi > lo"):
        parse_config(raw)
