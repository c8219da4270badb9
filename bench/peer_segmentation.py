"""Segmentation of 16-bit microscopy: our pipeline's unet head against the segmentation-models-pytorch recipe a
user would write.

The data is data/real/nuclei16 (fluorescence nuclei, 16-bit PNG tiles whose values are 0..235; build it with
`bench/real_data.py`). Both methods train an ImageNet MobileNetV2 U-Net on the same tiles at the same size,
batch, steps and optimiser (AdamW lr 1e-3, weight decay 1e-4, cosine to 0 without warm-up), with the same loss
(cross-entropy 1.0 + Dice 0.5, smp's multiclass Dice), and are scored by the same code: torchmetrics
JaccardIndex (2 classes, macro = mIoU; also the nucleus class alone) over the val tiles at the network size,
against the val masks (masks/val/masks/*.png, 0/255).

- ours: configs/real/nuclei_unet.yaml (ImageNet MobileNetV2 + the `unet` head with its defaults), with the
  benchmark's budget, through `run_training` with the pipeline's own reader and default augmentation; scored
  on what its own val reader hands the model (`--format coco`: the COCO instance masks; `--format masks`: the
  mask folder, whose 0/255 masks need the reader to map 255 to the class).
- peer: `smp.Unet("mobilenet_v2", encoder_weights=None, classes=2)` with torchvision's MobileNet_V2_Weights.
  IMAGENET1K_V1 loaded into its encoder (smp's encoder is torchvision's MobileNetV2 without the classifier:
  every encoder key must load). Its data loading is what a user writes: cv2.IMREAD_UNCHANGED, per-image
  percentile stretch (1st..99.8th) to [0, 1], grey replicated to 3 channels, ImageNet normalisation,
  horizontal flips.

The "val input" columns show what each model was fed (the [0, 1] image before normalisation): a 16-bit image
read as 8-bit arrives black (max ~0).

    .venv/bin/python bench/peer_segmentation.py [--steps 300] [--image-size 128] [--batch-size 8] [--seeds 1]
        [--only ours|peer] [--format coco|masks] [--out results.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from peer_common import (epochs_for, markdown_table, ours_config, run_seeds, seed_peer,  # noqa: E402
                         set_threads, train_steps, write_results)

OURS_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "real" / "nuclei_unet.yaml"

COLUMNS = [("mIoU (2 classes)", "mIoU", ".3f"), ("IoU nucleus", "IoU_nucleus", ".3f"),
           ("val input mean", "input_mean", ".3f"), ("val input max", "input_max", ".3f"),
           ("train s", "seconds", ".0f"), ("steps", "steps", ".0f")]
IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)


class IoU:
    """The one scoring code: torchmetrics JaccardIndex over all val pixels, background + nucleus."""

    def __init__(self):
        from torchmetrics.classification import MulticlassJaccardIndex

        self.metric = MulticlassJaccardIndex(num_classes=2, average="none")
        self.inputs: list[torch.Tensor] = []

    def update(self, prediction: torch.Tensor, target: torch.Tensor, model_input: torch.Tensor) -> None:
        self.metric.update(prediction.cpu(), target.cpu())
        self.inputs.append(model_input.detach().float().cpu())

    def result(self) -> dict[str, float]:
        per_class = self.metric.compute()
        pixels = torch.cat([x.flatten() for x in self.inputs])
        return {"mIoU": float(per_class.mean()), "IoU_nucleus": float(per_class[1]),
                "input_mean": float(pixels.mean()), "input_max": float(pixels.max())}


def val_mask(data: Path, file_name: str, size: int) -> torch.Tensor:
    mask = cv2.imread(str(data / "masks" / "val" / "masks" / Path(file_name).with_suffix(".png")), cv2.IMREAD_UNCHANGED)
    if mask.shape != (size, size):
        mask = cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST_EXACT)
    return torch.from_numpy((mask > 127).astype(np.int64))


# ---- ours ---------------------------------------------------------------------------------------------------------

def run_ours(data: Path, args, epochs: int, seed: int, scratch: Path) -> dict:
    from pipeline.engine import data as pipeline_data
    from pipeline.jobs.evaluate import model_from_checkpoint
    from pipeline.jobs.train import run_training

    if args.format == "coco":
        splits = {split: {"annotations": str(data / "coco" / "annotations" / f"instances_{split}.json"),
                          "images": str(data / "coco" / "images" / split)} for split in ("train", "val")}
    else:
        splits = {split: str(data / "masks" / split) for split in ("train", "val")}
    config = ours_config(OURS_CONFIG, {**splits, "format": args.format, "image_size": args.image_size,
                                       "batch_size": args.batch_size}, epochs, seed, scratch)
    result, _ = run_training(config)
    model, state = model_from_checkpoint(result.checkpoint)
    model.eval()
    # The val split exactly as the pipeline reads it for validation (with the checkpoint's image policy
    # where the pipeline keeps one).
    dataset = pipeline_data.build_splits(config.data, pipeline_data.stored_image_policy(state)).val
    iou, mismatched = IoU(), 0
    with torch.no_grad():
        for index in range(len(dataset)):
            sample = dataset[index]
            prediction = model(sample.image[None])["seg"].argmax(1)[0]
            name = ours_file_name(dataset, sample.image_id)
            if name is None:              # a reader we cannot map to file names: its own reading of the labels
                target = sample.mask
            else:
                target = val_mask(data, name, args.image_size)
                if sample.mask is not None:   # the pipeline's reading of the labels must agree with the PNG
                    mismatched += int((sample.mask != target).sum())
            iou.update(prediction, target, sample.image)
    steps = result.position.global_step - result.position.skipped_steps     # steps that trained
    return {**iou.result(), "seconds": result.seconds, "steps": steps, "label_pixels_differing": mismatched,
            "pipeline_val_mIoU": result.evaluation.metrics.get("seg/mIoU", float("nan"))}


def ours_file_name(dataset, image_id: int) -> str | None:
    """The tile's file name, to take the same ground truth as the peer (COCO: the image entry; mask folder:
    the image_id is the pair's position); None when the reader exposes neither."""
    if hasattr(dataset, "file_name"):
        (position,) = np.flatnonzero(dataset.image_ids == image_id)
        return dataset.file_name(int(position))
    if hasattr(dataset, "pairs"):
        return Path(dataset.pairs[image_id][0]).name
    return None


# ---- peer: what a user writes with segmentation-models-pytorch -----------------------------------------------------

def read_stretched(path: Path) -> torch.Tensor:
    """16-bit grey PNG -> [3, H, W] in [0, 1]: per-image 1st..99.8th percentile stretch, grey replicated."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED).astype(np.float32)
    low, high = np.percentile(image, [1, 99.8])
    image = np.clip((image - low) / max(high - low, 1e-6), 0, 1)
    return torch.from_numpy(image.astype(np.float32))[None].repeat(3, 1, 1)


class MaskFolder(torch.utils.data.Dataset):
    def __init__(self, root: Path, size: int, hflip: bool):
        self.images = sorted((root / "images").glob("*.png"))
        self.root, self.size, self.hflip = root, size, hflip

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int):
        path = self.images[index]
        image = read_stretched(path)
        mask = cv2.imread(str(self.root / "masks" / path.name), cv2.IMREAD_UNCHANGED)
        mask = torch.from_numpy((mask > 127).astype(np.int64))
        if image.shape[-1] != self.size:
            image = F.interpolate(image[None], size=(self.size, self.size), mode="bilinear", align_corners=False)[0]
            mask = F.interpolate(mask[None, None].float(), size=(self.size, self.size), mode="nearest-exact")
            mask = mask[0, 0].long()
        if self.hflip and torch.rand(()) < 0.5:
            image, mask = image.flip(-1), mask.flip(-1)
        return image, mask, path.name


def build_peer() -> tuple[torch.nn.Module, int]:
    """smp U-Net on mobilenet_v2 with torchvision's ImageNet weights in its encoder; returns the model and the
    number of encoder tensors loaded (all of them, or this raises)."""
    import segmentation_models_pytorch as smp
    from torchvision.models import MobileNet_V2_Weights, mobilenet_v2

    model = smp.Unet("mobilenet_v2", encoder_weights=None, classes=2)
    weights = {k: v for k, v in mobilenet_v2(weights=MobileNet_V2_Weights.IMAGENET1K_V1).state_dict().items()
               if not k.startswith("classifier.")}
    encoder_keys = set(model.encoder.state_dict())
    if encoder_keys != set(weights):
        raise RuntimeError(f"smp encoder vs torchvision keys: missing {sorted(encoder_keys - set(weights))[:5]}, "
                           f"unexpected {sorted(set(weights) - encoder_keys)[:5]}")
    model.encoder.load_state_dict(dict(weights), strict=True)
    loaded = model.encoder.state_dict()
    if not all(torch.equal(loaded[k], v) for k, v in weights.items()):
        raise RuntimeError("smp encoder: a torchvision weight did not load")
    return model, len(weights)


def run_peer(data: Path, args, steps: int, seed: int) -> dict:
    import segmentation_models_pytorch as smp

    seed_peer(seed)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, loaded = build_peer()
    model = model.to(device)
    print(f"  peer: loaded {loaded} torchvision MobileNetV2 tensors into the smp encoder (all of its keys)", flush=True)
    train = MaskFolder(data / "masks" / "train", args.image_size, hflip=True)
    loader = torch.utils.data.DataLoader(train, batch_size=args.batch_size, shuffle=True,
                                         drop_last=len(train) > args.batch_size,
                                         generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
    dice = smp.losses.DiceLoss(mode="multiclass")
    model.train()

    def batch_loss(batch) -> torch.Tensor:
        images, masks, _ = batch
        logits = model(((images - IMAGENET_MEAN) / IMAGENET_STD).to(device))
        masks = masks.to(device)
        return F.cross_entropy(logits, masks) + 0.5 * dice(logits, masks)

    seconds, step = train_steps(loader, steps, batch_loss, optimizer, schedule)
    model.eval()
    iou = IoU()
    val = MaskFolder(data / "masks" / "val", args.image_size, hflip=False)
    with torch.no_grad():
        for index in range(len(val)):
            image, _, name = val[index]
            prediction = model(((image - IMAGENET_MEAN) / IMAGENET_STD)[None].to(device)).argmax(1)[0]
            iou.update(prediction, val_mask(data, name, args.image_size), image)
    return {**iou.result(), "seconds": seconds, "steps": step, "encoder_tensors_loaded": loaded}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("data/real/nuclei16"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=1, help="runs seeds 0..N-1")
    parser.add_argument("--only", choices=["ours", "peer"])
    parser.add_argument("--format", choices=["coco", "masks"], default="coco",
                        help="our reader's input (masks: 0/255 masks, which need 255 mapped to the class)")
    parser.add_argument("--out", type=Path, help="write the per-seed results as JSON")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    set_threads(args.threads)
    train_images = sorted((args.data / "masks" / "train" / "images").glob("*.png"))
    if not train_images:
        raise SystemExit(f"{args.data}: no tiles; build the data first: .venv/bin/python bench/real_data.py")
    epochs, per_epoch, steps = epochs_for(args.steps, len(train_images), args.batch_size)
    print(f"{len(train_images)} train tiles, batch {args.batch_size}: {per_epoch} steps per epoch; "
          f"{epochs} epochs = {steps} steps for both (asked {args.steps})", flush=True)
    methods = {f"ours: MobileNetV2 + unet head (pipeline, format {args.format})": "ours",
               "peer: smp.Unet mobilenet_v2, percentile-stretched 16-bit": "peer"}
    results = run_seeds(methods, args.only, args.seeds,
                        lambda key, seed, scratch: run_ours(args.data, args, epochs, seed, scratch) if key == "ours"
                        else run_peer(args.data, args, steps, seed))
    print(f"\nNuclei (data/real/nuclei16, 16-bit): {len(train_images)} train tiles, image size {args.image_size}, "
          f"batch {args.batch_size}, {steps} steps, seeds {args.seeds}; torchmetrics JaccardIndex on the val tiles\n")
    print(markdown_table(COLUMNS, results))
    write_results(args.out, args, steps, epochs, results)


if __name__ == "__main__":
    main()
