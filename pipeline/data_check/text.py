"""check-data's report as the terminal shows it."""
from __future__ import annotations

from pathlib import Path

from datasets.inspection import ClassCount, SourceReport, SplitReport
from pipeline.data_check.guard import listed
from pipeline.data_check.report import MAX_PROBLEMS_SHOWN, POOR_ANCHOR_IOU, CheckReport, HeadReport


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
        lines.append(f"constant after the policy ({len(source.constant_images)}): {listed(source.constant_images)}")
    if source.unlabelled_images:
        lines.append(f"no label at all ({len(source.unlabelled_images)} of {source.unlabelled_counted_over}): "
                     f"{listed(source.unlabelled_images)}")
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
