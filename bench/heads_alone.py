"""Each head alone on the shapes set, on one budget: every configs/heads/*.yaml (ResNet-18 from random init,
the same epochs; fcn8s_vgg16.yaml is the published FCN on VGG-16, its fc6/fc7 as convolutions), plus the
FCN-16s and FCN-32s variants of fcn8s.yaml. Prints a Markdown table for docs/BENCHMARKS.md.

    .venv/bin/python bench/heads_alone.py [--epochs 3] [name ...]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config.schema import load_config  # noqa: E402
from pipeline.jobs.train import run_training  # noqa: E402

VARIANTS = {  # extra runs: name -> (config file, overrides)
    "fcn16s": ("fcn8s", ["model.heads.seg.variant=16s"]),
    "fcn32s": ("fcn8s", ["model.heads.seg.variant=32s"]),
}
SHOWN = ["accuracy", "top5", "mIoU", "pixel_accuracy", "dice", "mAP", "mAP50", "mAP75", "psnr", "ssim", "mse"]


def runs(selected: list[str]) -> dict[str, tuple[Path, list[str]]]:
    found = {p.stem: (p, []) for p in sorted((REPO / "configs/heads").glob("*.yaml"))}
    found.update({name: (REPO / f"configs/heads/{base}.yaml", extra) for name, (base, extra) in VARIANTS.items()})
    return {name: found[name] for name in (selected or found)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("names", nargs="*", help="config stems (default: all)")
    args = parser.parse_args()
    rows = []
    for name, (path, extra) in runs(args.names).items():
        config = load_config(path, [f"train.epochs={args.epochs}", "tracking.experiment=bench_heads_alone", *extra])
        result, run_id = run_training(config)
        metrics = {key.split("/", 1)[1]: value for key, value in result.evaluation.metrics.items()}
        shown = ", ".join(f"{k} {metrics[k]:.3f}" for k in SHOWN if k in metrics)
        head = next(iter(config.model.heads.values()))
        rows.append(f"| {name} | `{head.type}` | {shown} | {result.seconds:.0f} |")
        print(rows[-1], flush=True)
    print(f"\n| config | head type | val metrics after {args.epochs} epochs | train s |\n|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
