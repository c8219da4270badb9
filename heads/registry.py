"""Heads by config type name. A new head is one file with a `Head` subclass plus a line here."""
from __future__ import annotations

from heads.autoencoder import AutoencoderHead
from heads.base import Head
from heads.classification import ClassificationHead
from heads.deeplab import DeepLabV3Head, DeepLabV3PlusHead
from heads.denoising_autoencoder import DenoisingAutoencoderHead
from heads.fcn import FCNHead
from heads.pspnet import PSPNetHead
from heads.segnet import SegNetHead
from heads.ssd import SSDHead
from heads.unet import UNetHead
from heads.vae import VAEHead
from heads.yolo import YoloHead
from heads.yolo_v1 import YoloV1Head

HEADS: dict[str, type[Head]] = {
    "classification": ClassificationHead,
    "fcn": FCNHead,
    "unet": UNetHead,
    "segnet": SegNetHead,
    "pspnet": PSPNetHead,
    "deeplabv3": DeepLabV3Head,
    "deeplabv3plus": DeepLabV3PlusHead,
    "yolo": YoloHead,
    "yolo_v1": YoloV1Head,
    "ssd": SSDHead,
    "ae": AutoencoderHead,
    "dae": DenoisingAutoencoderHead,
    "vae": VAEHead,
}


def head_class(type_name: str) -> type[Head]:
    if type_name not in HEADS:
        raise ValueError(f"unknown head type {type_name!r}; valid: {', '.join(sorted(HEADS))}")
    return HEADS[type_name]


def build(type_name: str, channels: list[int], strides: list[int], num_classes: int, options: object,
          image_channels: int = 3) -> Head:
    """`image_channels`: channels of the input images (data.channels), for heads that read or output images."""
    return head_class(type_name)(channels, strides, num_classes, options, image_channels=image_channels)
