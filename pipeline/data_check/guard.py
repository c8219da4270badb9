"""The guard `train` runs before anything starts (`require_trainable`): the cheap part of check-data.

It checks, so no work is lost to a fault that could have been caught: the files of every image of both splits
(headers and sizes, not pixels: datasets/screening.py; with data.skip_invalid the bad ones are dropped from the
split here, counted and logged, so the loader never meets them), the annotations of every image, and a few
decoded images per source (for what only pixels tell: constant images, the targets of formats without an
annotation index).

Errors (training would be meaningless or would fail, so `train` refuses and `check-data` exits 1):
  (a) every sampled training image of a source is constant after the image policy;
  (b) a class with no instance at all in the training split (known, not guessed from a sample);
  (c) a detection head whose training boxes are mostly below what its finest stride resolves: the median
      box's longer side, in network-input pixels, under half the finest stride (see `box_scale_problem`);
  (d) a split with no images; without data.skip_invalid, any image that cannot be read (each named); with
      it, none of the sampled images readable;
  (e) a head with nothing to learn from in a split: no image labels for classification, no masks for
      segmentation, no boxes for detection (known from the annotations, or from the format's targets).
Everything else worth a look is a warning (pipeline/data_check/report.py).
"""
from __future__ import annotations

import math

import numpy as np

from datasets.inspection import Finding, SourceReport, SplitReport, inspect_split
from datasets.reader import BOXES, IMAGE_LABELS
from datasets.screening import Unreadable, screen
from datasets.summary import input_box_sizes
from heads.registry import head_class
from pipeline.config.schema import Config, HeadConfig
from pipeline.engine.data import DataSplits
from pipeline.config.typed import DataCheckError


MAX_LISTED = 10                 # paths shown per list in messages and the text report (all are in the JSON)
GUARD_DECODE_LIMIT = 8          # images decoded per source by the guard before training: seconds, not minutes
CLASS_USING_KINDS = ("classification", "segmentation", "detection")
HEAD_TARGETS = {"classification": "labels", "segmentation": "masks", "detection": "boxes"}  # SourceReport.targets
TARGET_WORDS = {"labels": "image labels (a class folder, or objects to take the image's class from)",
                "masks": "masks", "boxes": "boxes"}
SPLIT_WORDS = {"train": "training", "val": "validation"}


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
                f"training, counted and logged): {listed(reasons, separator='; ')}")
    if source.decoded and not source.readable:
        return (f"{where}: none of the {source.decoded} images looked at could be read, e.g. "
                f"{listed(reasons, 3, '; ')}")
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
            f"{listed(source.constant_images, 3)}; {stored}. Usually a depth/intensity problem: set data.intensity "
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


def listed(paths: list[str], limit: int = MAX_LISTED, separator: str = ", ") -> str:
    shown = separator.join(paths[:limit])
    return shown + (f" and {len(paths) - limit} more" if len(paths) > limit else "")
