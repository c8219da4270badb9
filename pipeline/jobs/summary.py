"""`python -m pipeline summary BACKBONE_OR_CONFIG [--input 3x224x224] [--classifier] [--depth N] [--output-stride 16]`:
the complexity report (pipeline/analysis/complexity.py) of a backbone, a published classifier, or a config's
multi-task model."""
from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from pipeline.analysis.complexity import format_summary, measure_complexity
from pipeline.config.typed import ConfigError
from pipeline.jobs.command import Command

CLASSES_DEFAULT = 3
ANNOTATIONS_READ_LIMIT = 50 * 2**20  # read a COCO file's categories only when it is this small


@dataclass
class Target:
    model: nn.Module
    title: str
    parts: list[str] = field(default_factory=list)
    default_input: tuple[int, int, int] = (3, 224, 224)
    notes: list[str] = field(default_factory=list)


def parse_input(text: str, channels: int = 3) -> tuple[int, int, int]:
    """'3x224x224' -> (3, 224, 224); '224' -> (channels, 224, 224), `channels` the target's own (default 3)."""
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--input: expected CxHxW such as 3x224x224, got {text!r}") from None
    if len(dims) == 1:
        dims = (channels, dims[0], dims[0])
    if len(dims) != 3 or min(dims) < 1:
        raise ValueError(f"--input: expected CxHxW such as 3x224x224, got {text!r}")
    return dims


def build_classifier(name: str) -> tuple[nn.Module, str]:
    """A published classifier, fully connected layers included, without weights: torchvision, else timm."""
    import torchvision

    if name in torchvision.models.list_models(module=torchvision.models):
        kwargs: dict[str, Any] = {}
        if name in ("googlenet", "inception_v3"):
            kwargs = {"aux_logits": False, "init_weights": False}  # the training-only auxiliary heads are not counted
        return torchvision.models.get_model(name, weights=None, **kwargs), f"{name} (torchvision classifier)"
    import timm

    timm_name = name.removeprefix("timm/").removeprefix("timm:")
    if timm.is_model(timm_name):
        return timm.create_model(timm_name, pretrained=False), f"{timm_name} (timm classifier)"
    raise ValueError(f"--classifier {name!r}: not a torchvision classification model nor a timm model")


def count_classes(data: Any) -> tuple[int | None, str]:
    """Number of classes of a config's data when it is cheap to know (no dataset is generated or scanned)."""
    if data.sources:
        return None, ""
    from pipeline.config.schema import split_paths

    train = split_paths(data.train)[0]
    if data.format == "imagefolder" and train.is_dir():
        return sum(1 for p in train.iterdir() if p.is_dir() and not p.name.startswith(".")), f"folders of {train}"
    if data.format == "coco" and train.is_file() and train.stat().st_size <= ANNOTATIONS_READ_LIMIT:
        with train.open() as f:
            return len(json.load(f).get("categories", [])), f"categories of {train}"
    if data.shapes is not None:
        from datasets.shapes import CATEGORIES

        return len(CATEGORIES), "the shapes generator's categories"
    return None, ""


def load_target(spec: str, classifier: bool = False, classes: int | None = None,
                in_channels: int | None = None, output_stride: int | None = None) -> Target:
    """`spec`: a backbone registry name, a torchvision/timm classifier name (with `classifier`), or a YAML config.

    Image channels: a config's data.channels; a backbone is adapted to `in_channels` (default 3).
    `output_stride`: a backbone's (dilated at 16 or 8); a config has its own model.backbone.output_stride."""
    if output_stride is not None and (classifier or spec.endswith((".yaml", ".yml")) or Path(spec).is_file()):
        raise ValueError("--output-stride applies to a backbone name; a config sets model.backbone.output_stride")
    import backbones

    if spec.endswith((".yaml", ".yml")) or Path(spec).is_file():
        from pipeline.config.schema import load_config
        from pipeline.model import build_model

        config = load_config(spec)
        config.model.backbone.pretrained = False  # the report needs shapes, not weights
        if classes is None:
            classes, source = count_classes(config.data)
            if classes is None:
                classes, source = CLASSES_DEFAULT, "default; set --classes"
        else:
            source = "--classes"
        channels = config.data.channels
        model = build_model(config.model, num_classes=classes, in_channels=channels)
        size = config.data.image_size
        return Target(model, f"{spec} ({config.model.backbone.name} + {', '.join(config.model.heads)})",
                      parts=["backbone", *(f"heads.{task}" for task in config.model.heads)],
                      default_input=(channels, size, size), notes=[f"classes: {classes} ({source})"])
    if classifier:
        model, title = build_classifier(spec)
        return Target(model, title)
    if spec not in backbones.names():
        raise ValueError(f"unknown backbone {spec!r}; valid: {', '.join(backbones.names())} "
                         f"(or --classifier NAME for a torchvision/timm classifier, or a config .yaml)")
    channels = in_channels or 3
    stride = output_stride or 32
    details = [f"{channels} input channels"] * (channels != 3) + [f"output stride {stride}"] * (stride != 32)
    title = f"{spec} (backbone stages{''.join(', ' + d for d in details)})"
    return Target(backbones.build(spec, pretrained=False, in_channels=channels, output_stride=stride), title,
                  default_input=(channels, 224, 224))


def report(spec: str, input_text: str | None = None, classifier: bool = False, depth: int | None = None,
           classes: int | None = None, receptive_fields: bool = True, output_stride: int | None = None) -> str:
    """What `python -m pipeline summary` prints."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # e.g. "no weights, random init" notices
        # An explicit CxHxW sets the channels a backbone is adapted to (a config has its own data.channels).
        explicit = parse_input(input_text) if input_text and "x" in input_text.lower() else None
        target = load_target(spec, classifier, classes, in_channels=explicit[0] if explicit else None,
                             output_stride=output_stride)
    input_shape = parse_input(input_text, target.default_input[0]) if input_text else target.default_input
    summary = measure_complexity(target.model, input_shape, depth=depth, parts=target.parts,
                        receptive_fields=receptive_fields, title=target.title)
    summary.notes = target.notes + summary.notes
    return format_summary(summary)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", help="backbone name, classifier name (with --classifier) or experiment YAML")
    parser.add_argument("--input", help="input CxHxW, e.g. 3x224x224 (default: 3x224x224, or the config's channels "
                                        "and image_size)")
    parser.add_argument("--classifier", action="store_true",
                        help="the whole published classifier (torchvision get_model, else timm) instead of the backbone")
    parser.add_argument("--depth", type=int, help="rows: modules N levels deep (default: conv/linear/pool/norm layers)")
    parser.add_argument("--classes", type=int, help="classes for a config's heads (default: from its data if cheap, "
                                                    "else 3)")
    parser.add_argument("--no-rf", dest="receptive_fields", action="store_false",
                        help="skip the receptive-field measurement (faster on large models)")
    parser.add_argument("--output-stride", type=int, choices=(8, 16, 32),
                        help="a backbone's output stride: 16 or 8 dilate its deepest stages (default 32)")


def run(args: argparse.Namespace) -> str:
    return report(args.target, args.input, args.classifier, args.depth, args.classes, args.receptive_fields,
                  args.output_stride)


COMMAND = Command("summary", "complexity report: per-layer shape, params, FLOPs, activation memory, receptive field",
                  add_arguments, run, user_errors=(ConfigError, FileNotFoundError, ValueError))
