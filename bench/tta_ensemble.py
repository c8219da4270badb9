"""Test-time augmentation and ensembles: metric gain against time cost, on the shapes set and the real sets.

Needs two or more trained checkpoints per set (one per seed), trained with the shipped configs, e.g.:

    for s in 0 1; do
      .venv/bin/python -m pipeline train configs/real/trees_yolo.yaml seed=$s name=b13_trees_s$s output_dir=runs/b13
      .venv/bin/python -m pipeline train configs/real/nuclei_unet.yaml seed=$s name=b13_nuclei_s$s output_dir=runs/b13
      .venv/bin/python -m pipeline train configs/shapes_multitask.yaml seed=$s name=b13_shapes_s$s train.epochs=3 \
          output_dir=runs/b13
    done
    .venv/bin/python bench/tta_ensemble.py --runs runs/b13

Each row evaluates every seed's checkpoint alone (mean and range over the seeds), or all of them as one ensemble,
on the set's validation split, with the views named. Time: seconds per validation image, all rows measured in
this one run, after a warm-up (rounds interleaved would be fairer still; the rows are short and run back to back).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from pipeline.engine.data import eval_loader  # noqa: E402
from pipeline.engine.validation import evaluate  # noqa: E402
from pipeline.inference.predictor import DEFAULT_TTA, Predictor, parse_views  # noqa: E402
from pipeline.inference.trained import load_trained  # noqa: E402
from pipeline.inference.val_data import evaluation_dataset  # noqa: E402

SETS = {  # name -> the metrics reported
    "shapes": ["cls/accuracy", "seg/mIoU", "det/mAP50", "det/mAP", "recon/psnr"],
    "trees": ["det/mAP50", "det/mAP"],
    "nuclei": ["seg/mIoU"],
}
ROWS = [  # (label, ensemble?, views)
    ("one model", False, None),
    ("one model, TTA hflip", False, "hflip"),
    ("one model, TTA flips (h, v, hv)", False, "hflip,vflip,hvflip"),
    (f"one model, TTA default ({DEFAULT_TTA})", False, "default"),
    ("ensemble of {n}", True, None),
    ("ensemble of {n}, TTA hflip", True, "hflip"),
    ("ensemble of {n}, TTA flips (h, v, hv)", True, "hflip,vflip,hvflip"),
]


def checkpoints(runs: Path, name: str) -> list[Path]:
    found = sorted(runs.glob(f"b13_{name}_s*/*/last.pt"))
    if len(found) < 2:
        raise SystemExit(f"{runs}: expected the checkpoints b13_{name}_s<seed>/<run id>/last.pt of 2+ seeds, "
                         f"found {len(found)}; train them first (see this file's docstring)")
    return found


def measure(members, views: str | None, box_merge: str) -> tuple[dict[str, float], float]:
    first = members[0]
    dataset, _ = evaluation_dataset(first)
    predictor = Predictor([m.model for m in members], parse_views(views), box_merge,
                          size_multiple=max(first.model.backbone.strides))
    loader = eval_loader(dataset, first.config.data, first.config.seed)
    start = time.perf_counter()
    evaluation = evaluate(predictor, loader, torch.device("cpu"), list(dataset.category_ids))
    return evaluation.metrics, (time.perf_counter() - start) / len(dataset)


def rows_for(name: str, paths: list[Path], box_merge: str) -> list[str]:
    members = [load_trained(path) for path in paths]
    metrics = SETS[name]
    lines, base_time = [], None
    measure(members[:1], None, box_merge)  # warm-up: first-call allocations and caches are not a row's cost
    for label, ensemble, views in ROWS:
        label = label.format(n=len(members))
        groups = [members] if ensemble else [[m] for m in members]
        results = [measure(group, views, box_merge) for group in groups]
        per_image = statistics.mean(seconds for _, seconds in results)
        base_time = base_time or per_image
        cells = []
        for key in metrics:
            values = [result[key] for result, _ in results]
            spread = f" [{min(values):.3f}, {max(values):.3f}]" if len(values) > 1 else ""
            cells.append(f"{statistics.mean(values):.3f}{spread}")
        lines.append(f"| {name} | {label} | " + " | ".join(cells)
                     + f" | {per_image * 1000:.1f} ms ({per_image / base_time:.1f}x) |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, default=Path("runs/b13"))
    parser.add_argument("--sets", nargs="+", default=list(SETS), choices=list(SETS))
    parser.add_argument("--box-merge", default="wbf", choices=["wbf", "nms"])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for name in args.sets:
        print(f"\n| set | predictions | {' | '.join(SETS[name])} | time per val image |")
        print("|---|---|" + "---|" * len(SETS[name]) + "---|")
        rows_for(name, checkpoints(args.runs, name), args.box_merge)


if __name__ == "__main__":
    main()
