"""Detection on a small real set: our pipeline's yolo head against the torchvision recipe a user would write.

The data is data/real/trees (aerial tree crowns; build it with `bench/real_data.py`). Both methods see the
same 200x200 tiles at the same network size, take the same number of optimiser steps at the same batch size
on an ImageNet MobileNetV2, and are scored by the same pycocotools code against coco/annotations/
instances_val.json in the tiles' own pixel coordinates (ignore regions, iscrowd 1, neither count nor penalise).

- ours: configs/real/trees_yolo.yaml, the job a user runs (ImageNet MobileNetV2 + the `yolo` head, its
  optimiser, schedule and the pipeline's default augmentation), with the benchmark's budget, through
  `run_training`; then `pipeline.jobs.evaluate.run_eval` on last.pt writes detections.json.
- peer: torchvision Faster R-CNN + FPN built exactly as `fasterrcnn_mobilenet_v3_large_fpn` builds its model
  (mobilenet_backbone(fpn=True, trainable_layers=3, FrozenBatchNorm2d), anchors (32..512) x 3 maps x ratios
  (0.5, 1, 2), rpn_score_thresh 0.05) but on `mobilenet_v2` with MobileNet_V2_Weights.IMAGENET1K_V1;
  min_size = max_size = the image size; torchvision's detection reference recipe: SGD momentum 0.9,
  lr 0.02 x batch / 16, weight decay 1e-4, linear warm-up over the first epoch (factor 1/1000, at most 1000
  iterations), lr x 0.1 at 16/26 and 22/26 of training (its 26-epoch schedule), horizontal flips.

The pipeline drops the last partial batch (pipeline/engine/data.py train_loader), so `--steps` is rounded to whole
epochs of floor(train tiles / batch) steps and both methods take that many steps.

    .venv/bin/python bench/peer_detection.py [--steps 450] [--image-size 224] [--batch-size 8] [--seeds 1]
        [--only ours|peer] [--out results.json] [--head KEY=VALUE ...]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peer_common import (coco_scores, epochs_for, markdown_table, ours_config, run_seeds,  # noqa: E402
                         seed_peer, set_threads, train_steps, write_results)

OURS_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "real" / "trees_yolo.yaml"

COLUMNS = [("mAP@[.5:.95]", "mAP", ".3f"), ("mAP@.5", "mAP50", ".3f"), ("max detection score", "max_score", ".3f"),
           ("train s", "seconds", ".0f"), ("steps", "steps", ".0f")]


# ---- ours ---------------------------------------------------------------------------------------------------------

def run_ours(data: Path, args, epochs: int, seed: int, scratch: Path) -> dict:
    from pipeline.jobs.evaluate import run_eval
    from pipeline.jobs.train import run_training

    splits = {split: {"annotations": str(data / "coco" / "annotations" / f"instances_{split}.json"),
                      "images": str(data / "coco" / "images" / split)} for split in ("train", "val")}
    extra = [f"model.heads.det.{key}={json.dumps(value)}" for key, value in args.head.items()]
    config = ours_config(OURS_CONFIG, {**splits, "format": "coco", "image_size": args.image_size,
                                       "batch_size": args.batch_size}, epochs, seed, scratch, extra)
    result, _ = run_training(config)
    evaluation, out = run_eval(result.checkpoint, data=splits["val"]["annotations"], images=splits["val"]["images"],
                               out_dir=scratch / f"eval_ours_{seed}")
    detections = json.loads((out / "detections.json").read_text()) if (out / "detections.json").exists() else []
    scores = coco_scores(Path(splits["val"]["annotations"]), detections)
    steps = result.position.global_step - result.position.skipped_steps     # steps that trained
    return {**scores, "seconds": result.seconds, "steps": steps,
            "pipeline_val_mAP": evaluation.metrics.get("det/mAP", float("nan"))}


# ---- peer: what a user writes with torchvision ---------------------------------------------------------------------

class CocoBoxes(torch.utils.data.Dataset):
    """[0,1] RGB tensors and {boxes xyxy, labels}; crowd (ignore) boxes are left out: torchvision has no ignore."""

    def __init__(self, annotations: Path, images: Path, hflip: bool):
        data = json.loads(Path(annotations).read_text())
        self.images, self.hflip = images, hflip
        self.entries = data["images"]
        self.boxes = {entry["id"]: [] for entry in self.entries}
        for ann in data["annotations"]:
            if not ann.get("iscrowd", 0):
                x, y, w, h = ann["bbox"]
                self.boxes[ann["image_id"]].append([x, y, x + w, y + h])

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, index: int):
        entry = self.entries[index]
        image = cv2.cvtColor(cv2.imread(str(self.images / entry["file_name"]), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        tensor = torch.from_numpy(image).permute(2, 0, 1).float() / 255
        boxes = torch.tensor(self.boxes[entry["id"]], dtype=torch.float32).reshape(-1, 4)
        if self.hflip and torch.rand(()) < 0.5:
            tensor = tensor.flip(-1)
            boxes = torch.stack([tensor.shape[-1] - boxes[:, 2], boxes[:, 1], tensor.shape[-1] - boxes[:, 0],
                                 boxes[:, 3]], dim=1)
        return tensor, {"boxes": boxes, "labels": torch.ones(len(boxes), dtype=torch.int64),
                        "image_id": entry["id"]}


def build_peer(image_size: int) -> torch.nn.Module:
    """fasterrcnn_mobilenet_v3_large_fpn's construction (torchvision/models/detection/faster_rcnn.py), with
    mobilenet_v2 and its ImageNet weights. Its FPN takes the last two backbone stages (strides 32, 32) + a
    max-pool level (64), hence the large anchors."""
    from torchvision.models import MobileNet_V2_Weights
    from torchvision.models.detection import FasterRCNN
    from torchvision.models.detection.anchor_utils import AnchorGenerator
    from torchvision.models.detection.backbone_utils import mobilenet_backbone

    backbone = mobilenet_backbone(backbone_name="mobilenet_v2", weights=MobileNet_V2_Weights.IMAGENET1K_V1,
                                  fpn=True, trainable_layers=3)
    anchor_sizes = ((32, 64, 128, 256, 512),) * 3
    aspect_ratios = ((0.5, 1.0, 2.0),) * len(anchor_sizes)
    return FasterRCNN(backbone, num_classes=2, rpn_anchor_generator=AnchorGenerator(anchor_sizes, aspect_ratios),
                      rpn_score_thresh=0.05, min_size=image_size, max_size=image_size)


def run_peer(data: Path, args, steps: int, seed: int) -> dict:
    seed_peer(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    coco = data / "coco"
    train = CocoBoxes(coco / "annotations" / "instances_train.json", coco / "images" / "train", hflip=True)
    loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         collate_fn=lambda batch: tuple(zip(*batch)),
                                         generator=torch.Generator().manual_seed(seed))
    model = build_peer(args.image_size).to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.02 * args.batch_size / 16, momentum=0.9, weight_decay=1e-4)
    warmup = min(1000, len(loader) - 1)
    milestones = [round(steps * 16 / 26), round(steps * 22 / 26)]

    def lr_factor(step: int) -> float:
        factor = 0.1 ** sum(step >= m for m in milestones)
        if step < warmup:
            factor *= 1e-3 + (1 - 1e-3) * step / warmup
        return factor

    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    model.train()

    def batch_loss(batch) -> torch.Tensor:
        images, targets = batch
        images = [image.to(device) for image in images]
        targets = [{k: v.to(device) if torch.is_tensor(v) else v for k, v in t.items()} for t in targets]
        return sum(model(images, targets).values())

    seconds, step = train_steps(loader, steps, batch_loss, optimizer, schedule)
    val_json = coco / "annotations" / "instances_val.json"
    val = CocoBoxes(val_json, coco / "images" / "val", hflip=False)
    model.eval()
    detections = []
    with torch.no_grad():
        for index in range(len(val)):
            image, target = val[index]
            output = model([image.to(device)])[0]   # boxes in the input image's own pixels
            for (x1, y1, x2, y2), score, label in zip(output["boxes"].tolist(), output["scores"].tolist(),
                                                       output["labels"].tolist()):
                detections.append({"image_id": target["image_id"], "category_id": int(label),
                                   "bbox": [x1, y1, x2 - x1, y2 - y1], "score": score})
    return {**coco_scores(val_json, detections), "seconds": seconds, "steps": step}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/real/trees"))
    parser.add_argument("--steps", type=int, default=450)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=1, help="runs seeds 0..N-1")
    parser.add_argument("--only", choices=["ours", "peer"])
    parser.add_argument("--out", type=Path, help="write the per-seed results as JSON")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--head", action="append", default=[], metavar="KEY=VALUE",
                        help="a yolo head option for ours (value parsed as YAML), e.g. --head anchors=auto")
    args = parser.parse_args()
    args.head = {key: yaml.safe_load(value) for key, _, value in (item.partition("=") for item in args.head)}
    set_threads(args.threads)
    train_json = args.data / "coco" / "annotations" / "instances_train.json"
    if not train_json.is_file():
        raise SystemExit(f"{train_json}: not found; build the data first: .venv/bin/python bench/real_data.py")
    train_tiles = len(json.loads(train_json.read_text())["images"])
    epochs, per_epoch, steps = epochs_for(args.steps, train_tiles, args.batch_size)
    print(f"{train_tiles} train tiles, batch {args.batch_size}: {per_epoch} steps per epoch; "
          f"{epochs} epochs = {steps} steps for both (asked {args.steps})", flush=True)
    methods = {"ours: MobileNetV2 + yolo head (pipeline)": "ours",
               "peer: torchvision Faster R-CNN MobileNetV2-FPN": "peer"}
    results = run_seeds(methods, args.only, args.seeds,
                        lambda key, seed, scratch: run_ours(args.data, args, epochs, seed, scratch) if key == "ours"
                        else run_peer(args.data, args, steps, seed))
    head = f"; yolo options {args.head}" if args.head else ""
    print(f"\nTrees (data/real/trees): {train_tiles} train tiles, image size {args.image_size}, batch "
          f"{args.batch_size}, {steps} steps, seeds {args.seeds}{head}; pycocotools bbox on instances_val.json\n")
    print(markdown_table(COLUMNS, results))
    write_results(args.out, args, steps, epochs, results)


if __name__ == "__main__":
    main()
