"""Look at a dataset split before training on it: what is on disk, what the image policy makes of it, what is
labelled, and what was skipped and why. Knows readers, not models (pipeline/data_check/report.py adds the heads).

`inspect_split(reader, decode_limit)` returns a `SplitReport`, one `SourceReport` per reader (a mixture is
walked source by source). Two kinds of facts, with different costs:

- Annotation facts come from the reader's `annotation_index()` where its format offers one (COCO, YOLO, VOC,
  image folders) and from `box_sizes()`: every image, nothing decoded.
- Pixel facts (sizes, stored dtype and value range, the range after the policy, constant images, mask pixels,
  and targets a reader only knows by loading) come from decoding images: all of them (`decode_limit=None`,
  what `check-data` does) or at most `decode_limit` per source, evenly spread (the cheap pass before training).

Each count records what it was counted over, so a caller can tell "class X has no instance" (certain) from
"class X did not turn up in the 8 images looked at" (a sample). Decoding here never raises: an entry that
cannot be read is a finding, reported with its reason, whatever `skip_invalid` says.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from datasets.image_io import decode
from datasets.reader import BOXES, IGNORE_REGIONS, IMAGE_LABELS, AnnotationIndex
from datasets.record import RawRecord
from datasets.sample import IGNORE_INDEX

# Kinds of per-class counts, as named in reports (the first three as datasets.reader.AnnotationIndex has them).
MASK_PIXELS = "mask_pixels"
COUNT_KINDS = (BOXES, IGNORE_REGIONS, IMAGE_LABELS, MASK_PIXELS)
# An image whose values after the policy span less than one 8-bit grey level shows as one flat value and gives
# the network next to nothing: e.g. 12-bit data in a 16-bit file read with intensity [0, 65535].
CONSTANT_SPREAD = 1.0 / 255.0


# ---- the report -------------------------------------------------------------------------------------


@dataclass
class Finding:
    """An entry that was skipped or could not be read. `path`: its image file when known (the reader's own
    reasons name their annotation file and field in `reason`)."""
    reason: str
    path: str | None = None


@dataclass
class Stats:
    """min / median / max of a quantity."""
    min: float
    median: float
    max: float

    @staticmethod
    def of(values: np.ndarray) -> "Stats | None":
        if len(values) == 0:
            return None
        return Stats(float(np.min(values)), float(np.median(values)), float(np.max(values)))


@dataclass
class ClassCount:
    name: str
    boxes: int = 0             # object boxes (not ignore regions)
    ignore_regions: int = 0    # crowd / "difficult" regions
    image_labels: int = 0      # images whose image-level label is this class
    mask_pixels: int = 0

    @property
    def instances(self) -> int:
        """Positive examples of any kind; ignore regions teach nothing about the class."""
        return self.boxes + self.image_labels + self.mask_pixels


@dataclass
class SourceReport:
    """One reader: a split, or one source of a mixture."""
    name: str                         # the split, or the mixture source's name
    where: str                        # its annotation file or dataset folder
    images: int                       # entries the reader holds
    decoded: int = 0                  # images this pass tried to decode
    readable: int = 0                 # of those, how many loaded
    targets: list[str] = field(default_factory=list)   # of "boxes", "masks", "labels"
    # Per kind, how many images its counts cover: all `images` when read from the annotations, else the
    # images decoded. `exhaustive`: the counts hold every instance of every class (annotations that list
    # every object, or every image decoded), so a class at zero is truly absent.
    counted_over: dict[str, int] = field(default_factory=dict)
    exhaustive: bool = False
    classes: list[ClassCount] = field(default_factory=list)
    ignore_pixels: int = 0            # mask pixels at IGNORE_INDEX
    height: Stats | None = None       # decoded image sizes, pixels
    width: Stats | None = None
    raw_dtypes: list[str] = field(default_factory=list)        # dtypes stored in the files
    raw_range: list[float] | None = None                       # [min, max] of the stored values
    policy_range: list[float] | None = None                    # [min, max] after the image policy, in [0, 1]
    constant_images: list[str] = field(default_factory=list)   # flat after the policy (see CONSTANT_SPREAD)
    unlabelled_images: list[str] = field(default_factory=list)  # no box, no ignore region, no mask pixel, no label
    unlabelled_counted_over: int = 0
    box_width: Stats | None = None    # boxes on disk, pixels
    box_height: Stats | None = None
    skipped: dict[str, int] = field(default_factory=dict)      # the reader's own counts, when it opened
    problems: list[Finding] = field(default_factory=list)      # every skipped or unreadable entry, with why
    # [N, 4] (w, h, image w, image h) of every box on disk (datasets.summary's input): for the callers that
    # relate boxes to a network; not written to JSON.
    box_sizes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32), repr=False)

    def to_dict(self) -> dict:
        data = asdict(self)
        data.pop("box_sizes")
        data["boxes_on_disk"] = len(self.box_sizes)
        return data


@dataclass
class SplitReport:
    split: str
    sources: list[SourceReport]
    class_names: list[str]            # the split's class list (a mixture's global one)

    @property
    def images(self) -> int:
        return sum(source.images for source in self.sources)

    @property
    def box_sizes(self) -> np.ndarray:
        return np.concatenate([source.box_sizes for source in self.sources]).reshape(-1, 4)

    def class_totals(self) -> list[ClassCount]:
        """Per class of the split's list, summed over sources by name (how a mixture reconciles classes)."""
        totals = {name: ClassCount(name) for name in self.class_names}
        for source in self.sources:
            for count in source.classes:
                total = totals.setdefault(count.name, ClassCount(count.name))
                for kind in COUNT_KINDS:
                    setattr(total, kind, getattr(total, kind) + getattr(count, kind))
        return list(totals.values())

    def certainly_absent(self) -> list[str]:
        """Classes with no instance at all, where that is known rather than guessed from a sample: every
        source listing the class counted exhaustively and found none."""
        absent = []
        for total in self.class_totals():
            listing = [s for s in self.sources if any(c.name == total.name for c in s.classes)]
            if total.instances == 0 and listing and all(s.exhaustive for s in listing):
                absent.append(total.name)
        return absent

    def to_dict(self) -> dict:
        return {"split": self.split, "images": self.images, "class_names": self.class_names,
                "class_totals": [asdict(c) for c in self.class_totals()],
                "sources": [source.to_dict() for source in self.sources]}


# ---- inspecting -------------------------------------------------------------------------------------


def inspect_split(dataset, decode_limit: int | None = None, split: str = "train") -> SplitReport:
    """Facts about a reader, or each reader of a mixture (`.datasets`, named by `.names`). `decode_limit`: decode
    at most that many images per reader, evenly spread; None: all of them."""
    readers = list(getattr(dataset, "datasets", [dataset]))
    names = list(getattr(dataset, "names", [split] * len(readers)))
    sources = [inspect_reader(reader, name, decode_limit) for reader, name in zip(readers, names)]
    return SplitReport(split=split, sources=sources, class_names=list(getattr(dataset, "class_names", [])))


def inspect_reader(reader, name: str, decode_limit: int | None) -> SourceReport:
    report = SourceReport(name=name, where=reader.where(), images=len(reader), skipped=dict(reader.skipped),
                          problems=[Finding(reason) for reason in reader.problems])
    index = reader.annotation_index()
    pixels = _decode_sample(reader, sample_positions(len(reader), decode_limit), report)
    _fill_targets(report, index, pixels)
    _fill_counts(report, reader, index, pixels)
    _fill_unlabelled(report, reader, index, pixels)
    _fill_boxes(report, reader, pixels)
    return report


def sample_positions(count: int, limit: int | None) -> list[int]:
    """`limit` positions evenly spread over range(count) (all of them for None or limit >= count)."""
    if limit is None or limit >= count:
        return list(range(count))
    if limit <= 0:
        return []
    return sorted(set(np.linspace(0, count - 1, limit).round().astype(int).tolist()))


# ---- what the annotations say, without decoding ------------------------------------------------------


# ---- what decoding says -------------------------------------------------------------------------------


@dataclass
class _Decoded:
    """Pixel facts of the images decoded, accumulated."""
    records: list[tuple[int, RawRecord]] = field(default_factory=list)   # (position, record), readable ones
    sizes: list[tuple[int, int]] = field(default_factory=list)
    dtypes: set[str] = field(default_factory=set)
    raw: list[tuple[float, float]] = field(default_factory=list)
    unit: list[tuple[float, float]] = field(default_factory=list)


def _decode_sample(reader, positions: list[int], report: SourceReport) -> _Decoded:
    decoded = _Decoded()
    for position in positions:
        path = reader.image_path(position)
        try:
            # load(), not read_record(): with skip_invalid the latter would quietly hand back the next entry.
            record = reader.load(position)
            # The stored values too (a second decode): the policy output alone cannot say whether a black
            # image was black on disk or made black by the intensity mapping.
            raw = decode(path, reader.policy.exif_orientation)
        except (OSError, ValueError) as error:
            report.problems.append(Finding(str(error), str(path)))
            continue
        decoded.records.append((position, record))
        decoded.sizes.append(record.image.shape[:2])
        decoded.dtypes.add(str(raw.dtype))
        decoded.raw.append(_finite_range(raw))
        low, high = _unit_range(record.image)
        decoded.unit.append((low, high))
        if high - low < CONSTANT_SPREAD:
            report.constant_images.append(str(path))
    report.decoded, report.readable = len(positions), len(decoded.records)
    if decoded.sizes:
        sizes = np.array(decoded.sizes)
        report.height, report.width = Stats.of(sizes[:, 0]), Stats.of(sizes[:, 1])
        report.raw_dtypes = sorted(decoded.dtypes)
        report.raw_range = [min(r[0] for r in decoded.raw), max(r[1] for r in decoded.raw)]
        report.policy_range = [min(r[0] for r in decoded.unit), max(r[1] for r in decoded.unit)]
    return decoded


def _finite_range(values: np.ndarray) -> tuple[float, float]:
    finite = values[np.isfinite(values)] if np.issubdtype(values.dtype, np.floating) else values
    if finite.size == 0:
        return float("nan"), float("nan")
    return float(finite.min()), float(finite.max())


def _unit_range(image: np.ndarray) -> tuple[float, float]:
    """The policy output's range in [0, 1] units (8-bit output stays uint8 until the transform divides)."""
    low, high = float(image.min()), float(image.max())
    return (low / 255.0, high / 255.0) if image.dtype == np.uint8 else (low, high)


# ---- assembling ---------------------------------------------------------------------------------------


def _fill_targets(report: SourceReport, index: AnnotationIndex | None, pixels: _Decoded) -> None:
    targets = set(index.targets) if index else set()
    for _, record in pixels.records:
        targets |= {"boxes"} if record.boxes is not None else set()
        targets |= {"masks"} if record.mask is not None else set()
        targets |= {"labels"} if record.label is not None or record.multi_label is not None else set()
    report.targets = sorted(targets)


def _fill_counts(report: SourceReport, reader, index: AnnotationIndex | None, pixels: _Decoded) -> None:
    """Each kind from the annotations when they have it (every image), else from the decoded records."""
    names = list(reader.class_names)
    from_records = _record_counts(pixels.records, len(names))
    counts = {}
    for kind in COUNT_KINDS:
        if index and kind in index.counts:
            counts[kind], report.counted_over[kind] = index.counts[kind], report.images
        else:
            counts[kind], report.counted_over[kind] = from_records[kind], len(pixels.records)
    report.ignore_pixels = int(from_records["ignore_pixels"])
    report.classes = [ClassCount(name, **{kind: int(counts[kind][i]) for kind in COUNT_KINDS})
                      for i, name in enumerate(names)]
    every_image = report.images > 0 and report.decoded == report.images
    report.exhaustive = index is not None or every_image


def _record_counts(records: list[tuple[int, RawRecord]], num_classes: int) -> dict:
    counts = {kind: np.zeros(num_classes, np.int64) for kind in COUNT_KINDS}
    ignore_pixels = 0
    for _, record in records:
        counts[BOXES] += _label_counts(record.box_labels, num_classes)
        counts[IGNORE_REGIONS] += _label_counts(record.ignore_labels, num_classes)
        if record.label is not None:
            counts[IMAGE_LABELS][record.label] += 1
        if record.mask is not None:
            values = np.bincount(record.mask.ravel(), minlength=256)
            counts[MASK_PIXELS] += values[1:num_classes + 1]
            ignore_pixels += int(values[IGNORE_INDEX])
    return {**counts, "ignore_pixels": ignore_pixels}


def _label_counts(labels: np.ndarray | None, num_classes: int) -> np.ndarray:
    if labels is None or len(labels) == 0:
        return np.zeros(num_classes, np.int64)
    return np.bincount(np.asarray(labels, np.int64).reshape(-1), minlength=num_classes)[:num_classes]


def _fill_unlabelled(report: SourceReport, reader, index: AnnotationIndex | None, pixels: _Decoded) -> None:
    """Images with no label of any kind. A reader with no targets at all (unlabelled images, for an
    autoencoder) is unlabelled by design: nothing to list."""
    if not report.targets:
        return
    if index is not None and index.unlabelled is not None:
        positions, report.unlabelled_counted_over = index.unlabelled, report.images
    else:
        positions = [position for position, record in pixels.records if not _has_labels(record)]
        report.unlabelled_counted_over = len(pixels.records)
    report.unlabelled_images = [str(reader.image_path(position)) for position in positions]


def _has_labels(record: RawRecord) -> bool:
    return any([
        record.boxes is not None and len(record.boxes) > 0,
        record.ignore_boxes is not None and len(record.ignore_boxes) > 0,
        record.mask is not None and bool((record.mask != 0).any()),
        record.label is not None,
        record.multi_label is not None and bool(np.asarray(record.multi_label).any()),
    ])


def _fill_boxes(report: SourceReport, reader, pixels: _Decoded) -> None:
    """Box sizes on disk: `box_sizes()` (every box, from the annotations) where the reader has it, else the
    boxes of the decoded records."""
    sizes = np.asarray(reader.box_sizes(), np.float32).reshape(-1, 4)
    if len(sizes) == 0:
        rows = [(x2 - x1, y2 - y1, record.image.shape[1], record.image.shape[0])
                for _, record in pixels.records if record.boxes is not None
                for x1, y1, x2, y2 in np.asarray(record.boxes).reshape(-1, 4)]
        sizes = np.array(rows, np.float32).reshape(-1, 4)
    report.box_sizes = sizes
    report.box_width, report.box_height = Stats.of(sizes[:, 0]), Stats.of(sizes[:, 1])
