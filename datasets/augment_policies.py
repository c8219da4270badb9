"""RandAugment, TrivialAugment and AutoAugment (ImageNet policy) as albumentations compositions.

torchvision's versions work on images alone (PIL or tensors), so a rotation there would leave masks and boxes
behind. Here each op is an albumentations transform: the geometric ones (rotate, shear, translate) are
`A.Affine`, which moves the mask and the boxes with the image; the photometric ones touch the image only.
Magnitudes follow torchvision.transforms.autoaugment (the same bins, signs drawn 50/50), except:

- translation is a fraction of the image side, not pixels: RandAugment / AutoAugment 150/331 of the side at
  full magnitude (as torchvision at 331 px); TrivialAugment 32/224 (torchvision's 32 px at ImageNet's 224 px);
- shear turns about the image centre (torchvision: the top-left corner), which differs by a translation only;
- negative sharpness (torchvision: a blend towards a 3x3 blur) is a Gaussian blur of sigma = |magnitude| px;
- the border that geometric ops uncover is black in the image and background (0) in the mask, as in the
  presets' affine.

Float images (16-bit data, read as float32 in [0, 1]) get every op: albumentations posterizes float images by
quantising [0, 1] to 2^bits levels, solarizes above a threshold given as a fraction of the maximum, and
equalizes on a 256-bin histogram (8-bit precision of the equalization itself). Channels: saturation ("Color")
needs 3 channels and is left out of the op set for other counts; brightness, contrast and equalize work on 1
or 3, and for other counts (multispectral) brightness is a plain multiplication, contrast and equalize are
left out.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import albumentations as A
import cv2

OpBuilder = Callable[[float, float, int], A.BasicTransform | None]   # (low, high, channels) -> op or None

BORDER = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": 0}


class PolicyArgumentError(ValueError):
    """A policy step's argument is unknown or out of range; `argument` names it."""

    def __init__(self, argument: str, message: str) -> None:
        super().__init__(message)
        self.argument = argument


# ---- the ops: each takes a magnitude range (low == high for a fixed magnitude) --------------------------

def _affine(**kwargs: Any) -> A.BasicTransform:
    return A.Affine(**kwargs, **BORDER, p=1.0)


def _shear(axis: str) -> OpBuilder:
    # torchvision shears by atan(magnitude) degrees
    def build(low: float, high: float, channels: int) -> A.BasicTransform:
        degrees = (math.degrees(math.atan(low)), math.degrees(math.atan(high)))
        return _affine(shear={axis: degrees, "y" if axis == "x" else "x": (0.0, 0.0)})
    return build


def _translate(axis: str) -> OpBuilder:
    def build(low: float, high: float, channels: int) -> A.BasicTransform:
        return _affine(translate_percent={axis: (low, high), "y" if axis == "x" else "x": (0.0, 0.0)})
    return build


def _rotate(low: float, high: float, channels: int) -> A.BasicTransform:
    return _affine(rotate=(low, high))


def _jitter(kind: str, low: float, high: float) -> A.BasicTransform:
    """ColorJitter changing one property by a factor in [1 + low, 1 + high], the others left alone."""
    neutral = {"brightness": (1.0, 1.0), "contrast": (1.0, 1.0), "saturation": (1.0, 1.0), "hue": (0.0, 0.0)}
    return A.ColorJitter(**{**neutral, kind: (1.0 + low, 1.0 + high)}, p=1.0)


def _brightness(low: float, high: float, channels: int) -> A.BasicTransform:
    if channels in (1, 3):
        return _jitter("brightness", low, high)
    return A.MultiplicativeNoise(multiplier=(1.0 + low, 1.0 + high), per_channel=False, elementwise=False, p=1.0)


def _contrast(low: float, high: float, channels: int) -> A.BasicTransform | None:
    return _jitter("contrast", low, high) if channels in (1, 3) else None


def _colour(low: float, high: float, channels: int) -> A.BasicTransform | None:
    return _jitter("saturation", low, high) if channels == 3 else None


def _sharpness(low: float, high: float, channels: int) -> A.BasicTransform:
    sharpen = A.Sharpen(alpha=(max(low, 0.0), max(high, 0.0)), lightness=(1.0, 1.0), p=1.0) if high > 0 else None
    blur = (A.GaussianBlur(blur_limit=(3, 3), sigma_limit=(max(-high, 0.01), max(-low, 0.01)), p=1.0)
            if low < 0 else None)
    if sharpen is not None and blur is not None:     # a range across zero: sharpen or blur, half each
        return A.OneOf([sharpen, blur], p=1.0)
    return sharpen or blur or A.NoOp(p=1.0)


def _posterize(low: float, high: float, channels: int) -> A.BasicTransform:
    return A.Posterize(num_bits=(int(low), int(high)), p=1.0)


def _solarize(low: float, high: float, channels: int) -> A.BasicTransform:
    return A.Solarize(threshold_range=(low, high), p=1.0)


def _fixed(make: Callable[[], A.BasicTransform], channels_ok: Callable[[int], bool] = lambda c: True) -> OpBuilder:
    return lambda low, high, channels: make() if channels_ok(channels) else None


OPS: dict[str, OpBuilder] = {
    "Identity": _fixed(lambda: A.NoOp(p=1.0)),
    "ShearX": _shear("x"), "ShearY": _shear("y"),
    "TranslateX": _translate("x"), "TranslateY": _translate("y"),
    "Rotate": _rotate,
    "Brightness": _brightness, "Color": _colour, "Contrast": _contrast, "Sharpness": _sharpness,
    "Posterize": _posterize, "Solarize": _solarize,
    "AutoContrast": _fixed(lambda: A.AutoContrast(p=1.0)),
    "Equalize": _fixed(lambda: A.Equalize(p=1.0), lambda c: c in (1, 3)),
    "Invert": _fixed(lambda: A.InvertImg(p=1.0)),
}
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")
SIGNED = (*GEOMETRIC, "Brightness", "Color", "Contrast", "Sharpness")


# ---- magnitudes (torchvision's bins) ------------------------------------------------------------------

@dataclass(frozen=True)
class Space:
    """The largest magnitude of each op (at the last bin), and the fewest posterize bits."""
    shear: float = 0.3
    translate: float = 150.0 / 331.0      # fraction of the image side
    rotate: float = 30.0                  # degrees
    enhance: float = 0.9                  # brightness, colour, contrast, sharpness: factor 1 +- this
    min_bits: int = 4


STANDARD = Space()
WIDE = Space(shear=0.99, translate=32.0 / 224.0, rotate=135.0, enhance=0.99, min_bits=2)


def magnitude(op: str, index: int, bins: int, space: Space) -> float:
    """The op's magnitude at bin `index` of `bins` (unsigned; the sign is drawn separately)."""
    fraction = index / (bins - 1) if bins > 1 else 0.0
    if op == "Posterize":
        return float(8 - round(index / ((bins - 1) / (8 - space.min_bits)))) if bins > 1 else 8.0
    if op == "Solarize":
        return 1.0 - fraction                       # threshold: 255 -> 0, as a fraction of the maximum
    largest = {"ShearX": space.shear, "ShearY": space.shear, "TranslateX": space.translate,
               "TranslateY": space.translate, "Rotate": space.rotate}.get(op, space.enhance)
    return largest * fraction


def fixed_op(op: str, value: float, channels: int) -> A.BasicTransform | None:
    """The op at one magnitude, its sign drawn 50/50 where it has one; None where the channels rule it out."""
    build = OPS[op]
    if op not in SIGNED or value == 0:
        return build(value, value, channels)
    plus, minus = build(value, value, channels), build(-value, -value, channels)
    return None if plus is None else A.OneOf([plus, minus], p=1.0)


def _available(ops: list[A.BasicTransform | None]) -> list[A.BasicTransform]:
    return [op for op in ops if op is not None]


# ---- the policies -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RandAugmentArgs:
    num_ops: int = 2
    magnitude: int = 9                    # bin index 0 .. num_magnitude_bins - 1 (torchvision: 9 of 31)
    num_magnitude_bins: int = 31
    p: float = 1.0

    def check(self) -> None:
        _require("num_ops", self.num_ops >= 1, f"an integer >= 1, got {self.num_ops!r}")
        _require("num_magnitude_bins", self.num_magnitude_bins >= 2, f"an integer >= 2, got {self.num_magnitude_bins}")
        _require("magnitude", 0 <= self.magnitude < self.num_magnitude_bins,
                 f"a bin index in [0, {self.num_magnitude_bins - 1}], got {self.magnitude!r}")
        _require_probability(self.p)


@dataclass(frozen=True)
class TrivialAugmentArgs:
    num_magnitude_bins: int = 31
    p: float = 1.0

    def check(self) -> None:
        _require("num_magnitude_bins", self.num_magnitude_bins >= 2, f"an integer >= 2, got {self.num_magnitude_bins}")
        _require_probability(self.p)


@dataclass(frozen=True)
class AutoAugmentArgs:
    policy: str = "imagenet"
    p: float = 1.0

    def check(self) -> None:
        _require("policy", self.policy == "imagenet", f"'imagenet' (the one policy implemented), got {self.policy!r}")
        _require_probability(self.p)


def rand_augment(args: RandAugmentArgs, channels: int) -> A.BasicTransform:
    """num_ops ops drawn uniformly with replacement, each at the one magnitude, sign 50/50 (torchvision)."""
    ops = _available([fixed_op(op, magnitude(op, args.magnitude, args.num_magnitude_bins, STANDARD), channels)
                      for op in OPS if op != "Invert"])
    return A.SomeOf(ops, n=args.num_ops, replace=True, p=args.p)


def trivial_augment(args: TrivialAugmentArgs, channels: int) -> A.BasicTransform:
    """One op drawn uniformly, at a magnitude drawn uniformly over the wide range (signed ops: both signs)."""
    ops = []
    for op in OPS:
        if op == "Invert":
            continue
        top = magnitude(op, args.num_magnitude_bins - 1, args.num_magnitude_bins, WIDE)
        if op == "Posterize":
            ops.append(OPS[op](top, 8.0, channels))
        elif op == "Solarize":
            ops.append(OPS[op](0.0, 1.0, channels))
        else:
            ops.append(OPS[op](-top if op in SIGNED else top, top, channels))
    return A.OneOf(_available(ops), p=args.p)


# (op, probability, magnitude bin of 10) x 2 per sub-policy: torchvision's AutoAugmentPolicy.IMAGENET.
IMAGENET_POLICY: list[tuple[tuple[str, float, int | None], tuple[str, float, int | None]]] = [
    (("Posterize", 0.4, 8), ("Rotate", 0.6, 9)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
    (("Posterize", 0.6, 7), ("Posterize", 0.6, 6)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Equalize", 0.4, None), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, None)),
    (("Posterize", 0.8, 5), ("Equalize", 1.0, None)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)),
    (("Equalize", 0.6, None), ("Posterize", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)),
    (("Rotate", 0.4, 9), ("Equalize", 0.6, None)),
    (("Equalize", 0.0, None), ("Equalize", 0.8, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)),
    (("Sharpness", 0.4, 7), ("Invert", 0.6, None)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, None)),
    (("Color", 0.4, 0), ("Equalize", 0.6, None)),
    (("Equalize", 0.4, None), ("Solarize", 0.2, 4)),
    (("Solarize", 0.6, 5), ("AutoContrast", 0.6, None)),
    (("Invert", 0.6, None), ("Equalize", 1.0, None)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, None), ("Equalize", 0.6, None)),
]
AUTO_AUGMENT_BINS = 10


def auto_augment(args: AutoAugmentArgs, channels: int) -> A.BasicTransform:
    """One of the 25 sub-policies drawn uniformly; each of its two ops fires with its own probability. An op
    the channels rule out (e.g. Color on a grey image) is left out of its sub-policy."""
    sub_policies = []
    for pair in IMAGENET_POLICY:
        steps = []
        for op, probability, index in pair:
            value = magnitude(op, index, AUTO_AUGMENT_BINS, STANDARD) if index is not None else 0.0
            transform = fixed_op(op, value, channels)
            if transform is not None:
                steps.append(A.Sequential([transform], p=probability))
        sub_policies.append(A.Sequential(steps or [A.NoOp(p=1.0)], p=1.0))
    return A.OneOf(sub_policies, p=args.p)


POLICIES: dict[str, tuple[type, Callable[[Any, int], A.BasicTransform]]] = {
    "RandAugment": (RandAugmentArgs, rand_augment),
    "TrivialAugment": (TrivialAugmentArgs, trivial_augment),
    "AutoAugment": (AutoAugmentArgs, auto_augment),
}


def build_policy(name: str, arguments: dict[str, Any], channels: int) -> A.BasicTransform:
    """The policy `name` with these config arguments; PolicyArgumentError names a bad one."""
    args_cls, build = POLICIES[name]
    args = parse_args(args_cls, arguments)
    args.check()
    return build(args, channels)


def parse_args(args_cls: type, arguments: dict[str, Any]) -> Any:
    """A dataclass of our own steps' arguments (policies, Mosaic, MixUp/CutMix): known names, right types."""
    known = {f.name: f for f in fields(args_cls)}
    values = {}
    for key, value in arguments.items():
        if key not in known:
            raise PolicyArgumentError(key, f"unknown argument; valid: {', '.join(known)}")
        default = known[key].default
        values[key] = _typed(key, value, default)
    return args_cls(**values)


def _typed(key: str, value: Any, default: Any) -> Any:
    if isinstance(default, bool):
        ok = isinstance(value, bool)
    elif isinstance(default, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
    elif isinstance(default, int):
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif isinstance(default, tuple):
        ok = isinstance(value, (list, tuple)) and len(value) == len(default) and all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
        value = tuple(type(d)(v) for d, v in zip(default, value)) if ok else value
    else:
        ok = isinstance(value, type(default))
    if not ok:
        raise PolicyArgumentError(key, f"expected {type(default).__name__} like {default!r}, got {value!r}")
    return value


def _require(argument: str, ok: bool, expected: str) -> None:
    if not ok:
        raise PolicyArgumentError(argument, f"expected {expected}")


def _require_probability(p: float) -> None:
    _require("p", 0.0 <= p <= 1.0, f"a probability in [0, 1], got {p!r}")
