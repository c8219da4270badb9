"""`data.augment` as the user writes it, checked at config load and built into albumentations transforms.

Four forms, one `AugmentOptions`:

    augment: aerial                                             # a preset (datasets/augment_presets.py)
    augment: [HorizontalFlip, {Affine: {rotate: [-30, 30], p: 0.7}}, {RandAugment: {num_ops: 2}}]
    augment: {preset: aerial, steps: [...], rotate: 30, min_box_visibility: 0.5}
    augment: {hflip_p: 0.0, affine_p: 1.0}                      # knobs alone: the default preset, tuned

A preset sets the knobs (flip, affine, colour jitter; a knob given in the mapping overrides it) and may add
steps; the listed steps run after the preset's. A step is an albumentations 2 transform class by name with its
constructor's arguments (a bare name: its defaults; OneOf / SomeOf / Sequential / ... take `transforms:`, a step
list), or one of ours: the policies RandAugment, TrivialAugment, AutoAugment (datasets/augment_policies.py),
Mosaic (detection / segmentation: other images of the training split, before every other step) and MixUp /
CutMix (classification only: soft labels, after the resize). Augmentation is for training only: the
validation transform is the resize alone, whatever is listed.

`parse_augment` runs at config load: an unknown transform is named with the nearest valid names, an unknown or
invalid argument is named with its step, and every listed step is run once on a small image with a box and a
mask (uint8 and float32, the config's channel count), so a transform that cannot move boxes or does not fit
the channels fails before training starts. Names are looked up, never evaluated.
"""
from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass, field
from typing import Any

import albumentations as A
import numpy as np
from albumentations.core.composition import BaseCompose
from albumentations.core.transforms_interface import BasicTransform

from datasets.augment_policies import POLICIES, PolicyArgumentError, build_policy, parse_args
from datasets.augment_presets import PRESETS, Step
from datasets.record import RawRecord

MOSAIC = "Mosaic"
MIXES = ("MixUp", "CutMix")
OWN_STEPS = (*POLICIES, MOSAIC, *MIXES)
COMPOSITIONS = ("OneOf", "SomeOf", "Sequential", "OneOrOther", "RandomOrder", "SelectiveChannelTransform")
# albumentations classes a step may not name, and why.
REFUSED = {
    "ToTensorV2": "the pipeline converts to tensors itself, after the last step",
    "ToFloat": "the pipeline converts to float [0, 1] itself, after the last step",
    "FromFloat": "the pipeline keeps images in [0, 1] up to the backbone",
    "Normalize": "normalisation is the backbone's job (it knows its pretrained mean and std)",
    "Lambda": "it takes Python functions, which a config cannot give",
    "TextImage": "it needs per-image text metadata that no reader provides",
    "OverlayElements": "it needs per-image overlay metadata that no reader provides",
    "Compose": "the step list is the Compose; use Sequential to group steps",
    "ReplayCompose": "the step list is the Compose; use Sequential to group steps",
}
KNOBS = ("hflip_p", "affine_p", "scale", "translate", "rotate", "color_p", "color_jitter", "hue")


class AugmentError(ValueError):
    """A `data.augment` problem, naming the key, the step and the argument (the config loader adds the file)."""


@dataclass
class AugmentOptions:
    preset: str = "default"               # none | light | default | aerial | microscopy
    steps: list[dict[str, Any]] = field(default_factory=list)   # [{TransformName: {argument: value}}, ...]
    # The knobs of the preset's flip / affine / colour steps; null: the preset's value.
    hflip_p: float | None = None
    affine_p: float | None = None
    scale: tuple[float, float] | None = None
    translate: float | None = None        # fraction of the image side, each direction
    rotate: float | None = None           # degrees, each direction
    color_p: float | None = None
    color_jitter: float | None = None     # brightness, contrast and saturation strength
    hue: float | None = None              # kept small: hue shifts quickly change what a colour is
    min_box_visibility: float = 0.3       # a box mostly pushed out of the image becomes an ignore region

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"augment preset: expected one of {', '.join(PRESETS)}, got {self.preset!r}")
        for knob, value in PRESETS[self.preset].knobs.items():
            if getattr(self, knob) is None:
                setattr(self, knob, value)


@dataclass(frozen=True)
class MosaicArgs:
    grid_yx: tuple[int, int] = (2, 2)     # rows, columns of images; the output is one cell's size
    center_range: tuple[float, float] = (0.3, 0.7)   # where the crop's centre falls in the grid
    fit_mode: str = "cover"               # cover: each image fills its cell (cropped); contain: fits (padded)
    p: float = 0.5

    @property
    def partners(self) -> int:
        return self.grid_yx[0] * self.grid_yx[1] - 1


@dataclass(frozen=True)
class MixArgs:
    alpha: float = 1.0                    # the mixing weight is drawn from Beta(alpha, alpha)
    p: float = 1.0                        # chance that a sample is mixed
    kind: str = "MixUp"                   # set from the step name


@dataclass
class AugmentPlan:
    """What a training transform runs: albumentations steps, and the steps that need other samples."""
    steps: list[BasicTransform | BaseCompose] = field(default_factory=list)
    mosaic: MosaicArgs | None = None
    mixes: list[MixArgs] = field(default_factory=list)


@dataclass(frozen=True)
class AugmentContext:
    """What the checks at load need from the rest of the config."""
    channels: int = 3
    head_types: dict[str, str] = field(default_factory=dict)    # task -> head type
    multi_label_tasks: frozenset[str] = frozenset()
    mixture: bool = False                 # data.sources: several datasets


# ---- parsing (config load) ----------------------------------------------------------------------------

def parse_augment(raw: Any, context: AugmentContext = AugmentContext(), where: str = "data.augment") -> dict:
    """The raw `data.augment` value as the mapping AugmentOptions takes, every step checked."""
    if isinstance(raw, str):
        return {"preset": _preset_name(raw, where)}
    if isinstance(raw, list):
        return {"preset": "none", "steps": parse_steps(raw, where, context)}
    if not isinstance(raw, dict):
        raise AugmentError(f"{where}: expected a preset name ({', '.join(PRESETS)}), a list of steps or a mapping "
                           f"(preset, steps, knobs), got {raw!r}")
    parsed = dict(raw)
    if "preset" in parsed:
        parsed["preset"] = _preset_name(parsed["preset"], f"{where}.preset")
    if "steps" in parsed:
        if not isinstance(parsed["steps"], list):
            raise AugmentError(f"{where}.steps: expected a list of steps, got {parsed['steps']!r}")
        parsed["steps"] = parse_steps(parsed["steps"], f"{where}.steps", context)
    return parsed


def _preset_name(name: Any, where: str) -> str:
    if isinstance(name, str) and name in PRESETS:
        return name
    near = difflib.get_close_matches(str(name), list(PRESETS), n=1, cutoff=0.5)
    hint = f" Did you mean {near[0]!r}?" if near else ""
    raise AugmentError(f"{where}: unknown preset {name!r}.{hint} Presets: {', '.join(PRESETS)}; or give a list "
                       "of steps")


def parse_steps(raw: list, where: str, context: AugmentContext) -> list[Step]:
    """Each item as {Name: {arguments}}, its name and arguments checked, and the whole list dry-run."""
    steps = [normalise_step(item, f"{where}[{index}]") for index, item in enumerate(raw)]
    for index, step in enumerate(steps):
        name, arguments = only_item(step)
        label = f"{where}[{index}] ({name})"
        _check_against_model(name, label, context)
        build_step(name, arguments, context.channels, label)
    for own in (MOSAIC, *MIXES):
        if sum(only_item(step)[0] == own for step in steps) > 1:
            raise AugmentError(f"{where}: {own} is listed more than once; expected it at most once")
    dry_run(steps, context.channels, where)
    return steps


def normalise_step(item: Any, label: str) -> Step:
    """A bare name or a one-key mapping {Name: {arguments} | null} -> {Name: {arguments}}."""
    if isinstance(item, str):
        name, arguments = item, {}
    elif isinstance(item, dict) and len(item) == 1:
        name, arguments = only_item(item)
        arguments = {} if arguments is None else arguments
        if not isinstance(arguments, dict):
            raise AugmentError(f"{label} ({name}): expected a mapping of arguments, got {arguments!r}")
    else:
        raise AugmentError(f"{label}: expected a transform name or a one-key mapping {{Name: {{argument: value}}}}, "
                           f"got {item!r}")
    if not isinstance(name, str) or not known_step(name):
        raise AugmentError(f"{label}: {unknown_step_message(name)}")
    return {name: dict(arguments)}


def only_item(step: dict) -> tuple[Any, Any]:
    return next(iter(step.items()))


def known_step(name: str) -> bool:
    return name in OWN_STEPS or albumentations_class(name) is not None


def albumentations_class(name: str) -> type | None:
    """The albumentations 2-D transform or composition class of this name; None for anything else."""
    found = getattr(A, name, None)
    if name in REFUSED or name.startswith("_") or not inspect.isclass(found):
        return None
    if not issubclass(found, (BasicTransform, BaseCompose)) or inspect.isabstract(found):
        return None
    if name in ("BasicTransform", "DualTransform", "ImageOnlyTransform", "BaseCompose") or "3D" in name:
        return None
    return found


def supported_names() -> list[str]:
    return sorted([*OWN_STEPS, *(name for name in dir(A) if albumentations_class(name) is not None)])


def unknown_step_message(name: Any) -> str:
    if name in REFUSED:
        return f"{name} cannot be a step: {REFUSED[name]}"
    near = difflib.get_close_matches(str(name), supported_names(), n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(map(repr, near))}?" if near else ""
    return (f"unknown transform {name!r}.{hint} Expected an albumentations {A.__version__} transform class name "
            f"(e.g. HorizontalFlip, Affine, ColorJitter) or one of {', '.join(OWN_STEPS)}")


def _check_against_model(name: str, label: str, context: AugmentContext) -> None:
    """Mosaic and MixUp / CutMix make targets that only some heads can learn from."""
    if name in MIXES:
        others = {task: kind for task, kind in context.head_types.items()
                  if kind != "classification" or task in context.multi_label_tasks}
        if others:
            listed = ", ".join(f"{task} ({kind}{', multi_label' if task in context.multi_label_tasks else ''})"
                               for task, kind in others.items())
            raise AugmentError(f"{label}: only for classification-only runs (single-label classification heads "
                               f"learn its soft labels); this model also has {listed}")
        if context.mixture:
            raise AugmentError(f"{label}: not available with data.sources (a mixture maps each source's classes; "
                               "mixed labels are not mapped)")
    if name == MOSAIC:
        classifiers = [task for task, kind in context.head_types.items() if kind == "classification"]
        if classifiers:
            raise AugmentError(f"{label}: a mosaic of several images has no single image label, and this model has "
                               f"classification head(s) {', '.join(classifiers)}; Mosaic is for detection and "
                               "segmentation")


# ---- building -----------------------------------------------------------------------------------------

def build_plan(options: AugmentOptions, channels: int) -> AugmentPlan:
    """The preset's extra steps, then the listed ones (the knob steps are `datasets.transforms`' own)."""
    plan = AugmentPlan()
    for index, step in enumerate([*PRESETS[options.preset].extra, *options.steps]):
        name, arguments = only_item(step)
        label = f"data.augment step {index} ({name})"
        if name == MOSAIC:
            plan.mosaic = mosaic_args(arguments, label)
        elif name in MIXES:
            plan.mixes.append(mix_args(name, arguments, label))
        else:
            plan.steps.append(build_step(name, arguments, channels, label))
    return plan


def build_step(name: str, arguments: dict[str, Any], channels: int, label: str) -> Any:
    """One step's transform (Mosaic / MixUp / CutMix: their checked arguments); AugmentError names what is wrong."""
    if name == MOSAIC:
        return mosaic_args(arguments, label)
    if name in MIXES:
        return mix_args(name, arguments, label)
    if name in POLICIES:
        try:
            return build_policy(name, arguments, channels)
        except PolicyArgumentError as error:
            raise AugmentError(f"{label}: argument {error.argument!r}: {error}") from None
    cls = albumentations_class(name)
    if cls is None:
        raise AugmentError(f"{label}: {unknown_step_message(name)}")
    arguments = dict(arguments)
    if name in COMPOSITIONS:
        arguments = _inner_transforms(arguments, channels, label)
    _check_argument_names(cls, arguments, label)
    try:
        return cls(**arguments)
    except (ValueError, TypeError) as error:   # pydantic's ValidationError is a ValueError
        raise AugmentError(f"{label}: {_argument_problem(error)}") from None


def _inner_transforms(arguments: dict[str, Any], channels: int, label: str) -> dict[str, Any]:
    """A composition's `transforms` (and OneOrOther's first/second) as built steps."""
    for key in ("transforms", "first", "second"):
        if key not in arguments or arguments[key] is None:
            continue
        items = arguments[key] if key == "transforms" else [arguments[key]]
        if not isinstance(items, list):
            raise AugmentError(f"{label}: argument {key!r}: expected a list of steps, got {items!r}")
        built = []
        for index, item in enumerate(items):
            inner_label = f"{label}.{key}[{index}]"
            name, inner = only_item(normalise_step(item, inner_label))
            if name in (MOSAIC, *MIXES):
                raise AugmentError(f"{inner_label}: {name} must be a top-level step (it needs other samples)")
            built.append(build_step(name, inner, channels, f"{inner_label} ({name})"))
        arguments[key] = built if key == "transforms" else built[0]
    return arguments


def _check_argument_names(cls: type, arguments: dict[str, Any], label: str) -> None:
    """albumentations only warns about an unknown argument (and then ignores it): here it is an error."""
    parameters = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        accepted = [n for n, p in parameters.items() if n != "self" and p.kind is not inspect.Parameter.VAR_KEYWORD]
    else:
        accepted = [name for name in parameters if name != "self"]
    for key in arguments:
        if key not in accepted:
            near = difflib.get_close_matches(str(key), accepted, n=1, cutoff=0.5)
            hint = f" Did you mean {near[0]!r}?" if near else ""
            raise AugmentError(f"{label}: argument {key!r}: unknown.{hint} Valid: {', '.join(accepted)}")


def _argument_problem(error: Exception) -> str:
    """pydantic's first error as "argument 'x': why (got value)"; other errors as they are."""
    # albumentations re-raises pydantic's ValidationError as a plain ValueError; the details are on the cause.
    source = next((e for e in (error, error.__cause__) if callable(getattr(e, "errors", None))), None)
    details = source.errors() if source is not None else None
    if details:
        first = details[0]
        location = [str(part) for part in first.get("loc", ())]
        argument = location[0] if location else "?"
        if first.get("type") == "missing":
            return f"argument {argument!r}: required, missing"
        return f"argument {argument!r}: {first.get('msg', error)} (got {first.get('input')!r})"
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def mosaic_args(arguments: dict[str, Any], label: str) -> MosaicArgs:
    args = _own_args(MosaicArgs, arguments, label)
    rows, columns = args.grid_yx
    checks = [("grid_yx", rows >= 1 and columns >= 1 and rows * columns >= 2, "[rows, columns], each >= 1, >= 2 cells"),
              ("center_range", 0 <= args.center_range[0] <= args.center_range[1] <= 1, "[low, high] within [0, 1]"),
              ("fit_mode", args.fit_mode in ("cover", "contain"), "cover or contain"),
              ("p", 0 <= args.p <= 1, "a probability in [0, 1]")]
    _raise_first(checks, args, label)
    return args


def mix_args(name: str, arguments: dict[str, Any], label: str) -> MixArgs:
    if "kind" in arguments:
        raise AugmentError(f"{label}: argument 'kind': unknown; valid: alpha, p")
    args = _own_args(MixArgs, arguments, label)
    _raise_first([("alpha", args.alpha > 0, "a Beta parameter > 0"),
                  ("p", 0 <= args.p <= 1, "a probability in [0, 1]")], args, label)
    return MixArgs(alpha=args.alpha, p=args.p, kind=name)


def _own_args(cls: type, arguments: dict[str, Any], label: str) -> Any:
    try:
        return parse_args(cls, arguments)
    except PolicyArgumentError as error:
        raise AugmentError(f"{label}: argument {error.argument!r}: {error}") from None


def _raise_first(checks: list[tuple[str, bool, str]], args: Any, label: str) -> None:
    for argument, ok, expected in checks:
        if not ok:
            raise AugmentError(f"{label}: argument {argument!r}: expected {expected}, got {getattr(args, argument)!r}")


# ---- the dry run --------------------------------------------------------------------------------------

DRY_RUN_SIZE = 64


def dry_run(steps: list[Step], channels: int, where: str) -> None:
    """Each listed albumentations step, forced to fire, once on a uint8 and once on a float32 image of the
    config's channel count with a box, an ignore region and a mask: what fails here would fail in training."""
    # Imported here: datasets.transforms builds on this module (AugmentOptions, build_plan).
    from datasets.transforms import SampleTransform, compose_with_targets

    for index, step in enumerate(steps):
        name, arguments = only_item(step)
        if name in (MOSAIC, *MIXES):
            continue   # not albumentations steps of the Compose; tested on their own
        forced = build_step(name, {**arguments, "p": 1.0} if _takes_p(name) else arguments, channels, name)
        # The never-firing flip gives the Compose a spatial step even when `forced` is image-only.
        transform = SampleTransform(compose_with_targets([forced, A.HorizontalFlip(p=0.0)]))
        for dtype in (np.uint8, np.float32):
            transform.set_random_seed(index)
            try:
                transform(dry_run_record(channels, dtype))
            except Exception as error:  # noqa: BLE001 - any failure is reported as this step's
                raise AugmentError(
                    f"{where}[{index}] ({name}): fails on a {DRY_RUN_SIZE}x{DRY_RUN_SIZE} {channels}-channel "
                    f"{np.dtype(dtype).name} image with a box and a mask: {type(error).__name__}: "
                    f"{str(error).splitlines()[0] if str(error) else ''}") from None


def _takes_p(name: str) -> bool:
    if name in POLICIES:
        return True
    return "p" in inspect.signature(albumentations_class(name).__init__).parameters


def dry_run_record(channels: int, dtype: type) -> RawRecord:
    image = np.full((DRY_RUN_SIZE, DRY_RUN_SIZE, channels), 0.1, np.float32)
    image[16:40, 12:44] = 0.9
    mask = np.zeros((DRY_RUN_SIZE, DRY_RUN_SIZE), np.uint8)
    mask[16:40, 12:44] = 1
    if dtype == np.uint8:
        image = (image * 255).astype(np.uint8)
    return RawRecord(image=image, image_id=0, label=0, mask=mask,
                     boxes=np.array([[12, 16, 44, 40]], np.float32), box_labels=np.array([0]),
                     ignore_boxes=np.array([[2, 2, 8, 8]], np.float32), ignore_labels=np.array([0]))
