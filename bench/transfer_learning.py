"""Pretrained vs from-scratch, same budget, on a small real dataset that ships with scikit-image.

The data is `skimage.data.lfw_subset()`: 100 face and 100 non-face 25x25 grey crops (no download).
Each variant trains MobileNetV2 + a classification head through the pipeline's own train job for the
same epochs and steps, over several seeds, and the script prints a Markdown table for docs/BENCHMARKS.md.

    .venv/bin/python bench/transfer_learning.py [--epochs 8] [--seeds 3]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.config.schema import parse_config  # noqa: E402
from pipeline.jobs.train import run_training  # noqa: E402

VARIANTS = {
    "ImageNet weights, fine-tune all": {"pretrained": "IMAGENET1K_V1"},
    "ImageNet weights, backbone frozen": {"pretrained": "IMAGENET1K_V1", "freeze": "all"},
    "random init (scratch)": {"pretrained": False},
}


def export_lfw_subset(root: Path, val_fraction: float = 0.4, seed: int = 0) -> None:
    """Write train/val image folders, stratified: the first 100 crops are faces, the last 100 are not."""
    from skimage.data import lfw_subset

    images = (lfw_subset() * 255).round().astype(np.uint8)
    rng = np.random.default_rng(seed)
    for name, indices in (("face", np.arange(100)), ("non_face", np.arange(100, 200))):
        indices = rng.permutation(indices)
        cut = int(len(indices) * val_fraction)
        for split, chosen in (("val", indices[:cut]), ("train", indices[cut:])):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                cv2.imwrite(str(folder / f"{i:03d}.png"), images[i])


def config_for(root: Path, backbone: dict, epochs: int, seed: int, tracking_uri: str) -> dict:
    return {
        "name": "lfw_transfer", "seed": seed, "output_dir": str(root / "runs"),
        "data": {"format": "imagefolder", "train": str(root / "train"), "val": str(root / "val"),
                 "image_size": 64, "batch_size": 16, "num_workers": 0},
        "model": {"backbone": {"name": "mobilenet_v2", **backbone},
                  "heads": {"cls": {"type": "classification", "dropout": 0.2}}},
        "train": {"epochs": epochs, "optimizer": {"name": "adamw", "lr": 1e-3},
                  "scheduler": {"name": "cosine", "warmup_epochs": 0.5}},
        "tracking": {"uri": tracking_uri, "experiment": "bench_transfer_learning"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--tracking-uri", default="sqlite:///runs/mlflow.db")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        export_lfw_subset(root)
        results = {}
        for variant, backbone in VARIANTS.items():
            runs = [run_training(parse_config(config_for(root, backbone, args.epochs, seed, args.tracking_uri)))[0]
                    for seed in range(args.seeds)]
            results[variant] = runs
    print(f"| start | val accuracy, final (mean of {args.seeds} seeds) | per seed | "
          f"mean curve, epochs 1..{args.epochs} | train s/run |")
    print("|---|---|---|---|---|")
    for variant, runs in results.items():
        finals = [r.evaluation.metrics["cls/accuracy"] for r in runs]
        curve = [statistics.mean(r.history[e]["val/cls/accuracy"] for r in runs) for e in range(args.epochs)]
        print(f"| {variant} | {statistics.mean(finals):.3f} | {', '.join(f'{f:.3f}' for f in finals)} | "
              f"{' '.join(f'{c:.2f}' for c in curve)} | {statistics.mean(r.seconds for r in runs):.0f} |")


if __name__ == "__main__":
    main()
