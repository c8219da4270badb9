"""Range checks on a parsed config: a value of the right type but outside what it can mean (`epochs: 0`,
`batch_size: -2`, a probability of 1.5, an unknown backbone) is a named error before anything runs, not a
traceback from torch or albumentations after the run has started."""
from __future__ import annotations

import difflib
from typing import TYPE_CHECKING, Any, Callable

import timm

from backbones.registry import BACKBONES, TIMM_PREFIX
from pipeline.config.typed import ConfigError

if TYPE_CHECKING:
    from pipeline.config.schema import Config, DiagnosticsConfig

MIN_IMAGE_SIZE = 32  # the coarsest stride of the backbones: a smaller image leaves the last stage empty

Check = tuple[str, Any, Callable[[Any], bool], str]  # key, value, valid?, what was expected


def at_least(low: float) -> Callable[[Any], bool]:
    return lambda value: value >= low


def within(low: float, high: float, high_open: bool = False) -> Callable[[Any], bool]:
    return lambda value: low <= value < high if high_open else low <= value <= high


def positive(value: Any) -> bool:
    return value > 0


def check_ranges(config: Config, source: str) -> None:
    for key, value, valid, expected in [*data_checks(config), *train_checks(config), *model_checks(config)]:
        if not valid(value):
            raise ConfigError(f"{source}: {key}: expected {expected}, got {value!r}")


def data_checks(config: Config) -> list[Check]:
    data, augment = config.data, config.data.augment
    probability = (within(0.0, 1.0), "a probability in [0, 1]")
    return [
        ("data.batch_size", data.batch_size, at_least(1), "an integer >= 1"),
        ("data.image_size", data.image_size, at_least(MIN_IMAGE_SIZE), f"an integer >= {MIN_IMAGE_SIZE} pixels"),
        ("data.num_workers", data.num_workers, at_least(0), "an integer >= 0 (0: load in the main process)"),
        ("data.epoch_length", data.epoch_length, lambda v: v is None or v >= 1, "null or an integer >= 1"),
        ("data.channels", data.channels, at_least(1), "a positive number of channels"),
        ("data.alpha_background", data.alpha_background, within(0.0, 1.0), "a grey level in [0, 1]"),
        ("data.augment.hflip_p", augment.hflip_p, *probability),
        ("data.augment.affine_p", augment.affine_p, *probability),
        ("data.augment.color_p", augment.color_p, *probability),
        ("data.augment.min_box_visibility", augment.min_box_visibility, *probability),
        ("data.augment.scale", augment.scale, lambda v: 0 < v[0] <= v[1], "[low, high] with 0 < low <= high"),
        ("data.augment.translate", augment.translate, within(0.0, 1.0), "a fraction of the image side in [0, 1]"),
        ("data.augment.rotate", augment.rotate, within(0.0, 180.0), "degrees in [0, 180]"),
        ("data.augment.color_jitter", augment.color_jitter, within(0.0, 1.0), "a strength in [0, 1]"),
        ("data.augment.hue", augment.hue, within(0.0, 0.5), "a hue shift in [0, 0.5]"),
        ("data.shapes.max_shapes", data.shapes.max_shapes if data.shapes else 1, at_least(1), "an integer >= 1"),
    ]


def train_checks(config: Config) -> list[Check]:
    train, optimizer, scheduler = config.train, config.train.optimizer, config.train.scheduler
    return [
        ("train.epochs", train.epochs, at_least(1), "an integer >= 1"),
        ("train.accumulate", train.accumulate, at_least(1), "an integer >= 1"),
        ("train.grad_clip", train.grad_clip, lambda v: v is None or v > 0, "null (no clipping) or a norm > 0"),
        ("train.ema_decay", train.ema_decay, within(0.0, 1.0, high_open=True), "a decay in [0, 1) (0: off)"),
        ("train.max_bad_steps", train.max_bad_steps, at_least(1), "an integer >= 1"),
        ("train.log_every", train.log_every, at_least(1), "an integer >= 1"),
        ("train.checkpoint.every_steps", train.checkpoint.every_steps, at_least(0), "an integer >= 0 (0: off)"),
        ("train.checkpoint.keep_last", train.checkpoint.keep_last, at_least(0), "an integer >= 0 (0: none)"),
        ("train.early_stopping.patience", train.early_stopping.patience, at_least(0), "an integer >= 0 (0: off)"),
        ("train.early_stopping.min_delta", train.early_stopping.min_delta, at_least(0.0), "a number >= 0"),
        *diagnostics_checks(train.diagnostics),
        ("train.optimizer.lr", optimizer.lr, at_least(0.0), "a learning rate >= 0"),
        ("train.optimizer.weight_decay", optimizer.weight_decay, at_least(0.0), "a number >= 0"),
        ("train.optimizer.l1_ratio", optimizer.l1_ratio, within(0.0, 1.0), "a ratio in [0, 1]"),
        ("train.optimizer.momentum", optimizer.momentum, within(0.0, 1.0, high_open=True), "a number in [0, 1)"),
        ("train.optimizer.betas", optimizer.betas, lambda v: all(0 <= b < 1 for b in v), "two numbers in [0, 1)"),
        ("train.optimizer.eps", optimizer.eps, positive, "a number > 0"),
        ("train.scheduler.warmup_epochs", scheduler.warmup_epochs, at_least(0.0), "a number of epochs >= 0"),
        ("train.scheduler.min_lr_ratio", scheduler.min_lr_ratio, within(0.0, 1.0), "a fraction in [0, 1]"),
        ("train.scheduler.step_epochs", scheduler.step_epochs, positive, "a number of epochs > 0"),
        ("train.scheduler.milestones", scheduler.milestones, lambda v: all(m >= 0 for m in v), "epochs >= 0"),
        ("train.scheduler.gamma", scheduler.gamma, positive, "a factor > 0"),
        ("train.scheduler.patience", scheduler.patience, at_least(0), "an integer >= 0"),
    ]


def diagnostics_checks(diagnostics: DiagnosticsConfig) -> list[Check]:
    where = "train.diagnostics."
    return [
        (f"{where}every_steps", diagnostics.every_steps, at_least(0), "an integer >= 0 (0: off)"),
        (f"{where}ratio_band", diagnostics.ratio_band, lambda v: 0 < v[0] < v[1], "[low, high] with 0 < low < high"),
        (f"{where}ratio_patience", diagnostics.ratio_patience, at_least(1), "an integer >= 1"),
        (f"{where}loss_window", diagnostics.loss_window, at_least(1), "a number of steps >= 1"),
        (f"{where}min_loss_drop", diagnostics.min_loss_drop, within(0.0, 1.0, high_open=True),
         "a fraction in [0, 1)"),
        (f"{where}patience_epochs", diagnostics.patience_epochs, at_least(1), "an integer >= 1"),
        (f"{where}underfit_fraction", diagnostics.underfit_fraction, within(0.0, 1.0), "a fraction in [0, 1]"),
    ]


def model_checks(config: Config) -> list[Check]:
    backbone = config.model.backbone
    checks: list[Check] = [
        ("model.backbone.name", backbone.name, known_backbone, backbone_names(backbone.name)),
        ("model.backbone.freeze", backbone.freeze, lambda v: isinstance(v, str) or v >= 0,
         "none, all or a number of stages >= 0"),
        ("model.backbone.unfreeze_every", backbone.unfreeze_every, at_least(0), "an integer >= 0 (0: never)"),
        ("model.backbone.stage_lr", backbone.stage_lr, lambda v: v is None or all(m >= 0 for m in v),
         "null or multipliers >= 0"),
        ("model.backbone.output_stride", backbone.output_stride, lambda v: v in (32, 16, 8),
         "32, 16 or 8 (16 and 8: dilated deepest stages)"),
    ]
    checks += [(f"model.heads.{task}.weight", head.weight, at_least(0.0), "a loss weight >= 0")
               for task, head in config.model.heads.items()]
    if config.model.qat is not None:
        checks.append(("model.qat.bits", config.model.qat.bits, lambda v: v in (1, 2, 4, 8),
                       "1 (binary), 2 (ternary), 4 or 8"))
    return checks


def backbone_names(name: str) -> str:
    near = difflib.get_close_matches(name, sorted(BACKBONES), n=1, cutoff=0.5)
    hint = f"{near[0]!r} or another of " if near else "one of "
    return f"{hint}{', '.join(sorted(BACKBONES))}, or {TIMM_PREFIX}<a name timm.list_models() lists>"


def known_backbone(name: str) -> bool:
    if name.startswith(TIMM_PREFIX):
        return timm.is_model(name[len(TIMM_PREFIX):])
    return name in BACKBONES
