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

from datasets.augment_config import AugmentContext, AugmentError, parse_augment
from datasets.image_io import ImagePolicy
from datasets.mixture import MixtureSource
from datasets.transforms import AugmentOptions
from heads.registry import HEADS, head_class
from pipeline.config.ranges import check_ranges
from pipeline.config.typed import ConfigError, check_keys, convert, from_dict
from pipeline.config.yaml_loader import safe_load
from pipeline.weighting.registry import WeightingConfig, parse_weighting, weighting_to_dict


@dataclass
class ShapesConfig:
    """Generate the synthetic shapes set next to the annotation files when they are absent."""
    train_images: int = 800
    val_images: int = 200
    seed: int = 0
    max_shapes: int = 4    # shapes per image: 1..max_shapes (1: one object per image, a clean classification set)


@dataclass
class ShapesVariantsConfig:
    """Generate the shapes set split three ways under `root` (for a mixture): root/<split>/coco (boxes only),
    root/<split>/masks (a mask folder) and root/<split>/images (no labels)."""
    root: str
    train_images: int = 600
    val_images: int = 150
    seed: int = 0


@dataclass
class SplitPaths:
    """A split whose images are not where its format looks by default: the standard COCO layout
    (`annotations/instances_train2017.json` + `train2017/`), or any "annotations/ + images/" export."""
    annotations: str                    # annotation file (coco, yolo data.yaml, voc list) or dataset folder
    images: str | None = None           # the images folder; None: the format's default


@dataclass
class DataConfig:
    # One dataset: train + val. A mixture of datasets that each label some tasks: sources (then no train/val).
    # A split is a path (COCO annotation file with images beside it, or a folder for the other formats) or
    # {annotations: ..., images: ...}.
    train: str | SplitPaths | None = None
    val: str | SplitPaths | None = None
    format: str = "coco"                # a datasets.build.FORMATS key: coco | imagefolder | masks | images | ...
    sources: list[MixtureSource] = field(default_factory=list)
    epoch_length: int | None = None     # mixture: samples per epoch (default: all sources' total)
    image_size: int = 128
    resize: Literal["stretch", "letterbox"] = "stretch"  # letterbox: keep the aspect ratio, pad the short side
    batch_size: int = 16
    num_workers: int = 2
    skip_invalid: bool = False          # skip (count and log) bad annotations/images instead of failing
    # How files become pixels (datasets/image_io.py). intensity: auto (8-bit / 255; other depths: per-image
    # percentile stretch) | dataset (one range from the training split, kept in the checkpoint) | [lo, hi].
    intensity: Literal["auto", "dataset"] | list[float] = "auto"
    channels: int = 3                   # 3: grey replicated, alpha composited; 1 or N: the backbone is adapted
    alpha_background: float = 0.0       # grey level in [0, 1] shown through transparent pixels
    exif_orientation: bool = True       # apply the EXIF orientation tag, to images and masks alike
    shapes: ShapesConfig | None = None
    shapes_variants: ShapesVariantsConfig | None = None
    augment: AugmentOptions = field(default_factory=AugmentOptions)

    def image_policy(self) -> ImagePolicy:
        intensity = self.intensity if isinstance(self.intensity, str) else tuple(self.intensity)
        return ImagePolicy(intensity=intensity, channels=self.channels, alpha_background=self.alpha_background,
                           exif_orientation=self.exif_orientation)


def split_paths(split: str | SplitPaths) -> tuple[Path, Path | None]:
    """(annotations, images folder or None) of a data.train / data.val entry."""
    if isinstance(split, SplitPaths):
        return Path(split.annotations), Path(split.images) if split.images else None
    return Path(split), None


def check_data(data: DataConfig, source: str) -> None:
    if data.sources and (data.train or data.val):
        raise ConfigError(f"{source}: data.sources: give either data.train and data.val (one dataset) or "
                          "data.sources (a mixture), not both")
    if not data.sources and not (data.train and data.val):
        missing = "data.train" if not data.train else "data.val"
        raise ConfigError(f"{source}: {missing}: required key is missing (or list the datasets under data.sources)")
    if isinstance(data.intensity, list) and (len(data.intensity) != 2 or not data.intensity[1] > data.intensity[0]):
        raise ConfigError(f"{source}: data.intensity: expected auto, dataset or a range [lo, hi] with hi > lo, "
                          f"got {data.intensity}")


@dataclass
class BackboneConfig:
    name: str = "mobilenet_v2"
    pretrained: bool | str = False      # false | true | weights name (IMAGENET1K_V1) | state-dict file
    # Transfer learning. freeze: "none" | "all" | N = the first N stages (weights and BatchNorm statistics).
    freeze: Literal["none", "all"] | int = "none"
    unfreeze_every: int = 0             # progressive unfreezing: every K epochs the top frozen stage thaws; 0 = never
    stage_lr: list[float] | None = None # learning-rate multiplier per backbone stage, shallowest first (heads: 1.0)
    output_stride: int = 32             # 32 | 16 | 8: the deepest stages dilate instead of downsampling (DeepLab)


@dataclass
class HeadConfig:
    type: str
    weight: float = 1.0                 # lambda of this task in the compound loss
    options: Any = None                 # the head's own Options dataclass, validated by type


@dataclass
class QATConfig:
    """Quantisation-aware training: every convolution and linear weight is quantised in the forward pass and
    trained through it (pipeline/compression/weight_quantisers.py)."""
    bits: int = 8                       # 8 | 4: uniform per output channel; 2: ternary {-s, 0, s}; 1: binary {-s, s}
    full_precision_ends: bool = True    # keep the first convolution and the heads' output layers in float


@dataclass
class DistillFeaturesConfig:
    """FitNets hints: each chosen backbone stage of the student, through a trained 1x1 adapter, regresses the
    teacher's map of that stage."""
    stages: list[int] = field(default_factory=lambda: [-1])   # backbone stage indices (negative: from the deepest)
    weight: float = 1.0                 # the `features` term = weight x the summed per-stage MSE


@dataclass
class DistillConfig:
    """Knowledge distillation: a trained teacher (or an ensemble, its outputs averaged) supervises the student
    (pipeline/compression/distillation.py)."""
    teacher: str | list[str]            # checkpoint path or runs:/<id>; a list: an ensemble
    temperature: float = 4.0            # softens the softmax / sigmoid targets of classification and segmentation
    alpha: float = 0.5                  # task loss = (1 - alpha) x the head's own + alpha x distillation
    tasks: list[str] | None = None      # null: every task the teacher also has with the same head kind
    features: DistillFeaturesConfig | None = None   # null: outputs only


@dataclass
class ModelConfig:
    heads: dict[str, HeadConfig]
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    # How the task losses are combined: {name: static | uncertainty | dwa | gradnorm | pcgrad, ...its options}
    weighting: WeightingConfig = field(default_factory=WeightingConfig)
    qat: QATConfig | None = None        # null: float weights
    distill: DistillConfig | None = None    # null: no teacher
    # Every weight (heads too) from a trained checkpoint of this pipeline, path or runs:/<id>: fine-tuning after
    # `prune`, QAT from a float model (pipeline/engine/initial_weights.py). null: backbone.pretrained alone.
    init: str | None = None


@dataclass
class OptimizerConfig:
    name: Literal["adamw", "adam", "sgd", "rmsprop"] = "adamw"
    lr: float = 1e-3                    # base learning rate (backbone stages: times model.backbone.stage_lr)
    weight_decay: float | None = None   # penalty strength lambda; null: by optimiser, see default_weight_decay
    # l2: the optimiser's own weight decay (decoupled for AdamW); l1: lambda * sum|w| added to the loss;
    # elastic_net: lambda * (l1_ratio * sum|w| + (1 - l1_ratio) / 2 * sum w^2) added to the loss.
    penalty: Literal["l2", "l1", "elastic_net"] = "l2"
    # false: the penalty spares biases and norm scales/shifts (every 1-D parameter), as timm does; true: all
    decay_norm_and_bias: bool = False
    l1_ratio: float = 0.5               # elastic_net only
    momentum: float = 0.9               # sgd, rmsprop
    nesterov: bool = True               # sgd only (needs momentum > 0)
    betas: tuple[float, float] = (0.9, 0.999)   # adam, adamw
    eps: float = 1e-8                   # adam, adamw, rmsprop

    def __post_init__(self) -> None:
        # Resolved here, so the value used is the one recorded (resolved config, MLflow params, checkpoint).
        if self.weight_decay is None:
            self.weight_decay = self.default_weight_decay(self.name)

    @staticmethod
    def default_weight_decay(name: str) -> float:
        """AdamW's decay is decoupled: each step shrinks w by lr x weight_decay, so with lr 1e-3 a coupled-style
        1e-4 is 1e-7 a step, i.e. off; 0.05 is timm's usual (ConvNeXt, DeiT). sgd, adam and rmsprop add
        weight_decay x w to the gradient (coupled l2), where 1e-4 is the usual ImageNet value."""
        return 0.05 if name == "adamw" else 1e-4


@dataclass
class SchedulerConfig:
    # Every schedule is stepped per optimiser step, starts with `warmup_epochs` of linear warm-up, and scales
    # each parameter group's own lr, so per-stage multipliers hold throughout.
    name: Literal["cosine", "constant", "step", "multistep", "linear", "inverse_sqrt", "plateau"] = "cosine"
    warmup_epochs: float = 0.5
    min_lr_ratio: float = 0.0           # cosine, linear: floor of the decay, as a fraction of the base lr
    step_epochs: float = 30.0           # step: multiply by gamma every step_epochs
    milestones: list[float] = field(default_factory=list)  # multistep: epochs at which to multiply by gamma
    gamma: float = 0.1                  # step, multistep, plateau
    patience: int = 2                   # plateau: epochs without improvement of train.monitor before decaying


@dataclass
class CheckpointConfig:
    every_steps: int = 0                # also write last.pt every N optimiser steps (0: at epoch ends only)
    keep_last: int = 0                  # also keep the last K checkpoints as step-<global step>.pt (0: none)


@dataclass
class EarlyStoppingConfig:
    patience: int = 0                   # stop after this many epochs without improvement of train.monitor; 0: off
    min_delta: float = 0.0              # an improvement must beat the best by more than this


@dataclass
class DiagnosticsConfig:
    """Training diagnostics ("babysitting", pipeline/engine/diagnostics.py): per-group gradient norms and
    update/weight ratios, activation statistics on a fixed validation batch, and warnings. Off by default."""
    every_steps: int = 0                # grad norms and update ratios every N optimiser steps; 0: all of it off
    activations: bool = True            # stage outputs' mean, std, dead fraction on a fixed val batch, each epoch
    ratio_band: tuple[float, float] = (1e-4, 1e-2)   # healthy ||update|| / ||weight|| per step (about 1e-3)
    ratio_patience: int = 3             # logged steps in a row outside the band (after warm-up) before a warning
    loss_window: int = 50               # steps: the mean train loss of the last N vs the first N after warm-up
    min_loss_drop: float = 0.05         # ... must be lower by this fraction (also: overfitting's train-loss fall)
    patience_epochs: int = 3            # epochs for the overfitting and underfitting rules
    underfit_fraction: float = 0.9      # underfitting: the train loss is still >= this x its first epoch's


@dataclass
class TrainConfig:
    epochs: int = 10
    device: str = "auto"                # auto | cpu | cuda | cuda:N (under torchrun: the local rank's GPU)
    amp: Literal["auto", "fp32", "bf16", "fp16"] = "auto"   # auto: bf16 on CUDA when supported, else fp16; fp32 on CPU
    accumulate: int = 1                 # micro-batches per optimiser step: global batch = batch_size x ranks x this
    grad_clip: float | None = 10.0      # max global gradient norm (None: no clipping)
    ema_decay: float = 0.0              # exponential moving average of the weights (e.g. 0.999); 0: off
    max_bad_steps: int = 5              # stop after this many consecutive steps with a non-finite loss or gradient
    deterministic: bool = False         # deterministic algorithms (and CUBLAS workspace), for bitwise-exact runs
    sync_batchnorm: bool = False        # convert BatchNorm to SyncBatchNorm under DDP (CUDA only)
    monitor: str | None = None          # e.g. val/seg/mIoU: picks best.pt, drives early stopping and plateau
    monitor_mode: Literal["max", "min"] = "max"
    log_every: int = 1                  # per-step train metrics every N optimiser steps
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    early_stopping: EarlyStoppingConfig = field(default_factory=EarlyStoppingConfig)
    diagnostics: DiagnosticsConfig = field(default_factory=DiagnosticsConfig)
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
    weighting = parse_weighting(model.pop("weighting", None), source)
    if isinstance(raw.get("data"), dict) and "augment" in raw["data"]:
        raw["data"]["augment"] = parse_augment_section(raw["data"], heads, source)
    model["heads"] = {}  # validated above; keep the generic pass from re-reading them
    config = from_dict(Config, raw, "", source)
    config.model.heads, config.model.weighting = heads, weighting
    check_data(config.data, source)
    check_ranges(config, source)
    check_distill(config.model, source)
    return config


def parse_augment_section(data: dict, heads: dict[str, HeadConfig], source: str) -> Any:
    """data.augment in any of its forms (a preset, a step list, a mapping; datasets/augment_config.py) as the
    mapping AugmentOptions takes, each step's name and arguments checked and the steps dry-run."""
    channels = data.get("channels", 3)
    valid_channels = isinstance(channels, int) and not isinstance(channels, bool) and channels >= 1
    context = AugmentContext(
        channels=channels if valid_channels else 3,   # a bad channels value gets its own error later
        head_types={task: head.type for task, head in heads.items()},
        multi_label_tasks=frozenset(task for task, head in heads.items()
                                    if getattr(head.options, "multi_label", False)),
        mixture=bool(data.get("sources")),
    )
    try:
        return parse_augment(data["augment"], context)
    except AugmentError as error:
        raise ConfigError(f"{source}: {error}") from None


def check_distill(model: ModelConfig, source: str) -> None:
    """model.distill's values; whether the teacher fits the student is checked when it is loaded."""
    distill = model.distill
    if distill is None:
        return
    where = "model.distill."
    teachers = distill.teacher if isinstance(distill.teacher, list) else [distill.teacher]
    if not teachers or not all(teachers):
        raise ConfigError(f"{source}: {where}teacher: expected a checkpoint path or runs:/<id>, or a non-empty "
                          f"list of them, got {distill.teacher!r}")
    if not distill.temperature > 0:
        raise ConfigError(f"{source}: {where}temperature: expected > 0, got {distill.temperature!r}")
    if not 0 <= distill.alpha <= 1:
        raise ConfigError(f"{source}: {where}alpha: expected a weight in [0, 1], got {distill.alpha!r}")
    for index, task in enumerate(distill.tasks or []):
        if task not in model.heads:
            raise ConfigError(f"{source}: {where}tasks[{index}]: no task {task!r} in model.heads; the model's "
                              f"tasks are {', '.join(model.heads)}")
    if distill.tasks == [] and distill.features is None:
        raise ConfigError(f"{source}: {where}tasks: an empty list distils nothing without features; expected "
                          "null (every task the teacher shares) or task names")
    if distill.features is not None:
        if not distill.features.stages:
            raise ConfigError(f"{source}: {where}features.stages: expected at least one backbone stage index")
        if not distill.features.weight >= 0:
            raise ConfigError(f"{source}: {where}features.weight: expected >= 0, got {distill.features.weight!r}")


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
        node[parts[-1]] = parse_yaml(value, f"override {item!r}")
    return raw


def load_config(path: str | Path, overrides: list[str] = ()) -> Config:
    path = Path(path)
    raw = parse_yaml(path.read_text(), str(path))
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping of sections (model, data, train, ...), "
                          f"got {type(raw).__name__} {raw!r:.60}")
    return parse_config(apply_overrides(raw, list(overrides)), source=str(path))


def parse_yaml(text: str, source: str) -> Any:
    """YAML, or one line naming the source, line and column of the first syntax error."""
    try:
        return safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark is not None else source
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ConfigError(f"{where}: invalid YAML: {problem}") from None


def config_to_dict(config: Config) -> dict:
    """Plain data in the YAML file's own shape: `parse_config(config_to_dict(c)) == c`."""
    raw = dataclasses.asdict(config)
    raw["model"]["heads"] = {
        task: {"type": head.type, "weight": head.weight, **dataclasses.asdict(head.options)}
        for task, head in config.model.heads.items()
    }
    raw["model"]["weighting"] = weighting_to_dict(config.model.weighting)
    return raw
