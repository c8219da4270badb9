"""The named augmentation presets of `data.augment`: each is values for the knobs (flip, affine, colour jitter:
the steps `datasets.transforms` builds from them) plus, for some, extra steps written like a config's own.

    none        nothing (a list of steps alone starts from here)
    light       horizontal flip, a mild affine (scale 0.9-1.1, 5% shift, 5 degrees); no colour change
    default     horizontal flip, affine (scale 0.8-1.2, 10% shift, 10 degrees), colour jitter 0.2, hue 0.05
    aerial      default + vertical flip + 90-degree rotations: seen from above, no direction is "up"
    microscopy  aerial + elastic deformation, gamma and Gaussian noise (soft tissue, exposure, sensor noise)

Every extra step works on uint8 and float32 images with any channel count (tests/datasets/test_augment_config.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import cv2

Step = dict[str, dict[str, Any]]   # {TransformName: {argument: value}}, as in the config


@dataclass(frozen=True)
class Preset:
    knobs: dict[str, Any]                       # AugmentOptions knob -> value
    extra: list[Step] = field(default_factory=list)


DEFAULT_KNOBS: dict[str, Any] = {
    "hflip_p": 0.5, "affine_p": 0.5, "scale": (0.8, 1.2), "translate": 0.1, "rotate": 10.0,
    "color_p": 0.5, "color_jitter": 0.2, "hue": 0.05,
}

AERIAL_EXTRA: list[Step] = [
    {"VerticalFlip": {"p": 0.5}},
    {"RandomRotate90": {"p": 0.5}},
]

MICROSCOPY_EXTRA: list[Step] = [
    *AERIAL_EXTRA,
    # alpha is the displacement in pixels before smoothing by sigma: a gentle, tissue-like wobble.
    {"ElasticTransform": {"alpha": 20.0, "sigma": 5.0, "border_mode": cv2.BORDER_REFLECT_101,
                          "mask_interpolation": cv2.INTER_NEAREST,
                          # "mask" remapping loses points on the image's far edge (the box corners we track)
                          "keypoint_remapping_method": "direct", "p": 0.3}},
    {"RandomGamma": {"gamma_limit": (80, 120), "p": 0.5}},
    {"GaussNoise": {"std_range": (0.01, 0.05), "p": 0.3}},   # std as a fraction of the image's maximum
]

PRESETS: dict[str, Preset] = {
    "none": Preset({**DEFAULT_KNOBS, "hflip_p": 0.0, "affine_p": 0.0, "color_p": 0.0}),
    "light": Preset({**DEFAULT_KNOBS, "scale": (0.9, 1.1), "translate": 0.05, "rotate": 5.0, "color_p": 0.0}),
    "default": Preset(dict(DEFAULT_KNOBS)),
    "aerial": Preset(dict(DEFAULT_KNOBS), AERIAL_EXTRA),
    "microscopy": Preset(dict(DEFAULT_KNOBS), MICROSCOPY_EXTRA),
}
