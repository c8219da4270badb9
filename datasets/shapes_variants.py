"""The shapes set cut into three differently labelled datasets, for partially labelled mixtures.

One generated shapes split is divided image by image (i % 3) into:
  coco/    a COCO set with boxes only (no segmentation): image labels, boxes, multi-labels; masks missing
  masks/   a mask-folder set (see datasets/masks.py) whose classes.txt lists the classes in another
           order than the COCO categories, so a mixture must reconcile them by name
  images/  unlabelled images

    python -m datasets.shapes_variants data/shapes_mix --train 600 --val 150 --image-size 96
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from datasets.coco import CocoDataset
from datasets.sample import IGNORE_INDEX
from datasets.shapes import CATEGORIES, generate_shapes

MASK_CLASSES = ["triangle", "circle", "square"]  # not the COCO order (circle, square, triangle), on purpose
MARKER = "variants.json"  # written last: its presence means the split is complete


@dataclass
class VariantPaths:
    coco: Path     # coco/annotations.json
    masks: Path    # the mask-folder root
    images: Path   # the unlabelled image folder


def write_shapes_variants(out_dir: Path, num_images: int, image_size: int, seed: int) -> VariantPaths:
    """Generate `num_images` shapes images and write the three parts under out_dir (built in a sibling
    `.partial` folder and renamed at the end, so an interrupted run leaves no half-written set)."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise FileExistsError(f"{out_dir}: expected a path that does not exist yet")
    partial = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)  # left by an interrupted run of this function
    source = CocoDataset(generate_shapes(partial / "_all", num_images, image_size, seed))
    coco = json.loads(source.annotations.read_text())
    for folder in ("coco/images", "masks/images", "masks/masks", "images"):
        (partial / folder).mkdir(parents=True)
    _write_coco_part(partial, coco)
    _write_mask_part(partial, source)
    for position, image in enumerate(coco["images"]):
        if position % 3 == 2:
            os.replace(partial / "_all" / image["file_name"], partial / "images" / Path(image["file_name"]).name)
    shutil.rmtree(partial / "_all")
    info = {"num_images": num_images, "image_size": image_size, "seed": seed}
    (partial / MARKER).write_text(json.dumps(info))
    os.replace(partial, out_dir)
    return variant_paths(out_dir)


def write_shapes_variant_splits(root: Path, train: int, val: int, image_size: int, seed: int) -> dict[str, VariantPaths]:
    """root/train and root/val (independent seeds), each cut into the three parts; reused when already
    written with these settings, an error when written with others."""
    root = Path(root)
    train_seed, val_seed = (int(s) for s in np.random.SeedSequence(seed).generate_state(2))
    paths = {}
    for split, count, split_seed in (("train", train, train_seed), ("val", val, val_seed)):
        out_dir = root / split
        expected = {"num_images": count, "image_size": image_size, "seed": split_seed}
        if (out_dir / MARKER).exists():
            found = json.loads((out_dir / MARKER).read_text())
            if found != expected:
                raise ValueError(f"{out_dir / MARKER}: expected shapes variants generated with {expected}, got "
                                 f"{found}; delete {out_dir} to regenerate")
            paths[split] = variant_paths(out_dir)
        else:
            paths[split] = write_shapes_variants(out_dir, count, image_size, split_seed)
    return paths


def variant_paths(out_dir: Path) -> VariantPaths:
    return VariantPaths(coco=out_dir / "coco/annotations.json", masks=out_dir / "masks", images=out_dir / "images")


def _write_coco_part(partial: Path, coco: dict) -> None:
    images = [image for position, image in enumerate(coco["images"]) if position % 3 == 0]
    kept = {image["id"] for image in images}
    # Without segmentation the COCO reader treats the set as detection-only: masks missing, not empty.
    annotations = [{k: v for k, v in ann.items() if k != "segmentation"}
                   for ann in coco["annotations"] if ann["image_id"] in kept]
    for image in images:
        os.replace(partial / "_all" / image["file_name"], partial / "coco" / image["file_name"])
    content = {"images": images, "annotations": annotations, "categories": coco["categories"]}
    (partial / "coco/annotations.json").write_text(json.dumps(content))


def _write_mask_part(partial: Path, source: CocoDataset) -> None:
    # COCO class index k (by category id) -> its value in classes.txt's order; 0 and IGNORE_INDEX kept.
    lut = np.full(256, IGNORE_INDEX, np.uint8)
    lut[0] = 0
    for k, category in enumerate(sorted(CATEGORIES, key=lambda c: c["id"])):
        lut[k + 1] = MASK_CLASSES.index(category["name"]) + 1
    (partial / "masks/classes.txt").write_text("\n".join(MASK_CLASSES) + "\n")
    for position in range(1, len(source), 3):
        name = Path(source.file_name(position)).name
        mask = source.read_record(position).mask
        cv2.imwrite(str(partial / "masks/masks" / Path(name).with_suffix(".png")), lut[mask])
        os.replace(partial / "_all/images" / name, partial / "masks/images" / name)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path)
    parser.add_argument("--train", type=int, default=600)
    parser.add_argument("--val", type=int, default=150)
    parser.add_argument("--image-size", type=int, default=96)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    for split, paths in write_shapes_variant_splits(args.root, args.train, args.val, args.image_size, args.seed).items():
        print(f"{split}: {paths}")


if __name__ == "__main__":
    main()
