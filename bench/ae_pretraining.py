"""Does autoencoder pre-training beat random init? configs/ae_pretrain.yaml learns a backbone from images
alone, then configs/seg_from_ae.yaml trains U-Net segmentation from that backbone and, for the same
budget, from random init. Prints a Markdown table for docs/BENCHMARKS.md.

    .venv/bin/python bench/ae_pretraining.py [--seeds 1]
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config.schema import load_config  # noqa: E402
from pipeline.jobs.train import run_training  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=1)
    args = parser.parse_args()
    pretrain, pretrain_id = run_training(load_config(REPO / "configs/ae_pretrain.yaml"))
    starts = {"autoencoder pre-trained": f"runs:/{pretrain_id}", "random init": "false"}
    results: dict[str, list] = {name: [] for name in starts}
    for seed in range(args.seeds):
        for name, pretrained in starts.items():
            config = load_config(REPO / "configs/seg_from_ae.yaml",
                                 [f"model.backbone.pretrained={pretrained}", f"seed={seed}"])
            results[name].append(run_training(config)[0])
    epochs = load_config(REPO / "configs/seg_from_ae.yaml").train.epochs
    print(f"\npre-training: {pretrain.seconds:.0f} s, val PSNR {pretrain.evaluation.metrics['recon/psnr']:.2f} dB "
          f"(run {pretrain_id})\n")
    print(f"| U-Net start | val mIoU after {epochs} epochs (mean of {args.seeds} seeds) | per seed | "
          f"mean mIoU curve | train s/run |\n|---|---|---|---|---|")
    for name, runs in results.items():
        finals = [r.evaluation.metrics["seg/mIoU"] for r in runs]
        curve = [statistics.mean(r.history[e]["val/seg/mIoU"] for r in runs) for e in range(epochs)]
        print(f"| {name} | {statistics.mean(finals):.3f} | {', '.join(f'{f:.3f}' for f in finals)} | "
              f"{' '.join(f'{c:.3f}' for c in curve)} | {statistics.mean(r.seconds for r in runs):.0f} |")


if __name__ == "__main__":
    main()
