"""check-data's `samples.png`: augmented training samples as the model gets them, masks in class colours,
boxes labelled with class names, ignore pixels and regions grey."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid

from datasets.build import seed_augmentations
from datasets.inspection import sample_positions
from datasets.sample import IGNORE_INDEX, Sample


# Drawing: class colours (matplotlib's tab10), grey for everything "ignore" (mask pixels and regions).
CLASS_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                 (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
IGNORE_COLOUR = (170, 170, 170)
MASK_ALPHA = 0.45
BOX_WIDTH = 2
MIN_TILE_PIXELS = 192           # small inputs are enlarged (by a whole factor) so labels stay legible
GRID_PADDING = 2
GRID_PAD_VALUE = 255


def sample_grid(dataset, class_names: list[str], count: int, seed: int) -> tuple[Tensor | None, list[dict]]:
    """[3, H, W] uint8: `count` augmented training samples (evenly spread, augmentation seeded by `seed`),
    each with its mask, boxes, ignore regions and image label drawn; and which samples they are."""
    seed_augmentations(dataset, seed)
    tiles, shown = [], []
    for index in sample_positions(len(dataset), count):
        try:
            sample = dataset[index]
        except (OSError, ValueError) as error:  # reported with the split's problems; draw the others
            shown.append({"index": index, "error": str(error)})
            continue
        tiles.append(draw_sample(sample, class_names))
        shown.append({"index": index, "image_id": int(sample.image_id)})
    if not tiles:
        return None, shown
    if len(tiles) == 1:  # make_grid hands a single image back unpadded; keep one layout for any count
        return F.pad(tiles[0], [GRID_PADDING] * 4, value=GRID_PAD_VALUE), shown
    columns = math.ceil(math.sqrt(len(tiles)))
    return make_grid(tiles, nrow=columns, padding=GRID_PADDING, pad_value=GRID_PAD_VALUE), shown


def draw_sample(sample: Sample, class_names: list[str]) -> Tensor:
    scale = max(1, math.ceil(MIN_TILE_PIXELS / max(sample.image.shape[-2:])))
    picture = enlarged(as_rgb_uint8(sample.image), scale)
    if sample.mask is not None:
        picture = draw_mask(picture, sample.mask, scale)
    if sample.ignore_boxes is not None and len(sample.ignore_boxes):
        regions = sample.ignore_boxes * scale
        picture = draw_bounding_boxes(picture, regions, labels=["ignore"] * len(regions), colors=IGNORE_COLOUR,
                                      width=BOX_WIDTH, fill_labels=True, label_colors="black")
    if sample.boxes is not None and len(sample.boxes):
        labels = sample.box_labels.tolist()
        picture = draw_bounding_boxes(picture, sample.boxes * scale,
                                      labels=[class_name(class_names, i) for i in labels],
                                      colors=[class_colour(i) for i in labels], width=BOX_WIDTH, fill_labels=True,
                                      label_colors="white")
    if sample.label is not None:
        picture = caption(picture, class_name(class_names, sample.label), class_colour(sample.label))
    return picture


def class_colour(index: int) -> tuple[int, int, int]:
    return CLASS_COLOURS[index % len(CLASS_COLOURS)]


def as_rgb_uint8(image: Tensor) -> Tensor:
    """[C, H, W] in [0, 1] -> [3, H, W] uint8: grey (and 2-band) as grey, more than 3 bands as the first 3."""
    channels = image.shape[0]
    rgb = image[:1].expand(3, -1, -1) if channels < 3 else image[:3]
    return (rgb.float().clamp(0, 1) * 255).round().to(torch.uint8)


def enlarged(tensor: Tensor, scale: int) -> Tensor:
    """Nearest-neighbour enlargement of the last two axes by a whole factor (pixels stay pixels)."""
    return tensor.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1) if scale > 1 else tensor


def draw_mask(picture: Tensor, mask: Tensor, scale: int) -> Tensor:
    """Each class in its colour, IGNORE_INDEX pixels grey, background untouched."""
    values = [v for v in mask.unique().tolist() if v != 0]
    if not values:
        return picture
    layers = enlarged(torch.stack([mask == v for v in values]), scale)
    colours = [IGNORE_COLOUR if v == IGNORE_INDEX else class_colour(v - 1) for v in values]
    return draw_segmentation_masks(picture, layers, alpha=MASK_ALPHA, colors=colours)


def caption(picture: Tensor, text: str, colour: tuple[int, int, int]) -> Tensor:
    """The image-level label, top left, on a dark band so it reads on any image."""
    image = Image.fromarray(picture.permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((3, 2), text)
    draw.rectangle((0, 0, right + 3, bottom + 2), fill=(0, 0, 0))
    draw.text((3, 2), text, fill=colour)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def class_name(class_names: list[str], index: int) -> str:
    return class_names[index] if 0 <= index < len(class_names) else str(index)


