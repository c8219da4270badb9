"""The experiment config: one YAML file, validated into typed dataclasses.

Every default lives here, in one visible place. CLI overrides
(`key.path=value`) are applied to the raw YAML before validation, so they
are checked exactly like the file.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from datasets.transforms import AugmentOptions
from heads.registry import HEADS, head_class
from pipeline.typed_config import ConfigError, check_keys, convert, from_dict


@dataclass
class ShapesConfig:
    """Generate the synthetic shapes set next to the annotation files when they are absent."""
    train_images: int = 800
    val_images: int = 200
    seed: int = 0


@dataclass
class DataConfig:
    train: str                          # training split: a COCO annotation file, or a folder for imagefolder
    val: str                            # validation split, likewise
    format: str = "coco"                # coco | imagefolder (root/<class>/<image>, labels only)
    image_size: int = 128
    batch_size: int = 16
    num_workers: int = 2
    skip_invalid: bool = False          # skip (count and log) bad annotations/images instead of failing
    shapes: ShapesConfig | None = None
    augment: AugmentOptions = field(default_factory=AugmentOptions)


@dataclass
class BackboneConfig:
    name: str = "mobilenet_v2"
    pretrained: bool | str = False      # false | true | weights name (IMAGENET1K_V1) | state-dict file
    # Transfer learning. freeze: "none" | "all" | N = the first N stages (weights and BatchNorm statistics).
    freeze: Literal["none", "all"] | int = "none"
    unfreeze_every: int = 0             # progressive unfreezing: every K epochs the top frozen stage thaws; 0 = never
    stage_lr: list[float] | None = None # learning-rate multiplier per backbone stage, shallowest first (heads: 1.0)


@dataclass
class HeadConfig:
    type: str
    weight: float = 1.0                 # lambda of this task in the compound loss
    options: Any = None                 # the head's own Options dataclass, validated by type


@dataclass
class ModelConfig:
    heads: dict[str, HeadConfig]
    backbone: BackboneConfig = field(default_factory=BackboneConfig)


@dataclass
class OptimizerConfig:
    name: Literal["adamw", "adam", "sgd"] = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    momentum: float = 0.9               # sgd only


@dataclass
class SchedulerConfig:
    name: Literal["cosine", "constant"] = "cosine"
    warmup_epochs: float = 0.5


@dataclass
class TrainConfig:
    epochs: int = 10
    device: str = "auto"                # auto | cpu | cuda | cuda:N
    amp: Literal["auto", "fp32", "bf16", "fp16"] = "auto"   # auto: bf16 on CUDA when supported, fp32 on CPU
    grad_clip: float | None = 10.0
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)


@dataclass
class TrackingConfig:
    uri: str | None = None              # default: $MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db
    experiment: str = "default"
    run_name: str | None = None


@dataclass
class Config:
    model: ModelConfig
    data: DataConfig
    name: str = "experiment"
    seed: int = 0
    output_dir: str = "runs"             # checkpoints go to <output_dir>/<name>/<mlflow run id>/
    train: TrainConfig = field(default_factory=TrainConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)


RESERVED_HEAD_KEYS = ["type", "weight"]


def parse_heads(raw_heads: Any, source: str) -> dict[str, HeadConfig]:
    """Each head's keys besides type/weight are validated against that head type's Options."""
    if not isinstance(raw_heads, dict) or not raw_heads:
        raise ConfigError(f"{source}: model.heads: expected a mapping of task name -> head config, got {raw_heads!r}")
    heads = {}
    for task, raw in raw_heads.items():
        where = f"model.heads.{task}."
        if not isinstance(raw, dict) or "type" not in raw:
            raise ConfigError(f"{source}: {where}type: required key is missing (one of {', '.join(sorted(HEADS))})")
        if raw["type"] not in HEADS:
            raise ConfigError(f"{source}: {where}type: unknown head type {raw['type']!r}; valid: {', '.join(sorted(HEADS))}")
        options_cls = head_class(raw["type"]).Options
        option_names = [f.name for f in dataclasses.fields(options_cls)]
        check_keys(raw, RESERVED_HEAD_KEYS + option_names, where, source)
        options = from_dict(options_cls, {k: v for k, v in raw.items() if k not in RESERVED_HEAD_KEYS}, where, source)
        weight = convert(float, raw.get("weight", 1.0), f"{where}weight", source)
        heads[task] = HeadConfig(type=raw["type"], weight=weight, options=options)
    return heads


def parse_config(raw: dict, source: str = "config") -> Config:
    raw = copy.deepcopy(raw)
    model = raw.get("model")
    if not isinstance(model, dict) or "heads" not in model:
        raise ConfigError(f"{source}: model.heads: required key is missing")
    heads = parse_heads(model.pop("heads"), source)
    model["heads"] = {}  # validated above; keep the generic pass from re-reading them
    config = from_dict(Config, raw, "", source)
    config.model.heads = heads
    return config


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """`a.b.c=value` sets raw['a']['b']['c']; the value is parsed as YAML (numbers, booleans, lists)."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key.path=value")
        node = raw
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {part} is not a mapping")
        node[parts[-1]] = yaml.safe_load(value)
    return raw


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    path = Path(path)
    with path.open() as f:
        raw = yaml.safe_load(f) or {}
    return parse_config(apply_overrides(raw, list(overrides)), source=str(path))


def config_to_dict(config: Config) -> dict:
    """Plain data in the YAML file's own shape: `parse_config(config_to_dict(c)) == c`."""
    raw = dataclasses.asdict(config)
    raw["model"]["heads"] = {
        task: {"type": head.type, "weight": head.weight, **dataclasses.asdict(head.options)}
        for task, head in config.model.heads.items()
    }
    return raw
