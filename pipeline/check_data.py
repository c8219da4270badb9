"""Look before you train: `python -m pipeline check-data CONFIG` and the guard `train` runs first.

`run_check_data` reads every split of a config in full (datasets/inspection.py), relates the boxes to each
detection head (strides, anchors, box sizes in network-input pixels), draws augmented training samples with
their targets to `samples.png`, and writes everything to `check_data.json`; `render_text` is what the CLI
prints. `check_trainable` is the cheap part that `pipeline/train.py` runs through `require_trainable` before
it starts anything, so no work is lost to a fault that could have been caught: the files of every image of
both splits (headers and sizes, not pixels: datasets/screening.py; with data.skip_invalid the bad ones are
dropped from the split here, counted and logged, so the loader never meets them), the annotations of every
image, and a few decoded images per source (for what only pixels tell: constant images, the targets of
formats without an annotation index).

Errors (training would be meaningless or would fail, so `train` refuses and `check-data` exits 1):
  (a) every sampled training image of a source is constant after the image policy;
  (b) a class with no instance at all in the training split (known, not guessed from a sample);
  (c) a detection head whose training boxes are mostly below what its finest stride resolves: the median
      box's longer side, in network-input pixels, under half the finest stride (see `box_scale_problem`);
  (d) a split with no images; without data.skip_invalid, any image that cannot be read (each named); with
      it, none of the sampled images readable;
  (e) a head with nothing to learn from in a split: no image labels for classification, no masks for
      segmentation, no boxes for detection (known from the annotations, or from the format's targets).
Everything else worth a look is a warning.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor
from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks, make_grid

from datasets.build import seed_augmentations
from datasets.inspection import ClassCount, Finding, SourceReport, SplitReport, inspect_split, sample_positions
from datasets.reader import BOXES, IMAGE_LABELS
from datasets.sample import IGNORE_INDEX, Sample
from datasets.screening import Unreadable, screen
from datasets.summary import input_box_sizes, summarize
from heads.anchors import shape_iou
from heads.registry import head_class
from pipeline.config import Config, HeadConfig
from pipeline.data import DataSplits, build_splits
from pipeline.typed_config import DataCheckError

if TYPE_CHECKING:
    from pipeline.tracking import Tracker

GUARD_DECODE_LIMIT = 8          # images decoded per source by the guard before training: seconds, not minutes
POOR_ANCHOR_IOU = 0.25          # a box whose best anchor (shape IoU) is below this is poorly covered
POOR_ANCHOR_WARNING = 0.2       # warn when more than this fraction of boxes is poorly covered
MAX_LISTED = 10                 # paths shown per list in the text report (all of them are in the JSON)
MAX_PROBLEMS_SHOWN = 30
CLASS_USING_KINDS = ("classification", "segmentation", "detection")
HEAD_TARGETS = {"classification": "labels", "segmentation": "masks", "detection": "boxes"}  # SourceReport.targets
TARGET_WORDS = {"labels": "image labels (a class folder, or objects to take the image's class from)",
                "masks": "masks", "boxes": "boxes"}
SPLIT_WORDS = {"train": "training", "val": "validation"}

# Drawing: class colours (matplotlib's tab10), grey for everything "ignore" (mask pixels and regions).
CLASS_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
                 (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]
IGNORE_COLOUR = (170, 170, 170)
MASK_ALPHA = 0.45
BOX_WIDTH = 2
MIN_TILE_PIXELS = 192           # small inputs are enlarged (by a whole factor) so labels stay legible
GRID_PADDING = 2
GRID_PAD_VALUE = 255


# ---- the report -------------------------------------------------------------------------------------


@dataclass
class HeadReport:
    """A detection head against the training boxes, all in network-input pixels."""
    task: str
    type: str
    strides: list[int]                              # sorted
    anchors: list[list[list[float]]] | None = None  # per level [w, h]; None for anchor-free heads
    anchors_fitted: bool = False                    # anchors: auto, fitted to the training boxes here
    boxes: int = 0
    median_longer_side: float | None = None
    histogram: list[list] = field(default_factory=list)   # [bin label, boxes] by max(w, h)
    below_finest_stride: float | None = None        # fraction of boxes whose longer side < finest stride
    poorly_covered: float | None = None             # fraction with best anchor shape IoU < POOR_ANCHOR_IOU
    note: str | None = None                         # why something could not be computed


@dataclass
class CheckReport:
    config: str
    image_size: int
    resize: str
    image_policy: dict
    splits: dict[str, SplitReport]
    heads: list[HeadReport]
    errors: list[str]
    warnings: list[str]
    samples_png: str | None = None
    samples: list[dict] = field(default_factory=list)   # what the grid shows: dataset index, image id
    out_dir: str = ""

    def to_dict(self) -> dict:
        return {"config": self.config, "image_size": self.image_size, "resize": self.resize,
                "image_policy": self.image_policy, "errors": self.errors, "warnings": self.warnings,
                "splits": {name: split.to_dict() for name, split in self.splits.items()},
                "heads": [asdict(head) for head in self.heads],
                "samples_png": self.samples_png, "samples": self.samples}


# ---- check-data -------------------------------------------------------------------------------------


def default_out_dir(config: Config) -> Path:
    """runs/<name>/check-data: beside the experiment's runs, never inside one (run folders are MLflow ids)."""
    return Path(config.output_dir) / config.name / "check-data"


def run_check_data(config: Config, out_dir: str | Path | None = None, samples: int = 16,
                   tracker: "Tracker | None" = None, source: str = "") -> CheckReport:
    """Every fact about every split, the detection heads against the boxes, a grid of `samples` augmented
    training samples; written to `out_dir` (default `default_out_dir`) and, given a started `tracker`, logged
    as artifacts under check-data/."""
    splits = build_splits(config.data)
    reports = {"train": inspect_split(splits.train, None, "train"), "val": inspect_split(splits.val, None, "val")}
    heads = [head_report(config, task, head, splits, reports["train"]) for task, head in detection_heads(config)]
    report = CheckReport(
        config=source or config.name, image_size=config.data.image_size, resize=config.data.resize,
        image_policy=splits.image_policy.to_dict(), splits=reports, heads=heads,
        errors=trainability_problems(reports, config), warnings=data_warnings(reports, heads),
    )
    out = Path(out_dir) if out_dir is not None else default_out_dir(config)
    out.mkdir(parents=True, exist_ok=True)
    report.out_dir = str(out)
    if samples > 0:
        grid, report.samples = sample_grid(splits.train, splits.class_names, samples, config.seed)
        if grid is not None:
            report.samples_png = str(out / "samples.png")
            Image.fromarray(grid.permute(1, 2, 0).numpy()).save(report.samples_png)
    (out / "check_data.json").write_text(json.dumps(report.to_dict(), indent=2))
    if tracker is not None:
        for path in (report.samples_png, out / "check_data.json"):
            if path:
                tracker.log_artifact(path, "check-data")
    return report


# ---- the guard ----------------------------------------------------------------------------------------


def check_trainable(splits: DataSplits, config: Config) -> list[str]:
    """The errors of the cheap pass (module docstring). With data.skip_invalid, unreadable images are dropped
    from `splits` first, so every later fact is about what training will read."""
    named = (("train", splits.train), ("val", splits.val))
    unreadable = {name: screen(dataset, name) for name, dataset in named}
    reports = {name: inspect_split(dataset, GUARD_DECODE_LIMIT, name) for name, dataset in named}
    for name, found in unreadable.items():
        add_unreadable(reports[name], found)
    return trainability_problems(reports, config)


def add_unreadable(report: SplitReport, found: list[Unreadable]) -> None:
    """The screen's findings as the report's own, once per file (a sampled image may have failed to decode too)."""
    for entry in found:
        source = next(source for source in report.sources if source.name == entry.source)
        if str(entry.path) not in {finding.path for finding in source.problems}:
            source.problems.append(Finding(entry.reason, str(entry.path)))


def require_trainable(splits: DataSplits, config: Config) -> None:
    """Raise DataCheckError naming every reason this data cannot train this model."""
    problems = check_trainable(splits, config)
    if problems:
        raise DataCheckError("the data cannot train this model:\n  - " + "\n  - ".join(problems)
                             + "\n(python -m pipeline check-data CONFIG shows everything it finds, with sample images)")


def trainability_problems(reports: dict[str, SplitReport], config: Config) -> list[str]:
    problems = []
    for name, report in reports.items():
        problems += [p for source in report.sources
                     if (p := unreadable_problem(source, name, config.data.skip_invalid))]
    problems += [p for source in reports["train"].sources if (p := constant_problem(source))]
    if reports["train"].images and any(head_class(head.type).kind in CLASS_USING_KINDS
                                       for head in config.model.heads.values()):
        problems += [f"data.train: class {name!r} has no instance in the training split (no box, no mask pixel, "
                     f"no image label): nothing can learn it; add examples or drop the class from the class list"
                     for name in reports["train"].certainly_absent()]
    problems += unlabelled_task_problems(reports, config)
    for task, head in detection_heads(config):
        problem = box_scale_problem(task, head, reports["train"].box_sizes, config)
        if problem:
            problems.append(problem)
    return problems


def unreadable_problem(source: SourceReport, split: str, skip_invalid: bool) -> str | None:
    """(d): no images; unreadable images, each named (with skip_invalid training skips them: only when every
    one looked at failed)."""
    where = f"data.{split} ({source.name}, {source.where})"
    if source.images == 0:
        return f"{where}: the {SPLIT_WORDS.get(split, split)} split has no images"
    reasons = [finding.reason for finding in source.problems if finding.path]
    if reasons and not skip_invalid:
        return (f"{where}: {len(reasons)} image(s) cannot be read (data.skip_invalid: true drops them before "
                f"training, counted and logged): {_listed(reasons, separator='; ')}")
    if source.decoded and not source.readable:
        return (f"{where}: none of the {source.decoded} images looked at could be read, e.g. "
                f"{_listed(reasons, 3, '; ')}")
    return None


def unlabelled_task_problems(reports: dict[str, SplitReport], config: Config) -> list[str]:
    """(e): a head whose target no image of a split has. Its loss would be exactly 0 at every step, without a
    word (a missing target is skipped, not an error, so partially labelled mixtures train), or its validation
    metrics empty."""
    problems = []
    for task, head in config.model.heads.items():
        target = HEAD_TARGETS.get(head_class(head.type).kind)
        for split, report in reports.items():
            if target is None or not report.images or not all(_certainly_without(s, target) for s in report.sources):
                continue
            sources = "; ".join(f"{source.name}, {source.where}" for source in report.sources)
            effect = ("it would learn nothing: its loss is 0 at every step" if split == "train"
                      else "its validation metrics would be empty")
            problems.append(f"model.heads.{task} ({head.type}): no {TARGET_WORDS[target]} in any image of the "
                            f"{SPLIT_WORDS.get(split, split)} split, data.{split} ({sources}): {effect}; give the "
                            f"split {target} or drop the head")
    return problems


def _certainly_without(source: SourceReport, target: str) -> bool:
    """True when no image of the source has `target`, known rather than guessed from a sample: the format
    does not give it (its targets are known from the annotations, or from the images read), or it does and
    the counts over every image are zero."""
    if source.images == 0:
        return True
    if not (source.exhaustive or source.readable):
        return False  # nothing known: nothing read, and no annotation index
    if target not in source.targets:
        return True
    if target == "boxes":
        return _none_counted(source, BOXES)
    if target == "labels":  # a class folder's label, or the largest of the image's objects (record.image_targets)
        return _none_counted(source, IMAGE_LABELS) or ("boxes" in source.targets and _none_counted(source, BOXES))
    return False  # masks: given wherever the format gives them; their pixels are only counted on images decoded


def _none_counted(source: SourceReport, kind: str) -> bool:
    """Zero of this kind, counted over every image."""
    return source.counted_over.get(kind) == source.images and sum(getattr(c, kind) for c in source.classes) == 0


def constant_problem(source: SourceReport) -> str | None:
    """(a): every readable sampled image is flat after the policy, e.g. black."""
    if not source.readable or len(source.constant_images) < source.readable:
        return None
    low, high = source.raw_range or (float("nan"), float("nan"))
    stored = f"stored as {', '.join(source.raw_dtypes)} with values {low:g}..{high:g}"
    return (f"data.train ({source.name}, {source.where}): all {source.readable} images looked at are constant after "
            f"the image policy (values {source.policy_range[0]:.3g}..{source.policy_range[1]:.3g}), e.g. "
            f"{_listed(source.constant_images, 3)}; {stored}. Usually a depth/intensity problem: set data.intensity "
            f"(auto: per-image percentile stretch; [lo, hi]: the stored range that maps to [0, 1]; dataset: one "
            f"range from the training images), unless the files really are blank")


def box_scale_problem(task: str, head: HeadConfig, box_sizes: np.ndarray, config: Config) -> str | None:
    """(c): the median box, by its longer side in network-input pixels, is under half the finest stride.

    Why the median and half a stride: a box is predicted by the cell holding its centre, from features
    sampled every `stride` pixels. A box smaller than a cell can still be found (its cell sees it), so "below
    the stride" alone is no reason to refuse. Below half a cell, the object covers under a quarter of the
    cell, several objects share cells, and nothing in the stride-s map tells them apart; when that is true
    of the median box, most of the training signal is boxes the head cannot resolve. The longer side, so
    thin objects (a 2 x 30 px line) are judged by the extent the head can see.
    """
    if len(box_sizes) == 0:
        return None
    finest = min(head_strides(head))
    longer = input_box_sizes(box_sizes, config.data.image_size, config.data.resize).max(axis=1)
    median = float(np.median(longer))
    if median >= finest / 2:
        return None
    needed = math.ceil(config.data.image_size * (finest / 2) / max(median, 1e-6))
    stride_key = "strides" if hasattr(head.options, "strides") else "stride"
    return (f"model.heads.{task} ({head.type}): the median training box is {median:.1f} px on its longer side at "
            f"data.image_size {config.data.image_size}, under half the finest stride {finest} ({finest / 2:g} px): "
            f"most boxes are too small for the head to resolve. Raise data.image_size (about {needed} puts the "
            f"median at {finest / 2:g} px) or give the head a finer stride (model.heads.{task}.{stride_key}) if the "
            f"backbone has one")


# ---- detection heads ---------------------------------------------------------------------------------


def detection_heads(config: Config) -> list[tuple[str, HeadConfig]]:
    return [(task, head) for task, head in config.model.heads.items() if head_class(head.type).kind == "detection"]


def head_strides(head: HeadConfig) -> list[int]:
    """yolo: options.strides; yolo_v1 (one grid): [options.stride]."""
    strides = getattr(head.options, "strides", None)
    return sorted(strides if strides is not None else [head.options.stride])


def head_report(config: Config, task: str, head: HeadConfig, splits: DataSplits, train: SplitReport) -> HeadReport:
    strides = head_strides(head)
    report = HeadReport(task=task, type=head.type, strides=strides)
    sizes = input_box_sizes(train.box_sizes, config.data.image_size, config.data.resize)
    report.boxes = len(sizes)
    if len(sizes):
        longer = sizes.max(axis=1)
        report.median_longer_side = float(np.median(longer))
        report.histogram = size_histogram(longer, strides, config.data.image_size)
        report.below_finest_stride = float((longer < strides[0]).mean())
    if hasattr(head.options, "anchors"):
        _add_anchors(report, config, task, head, splits, sizes)
    return report


def _add_anchors(report: HeadReport, config: Config, task: str, head: HeadConfig, splits: DataSplits,
                 sizes: np.ndarray) -> None:
    """The head's anchors as training would have them: built (no pretrained weights) and, for `auto`,
    fitted to the training boxes exactly as pipeline/train.py does."""
    from pipeline.model import build_model

    model_config = dataclasses.replace(
        config.model, heads={task: head},
        backbone=dataclasses.replace(config.model.backbone, pretrained=False))
    try:
        built = build_model(model_config, num_classes=len(splits.class_names), in_channels=config.data.channels).heads[task]
        built.fit_data(summarize(splits.train, config.data.image_size, config.data.resize))
    except ValueError as error:
        report.note = f"anchors not available: {error}"
        return
    report.anchors = [[[round(float(v), 2) for v in wh] for wh in level.tolist()] for level in built.anchors]
    report.anchors_fitted = head.options.anchors == "auto"
    if len(sizes):
        best = shape_iou(torch.as_tensor(sizes, dtype=torch.float32), built.anchor_sizes.float()).amax(dim=1)
        report.poorly_covered = float((best < POOR_ANCHOR_IOU).float().mean())


def size_histogram(longer: np.ndarray, strides: list[int], image_size: int) -> list[list]:
    """Boxes by longer side against the strides: < finest/2, then doubling bins from the finest stride."""
    finest = strides[0]
    edges = [0.0, finest / 2, float(finest)]
    while edges[-1] < max(strides[-1] * 2, image_size):
        edges.append(edges[-1] * 2)
    edges.append(math.inf)
    counts, _ = np.histogram(longer, bins=edges)
    labels = [f"<{edges[1]:g}"] + [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[1:-2], edges[2:-1])] + [f">={edges[-2]:g}"]
    return [[label, int(count)] for label, count in zip(labels, counts)]


# ---- warnings ---------------------------------------------------------------------------------------


def data_warnings(reports: dict[str, SplitReport], heads: list[HeadReport]) -> list[str]:
    warnings = []
    for split, report in reports.items():
        for source in report.sources:
            warnings += _source_warnings(split, source)
    absent_in_val = [c.name for c in reports["val"].class_totals() if c.instances == 0]
    if absent_in_val and all(s.exhaustive for s in reports["val"].sources):
        warnings.append(f"data.val: classes {absent_in_val} have no instance in the validation split: their "
                        "metrics will be empty")
    for head in heads:
        if head.poorly_covered is not None and head.poorly_covered > POOR_ANCHOR_WARNING:
            warnings.append(f"model.heads.{head.task}: {head.poorly_covered:.0%} of training boxes have no anchor with "
                            f"shape IoU >= {POOR_ANCHOR_IOU}: set anchors: auto (fitted to the boxes) or give anchors "
                            "closer to the box sizes")
        if head.note:
            warnings.append(f"model.heads.{head.task}: {head.note}")
    return warnings


def _source_warnings(split: str, source: SourceReport) -> list[str]:
    where = f"data.{split} ({source.name}, {source.where})"
    warnings = []
    if source.problems:
        warnings.append(f"{where}: {len(source.problems)} entries skipped or unreadable (listed under problems; "
                        "with data.skip_invalid training skips them, without it they are errors)")
    if source.constant_images and len(source.constant_images) < source.readable:
        warnings.append(f"{where}: {len(source.constant_images)} image(s) constant after the image policy: "
                        f"{_listed(source.constant_images)}")
    if source.unlabelled_images:
        warnings.append(f"{where}: {len(source.unlabelled_images)} of {source.unlabelled_counted_over} images with "
                        f"no label at all: {_listed(source.unlabelled_images)}")
    return warnings


def _listed(paths: list[str], limit: int = MAX_LISTED, separator: str = ", ") -> str:
    shown = separator.join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")


# ---- the sample grid ----------------------------------------------------------------------------------


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
    picture = _enlarged(_as_rgb_uint8(sample.image), scale)
    if sample.mask is not None:
        picture = _draw_mask(picture, sample.mask, scale)
    if sample.ignore_boxes is not None and len(sample.ignore_boxes):
        regions = sample.ignore_boxes * scale
        picture = draw_bounding_boxes(picture, regions, labels=["ignore"] * len(regions), colors=IGNORE_COLOUR,
                                      width=BOX_WIDTH, fill_labels=True, label_colors="black")
    if sample.boxes is not None and len(sample.boxes):
        labels = sample.box_labels.tolist()
        picture = draw_bounding_boxes(picture, sample.boxes * scale, labels=[_name(class_names, i) for i in labels],
                                      colors=[class_colour(i) for i in labels], width=BOX_WIDTH, fill_labels=True,
                                      label_colors="white")
    if sample.label is not None:
        picture = _caption(picture, _name(class_names, sample.label), class_colour(sample.label))
    return picture


def class_colour(index: int) -> tuple[int, int, int]:
    return CLASS_COLOURS[index % len(CLASS_COLOURS)]


def _as_rgb_uint8(image: Tensor) -> Tensor:
    """[C, H, W] in [0, 1] -> [3, H, W] uint8: grey (and 2-band) as grey, more than 3 bands as the first 3."""
    channels = image.shape[0]
    rgb = image[:1].expand(3, -1, -1) if channels < 3 else image[:3]
    return (rgb.float().clamp(0, 1) * 255).round().to(torch.uint8)


def _enlarged(tensor: Tensor, scale: int) -> Tensor:
    """Nearest-neighbour enlargement of the last two axes by a whole factor (pixels stay pixels)."""
    return tensor.repeat_interleave(scale, dim=-2).repeat_interleave(scale, dim=-1) if scale > 1 else tensor


def _draw_mask(picture: Tensor, mask: Tensor, scale: int) -> Tensor:
    """Each class in its colour, IGNORE_INDEX pixels grey, background untouched."""
    values = [v for v in mask.unique().tolist() if v != 0]
    if not values:
        return picture
    layers = _enlarged(torch.stack([mask == v for v in values]), scale)
    colours = [IGNORE_COLOUR if v == IGNORE_INDEX else class_colour(v - 1) for v in values]
    return draw_segmentation_masks(picture, layers, alpha=MASK_ALPHA, colors=colours)


def _caption(picture: Tensor, text: str, colour: tuple[int, int, int]) -> Tensor:
    """The image-level label, top left, on a dark band so it reads on any image."""
    image = Image.fromarray(picture.permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(image)
    left, top, right, bottom = draw.textbbox((3, 2), text)
    draw.rectangle((0, 0, right + 3, bottom + 2), fill=(0, 0, 0))
    draw.text((3, 2), text, fill=colour)
    return torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1)


def _name(class_names: list[str], index: int) -> str:
    return class_names[index] if 0 <= index < len(class_names) else str(index)


# ---- text -------------------------------------------------------------------------------------------


def render_text(report: CheckReport) -> str:
    lines = [f"check-data {report.config}: image_size {report.image_size} ({report.resize}), image policy "
             f"{_policy_text(report.image_policy)}", ""]
    if report.errors:
        lines += ["ERRORS (training on this would be meaningless):"] + [f"  - {e}" for e in report.errors] + [""]
    if report.warnings:
        lines += ["warnings:"] + [f"  - {w}" for w in report.warnings] + [""]
    for split in report.splits.values():
        lines += _split_text(split) + [""]
    for head in report.heads:
        lines += _head_text(head, report.image_size) + [""]
    if report.samples_png:
        lines.append(f"samples: {report.samples_png} ({sum('image_id' in s for s in report.samples)} augmented "
                     "training samples with their targets)")
    verdict = (f"{len(report.errors)} error(s): training would be meaningless" if report.errors
               else "no errors: the data can train this model")
    lines.append(f"{verdict}; {len(report.warnings)} warning(s); all facts in "
                 f"{Path(report.out_dir) / 'check_data.json'}")
    return "\n".join(lines)


def _policy_text(policy: dict) -> str:
    return f"intensity {policy['intensity']}, channels {policy['channels']}"


def _split_text(split: SplitReport) -> list[str]:
    lines = [f"split {split.split}: {split.images} images, classes {split.class_names}"]
    for source in split.sources:
        lines += [f"  source {source.name}: {source.where}"] + [f"    {line}" for line in _source_lines(source)]
    return lines


def _source_lines(source: SourceReport) -> list[str]:
    lines = [f"images: {source.images}; decoded {source.decoded}, readable {source.readable}; "
             f"targets: {', '.join(source.targets) or 'none'}"]
    if source.height:
        height, width = source.height, source.width
        lines.append(f"size h x w: min {height.min:g}x{width.min:g}, median {height.median:g}x{width.median:g}, "
                     f"max {height.max:g}x{width.max:g}")
        lines.append(f"stored: {', '.join(source.raw_dtypes)}; values {source.raw_range[0]:g}..{source.raw_range[1]:g}"
                     f" on disk, {source.policy_range[0]:.3f}..{source.policy_range[1]:.3f} after the policy")
    if source.constant_images:
        lines.append(f"constant after the policy ({len(source.constant_images)}): {_listed(source.constant_images)}")
    if source.unlabelled_images:
        lines.append(f"no label at all ({len(source.unlabelled_images)} of {source.unlabelled_counted_over}): "
                     f"{_listed(source.unlabelled_images)}")
    lines += _class_table(source)
    if source.box_width:
        lines.append(f"boxes on disk: {len(source.box_sizes)}; w {source.box_width.min:g}..{source.box_width.max:g} "
                     f"(median {source.box_width.median:g}), h {source.box_height.min:g}..{source.box_height.max:g} "
                     f"(median {source.box_height.median:g}) px")
    if source.problems:
        lines.append(f"problems ({len(source.problems)}; skipped when opened: {source.skipped}):")
        lines += [f"  - {_finding_text(f)}" for f in source.problems[:MAX_PROBLEMS_SHOWN]]
        if len(source.problems) > MAX_PROBLEMS_SHOWN:
            lines.append(f"  ... and {len(source.problems) - MAX_PROBLEMS_SHOWN} more (check_data.json)")
    return lines


def _finding_text(finding) -> str:
    if finding.path and finding.path not in finding.reason:
        return f"{finding.path}: {finding.reason}"
    return finding.reason


def _class_table(source: SourceReport) -> list[str]:
    columns = _count_columns(source.targets)
    if not source.classes or not columns:
        return []
    covered = {source.counted_over[kind] for kind, _ in columns}
    over = (f"over all {source.images} images" if covered == {source.images} else
            "; ".join(f"{title} over {source.counted_over[kind]} of {source.images} images" for kind, title in columns))
    width = max(len(c.name) for c in source.classes + [ClassCount("class")]) + 2
    lines = [f"per class ({over}):",
             "  " + "class".ljust(width) + "".join(f"{title:>16}" for _, title in columns)]
    for count in source.classes:
        lines.append("  " + count.name.ljust(width) + "".join(f"{getattr(count, kind):>16}" for kind, _ in columns))
    if "masks" in source.targets:
        lines.append(f"ignore mask pixels: {source.ignore_pixels}")
    return lines


def _count_columns(targets: list[str]) -> list[tuple[str, str]]:
    columns = []
    if "boxes" in targets:
        columns += [("boxes", "boxes"), ("ignore_regions", "ignore regions")]
    if "labels" in targets:
        columns.append(("image_labels", "image labels"))
    if "masks" in targets:
        columns.append(("mask_pixels", "mask pixels"))
    return columns


def _head_text(head: HeadReport, image_size: int) -> list[str]:
    lines = [f"head {head.task} ({head.type}): strides {head.strides}"]
    if head.anchors is not None:
        anchors = "; ".join(", ".join(f"{w:g}x{h:g}" for w, h in level) for level in head.anchors)
        lines.append(f"  anchors ({'fitted to the training boxes' if head.anchors_fitted else 'given'}), per level: "
                     f"{anchors}")
    if head.note:
        lines.append(f"  {head.note}")
    if not head.boxes:
        return lines + ["  no training boxes"]
    lines.append(f"  {head.boxes} training boxes at input size {image_size}: median longer side "
                 f"{head.median_longer_side:.1f} px; {head.below_finest_stride:.0%} below the finest stride")
    labels, counts = zip(*head.histogram)
    width = max(max(len(str(x)) for x in labels + counts), 6) + 1
    lines.append("  longer side px " + "".join(f"{label:>{width}}" for label in labels))
    lines.append("  boxes          " + "".join(f"{count:>{width}}" for count in counts))
    if head.poorly_covered is not None:
        lines.append(f"  best anchor shape IoU < {POOR_ANCHOR_IOU}: {head.poorly_covered:.0%} of boxes")
    return lines
