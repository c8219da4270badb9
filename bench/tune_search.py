"""One real hyperparameter search against the hand-set default job, side by side in one run: the default job
(configs/shapes_multitask.yaml) trained once as written, then `tune` over bench/tune_space.yaml with the same
epochs per trial (TPE, median pruning on the per-epoch validation metric). Prints both runs' metrics and times
as a Markdown table for docs/BENCHMARKS.md.

    .venv/bin/python bench/tune_search.py [--trials 12] [--epochs 3] [--metric val/det/mAP]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from mlflow.tracking import MlflowClient  # noqa: E402

from pipeline.config.schema import load_config  # noqa: E402
from pipeline.jobs.train import run_training  # noqa: E402
from pipeline.jobs.tune import run_tune  # noqa: E402
from pipeline.tuning.search import TuneOptions  # noqa: E402
from pipeline.tracking.tracker import resolve_uri  # noqa: E402

CONFIG = REPO / "configs/shapes_multitask.yaml"
SHOWN = ["val/cls/accuracy", "val/seg/mIoU", "val/det/mAP", "val/det/mAP50", "val/recon/ssim"]


def row(name: str, metrics: dict[str, float], seconds: float) -> str:
    return f"| {name} | " + " | ".join(f"{metrics.get(key, float('nan')):.3f}" for key in SHOWN) + f" | {seconds:.0f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--metric", default="val/det/mAP")
    args = parser.parse_args()
    overrides = [f"train.epochs={args.epochs}", "tracking.experiment=bench_tune", f"train.monitor={args.metric}"]

    start = time.perf_counter()
    result, _ = run_training(load_config(CONFIG, overrides))
    default_seconds = time.perf_counter() - start
    default_metrics = {f"val/{key}": value for key, value in result.evaluation.metrics.items()}
    print(row("hand-set default", default_metrics, default_seconds), flush=True)

    start = time.perf_counter()
    tuned = run_tune(TuneOptions(config=CONFIG, space=REPO / "bench/tune_space.yaml", trials=args.trials,
                                 overrides=overrides, sampler="tpe", pruner="median", seed=0))
    search_seconds = time.perf_counter() - start
    states = [t.state.name for t in tuned.study.trials]
    client = MlflowClient(resolve_uri(load_config(CONFIG, overrides).tracking))
    best_run = client.get_run(tuned.best.user_attrs["mlflow_run_id"])
    # The trial's value is its best epoch (train.monitor); its last-epoch metrics are shown beside the default's.
    print(f"\n| run | {' | '.join(SHOWN)} | seconds |\n|---|{'---|' * len(SHOWN)}---|")
    print(row("hand-set default", default_metrics, default_seconds))
    print(row(f"best of {args.trials} trials (#{tuned.best.number})", best_run.data.metrics, search_seconds))
    default_best = max(epoch[args.metric] for epoch in result.history if args.metric in epoch)
    print(f"\n{args.metric} at its best epoch: search {tuned.best.value:.3f}, hand-set default {default_best:.3f}")
    print(f"trials: {', '.join(f'{s.lower()} {states.count(s)}' for s in sorted(set(states)))}")
    print(f"best params: {tuned.best.params}\nbest config: {tuned.best_config}")


if __name__ == "__main__":
    main()
