"""Read Pascal VOC detection annotations (one XML per image) as multi-task `Sample`s.

`annotations` is one of:

    VOC/ImageSets/Main/<split>.txt   a list of image ids: the XMLs are VOC/Annotations/<id>.xml
    VOC/                             a VOC root holding ImageSets/Main/<split>.txt: that list
    a folder of XML files            every *.xml under it (e.g. an export with each XML beside its image)

The VOC root is the folder holding ImageSets/ (or Annotations/ for a folder named so; else the XML folder).
Images: `images_root` if given, else VOC/JPEGImages when it exists, else each XML's own folder. The file is
the XML's <filename>; when that file is absent, the image with the same stem and any image suffix is used
(exports often convert .tif to .png but keep the old name, as in deepforest's data).

Classes: `class_names` if given (the training split's, so a validation split lacking a class keeps the
indices), else VOC/classes.txt or VOC/labels.txt (one name per line), else the sorted names of the split's
objects. category_ids are 1..C. An object of another class is an error.

Boxes: VOC's devkit numbers pixels from 1 and its <bndbox> includes both end pixels, so pixel columns
xmin..xmax are 0-based columns xmin-1..xmax-1, whose edges in our xyxy (pixel edges, 0-based) are
x1 = xmin - 1 and x2 = xmax (likewise y). Boxes are clipped to the image; xmax <= xmin is refused (a click
without a drag, rather than a one-pixel object). <difficult>1 objects are ignore regions, as in the VOC
evaluation; truncated and occluded ones are ordinary objects. There are no masks; the image label is the
class with the largest box area and the multi-label the classes present (difficult objects not counted).

XML is parsed with the standard library's ElementTree (defusedxml is not installed): it does not fetch
external entities, and expat refuses entity expansion bombs; the files are local annotations.
Everything is validated eagerly; a bad XML raises naming the file and field, or with `skip_invalid` drops
its image, counted in skipped["images"]; so does an XML or image whose path leaves its folder ('..', absolute, or
a symlink out: datasets/paths.py). The decoded image must have the XML's <size> (checked from its header by
`check_files` before training).
"""
from __future__ import annotations

import glob
import math
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from datasets.image_header import header_size
from datasets.image_io import IMAGE_SUFFIXES, ImagePolicy
from datasets.images import files_inside
from datasets.masks import read_class_names
from datasets.paths import is_inside, resolves_inside
from datasets.reader import BOXES, IGNORE_REGIONS, AnnotationIndex, Reader, count_per_class
from datasets.record import RawRecord, image_targets
from datasets.transforms import SampleTransform

CLASS_LISTS = ("classes.txt", "labels.txt")


@dataclass
class _Entry:
    xml: Path
    image: Path
    width: int
    height: int
    names: list[str]        # object class names, in file order
    boxes: np.ndarray       # [N, 4] float32 xyxy pixels, clipped
    difficult: np.ndarray   # [N] bool


class VocDataset(Reader):
    def __init__(self, annotations: Path, images_root: Path | None = None, transform: SampleTransform | None = None,
                 skip_invalid: bool = False, policy: ImagePolicy = ImagePolicy(), split: str = "train",
                 class_names: list[str] | None = None):
        super().__init__(transform, skip_invalid, policy)
        self.annotations = Path(annotations)
        if (self.annotations / "ImageSets").is_dir():
            self.annotations = self.annotations / "ImageSets" / "Main" / f"{split}.txt"
        self.root, xmls = self._xml_files()
        images_dir = Path(images_root) if images_root is not None else self.root / "JPEGImages"
        self.entries: list[_Entry] = []
        for xml in xmls:
            try:
                self.entries.append(_read_xml(xml, images_dir if images_dir.is_dir() else xml.parent))
            except (OSError, ValueError) as error:
                self.skip("images", error)
        self.class_names = self._classes(class_names)
        self.category_ids = list(range(1, len(self.class_names) + 1))  # COCO-style ids, for results files
        self._class_of = {name: i for i, name in enumerate(self.class_names)}
        self.entries = [entry for entry in self.entries if self._known_classes(entry)]
        self.log_skipped()
        if not self.entries:
            raise ValueError(f"{self.annotations}: expected at least one readable annotation, found none")

    def __len__(self) -> int:
        return len(self.entries)

    def image_path(self, position: int) -> Path:
        return self.entries[position].image

    def check_files(self, position: int) -> None:
        """The image's header decodes, at the XML's <size>."""
        entry = self.entries[position]
        _check_size(entry, header_size(entry.image, self.policy.exif_orientation), "its header says")

    def _keep(self, positions: list[int]) -> None:
        self.entries = [self.entries[position] for position in positions]

    def annotation_index(self) -> AnnotationIndex:
        count = len(self.class_names)
        def per_class(difficult: bool) -> np.ndarray:
            return count_per_class([self._class_of[name] for entry in self.entries
                                    for name, hard in zip(entry.names, entry.difficult) if hard == difficult], count)
        unlabelled = [i for i, entry in enumerate(self.entries) if not entry.names]
        return AnnotationIndex({BOXES: per_class(False), IGNORE_REGIONS: per_class(True)}, ["boxes", "labels"],
                               unlabelled)

    def box_sizes(self) -> np.ndarray:
        """[N, 4] box w, h and image w, h (the XML's <size>) of every object that is not difficult."""
        rows = [(x2 - x1, y2 - y1, entry.width, entry.height) for entry in self.entries
                for (x1, y1, x2, y2), hard in zip(entry.boxes, entry.difficult) if not hard]
        return np.array(rows, np.float32).reshape(-1, 4)

    def load(self, position: int) -> RawRecord:
        entry = self.entries[position]
        image = self.read_image(entry.image)
        _check_size(entry, image.shape[:2], "decoded")
        labels = np.array([self._class_of[name] for name in entry.names], np.int64)
        easy = ~entry.difficult
        label, present = image_targets(labels[easy], entry.boxes[easy], None, len(self.class_names))
        return RawRecord(
            image=image, image_id=position, label=label,
            boxes=entry.boxes[easy], box_labels=labels[easy], multi_label=present,
            ignore_boxes=entry.boxes[entry.difficult], ignore_labels=labels[entry.difficult],
        )

    def _known_classes(self, entry: _Entry) -> bool:
        """True if every object's class is in the list; else raise, or count the image as skipped."""
        unknown = [(i, name) for i, name in enumerate(entry.names) if name not in self._class_of]
        if unknown:
            i, name = unknown[0]
            self.skip("images", ValueError(f"{entry.xml}: object[{i}].name: expected one of the classes "
                                           f"{self.class_names}, got {name!r}"))
        return not unknown

    def _xml_files(self) -> tuple[Path, list[Path]]:
        """(VOC root, the split's XML files)."""
        source = self.annotations
        if source.is_dir():
            root = source.parent if source.name == "Annotations" else source
            xmls = files_inside(source, {".xml"}, lambda error: self.skip("images", error))
            if not xmls:
                raise ValueError(f"{source}: expected Pascal VOC .xml files, found none")
            return root, xmls
        if not source.is_file():
            raise FileNotFoundError(f"{source}: expected an ImageSets/Main/<split>.txt list of image ids, a VOC "
                                    f"folder holding one, or a folder of VOC .xml files")
        root = next((p.parent for p in source.parents if p.name == "ImageSets"), source.parent)
        xmls = []
        for number, line in enumerate(source.read_text().splitlines(), start=1):
            image_id = line.strip()
            if not image_id:
                continue
            where = f"{source}: line {number}"
            if len(image_id.split()) != 1 or not is_inside(image_id):
                self.skip("images", ValueError(f"{where}: expected one image id (a name inside "
                                               f"{root / 'Annotations'}), got {image_id!r}"))
                continue
            xml = root / "Annotations" / f"{image_id}.xml"
            if not xml.is_file():
                self.skip("images", FileNotFoundError(f"{where}: expected {xml}, not found"))
            elif not resolves_inside(xml, root / "Annotations"):
                self.skip("images", ValueError(f"{where}: {xml} resolves outside {root / 'Annotations'}"))
            else:
                xmls.append(xml)
        return root, xmls

    def _classes(self, given: list[str] | None) -> list[str]:
        listed = next((self.root / name for name in CLASS_LISTS if (self.root / name).is_file()), None)
        names = read_class_names(listed) if listed is not None else None
        if given is not None and names is not None and list(given) != names:
            raise ValueError(f"{listed}: expected the classes {list(given)} (the training split's), got {names}")
        if given is not None:
            return list(given)
        if names is not None:
            return names
        found = sorted({name for entry in self.entries for name in entry.names})
        if not found:
            raise ValueError(f"{self.annotations}: expected objects to take the class names from, found none; "
                             f"list them in {self.root / CLASS_LISTS[0]}")
        return found


def _check_size(entry: _Entry, size: tuple[int, int], how: str) -> None:
    if tuple(size) != (entry.height, entry.width):
        raise ValueError(f"{entry.xml}: size: expected a {entry.width}x{entry.height} image as declared, "
                         f"{how} {size[1]}x{size[0]} from {entry.image}")


def _read_xml(xml: Path, images_dir: Path) -> _Entry:
    try:
        root = ElementTree.parse(xml).getroot()
    except ElementTree.ParseError as error:
        raise ValueError(f"{xml}: expected Pascal VOC XML: {error}") from error
    if root.tag != "annotation":
        raise ValueError(f"{xml}: expected an <annotation> root element, got <{root.tag}>")
    width, height = (_number(root, f"size/{key}", xml, integer=True) for key in ("width", "height"))
    if width <= 0 or height <= 0:
        raise ValueError(f"{xml}: size: expected a positive width and height, got {width}x{height}")
    names, boxes, difficult = [], [], []
    for i, obj in enumerate(root.findall("object")):
        name = (obj.findtext("name") or "").strip()
        if not name:
            raise ValueError(f"{xml}: object[{i}].name: expected a class name, got none")
        names.append(name)
        boxes.append(_box(obj, f"object[{i}].bndbox", xml, width, height))
        flag = (obj.findtext("difficult") or "0").strip()
        if flag not in ("0", "1"):
            raise ValueError(f"{xml}: object[{i}].difficult: expected 0 or 1, got {flag!r}")
        difficult.append(flag == "1")
    return _Entry(xml, _image_file(root, xml, images_dir), width, height, names,
                  np.array(boxes, np.float32).reshape(-1, 4), np.array(difficult, bool))


def _box(obj: ElementTree.Element, where: str, xml: Path, width: int, height: int) -> list[float]:
    xmin, ymin, xmax, ymax = (_number(obj, f"bndbox/{key}", xml, where=where)
                              for key in ("xmin", "ymin", "xmax", "ymax"))
    if xmax <= xmin or ymax <= ymin:
        raise ValueError(f"{xml}: {where}: expected xmax > xmin and ymax > ymin, got {[xmin, ymin, xmax, ymax]}")
    # 1-based inclusive pixel indices -> 0-based pixel edges (module docstring), clipped to the image.
    x1, y1, x2, y2 = max(xmin - 1, 0), max(ymin - 1, 0), min(xmax, width), min(ymax, height)
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"{xml}: {where}: expected a box overlapping the {width}x{height} image, "
                         f"got {[xmin, ymin, xmax, ymax]}")
    return [x1, y1, x2, y2]


def _number(element: ElementTree.Element, path: str, xml: Path, integer: bool = False, where: str = "") -> float:
    text = element.findtext(path)
    field = f"{where}.{path.split('/')[-1]}" if where else path.replace("/", ".")
    try:
        value = float(text)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or (integer and not value.is_integer()):
        raise ValueError(f"{xml}: {field}: expected {'an integer' if integer else 'a number'}, got {text!r}")
    return int(value) if integer else value


def _image_file(root: ElementTree.Element, xml: Path, images_dir: Path) -> Path:
    """<filename> in images_dir; if absent, the one image file of the same stem (any image suffix)."""
    name = (root.findtext("filename") or "").strip()
    if not name or not is_inside(name):
        raise ValueError(f"{xml}: filename: expected an image path inside {images_dir}, got {name!r}")
    path = images_dir / name
    if not path.is_file():
        candidates = sorted(p for p in path.parent.glob(glob.escape(path.stem) + ".*")
                            if p.stem == path.stem and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if len(candidates) != 1:
            found = f"found {[c.name for c in candidates]}" if candidates else "found none"
            raise FileNotFoundError(f"{xml}: filename: expected the image {path}, or one image of the same "
                                    f"name with another suffix, {found}")
        path = candidates[0]
    if not resolves_inside(path, images_dir):
        raise ValueError(f"{xml}: filename: {path} resolves outside the images folder {images_dir.resolve()}")
    return path
