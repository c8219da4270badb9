"""`python -m pipeline prune CHECKPOINT|runs:/<id> --amount 0.3 [--method l1|taylor] [--unstructured]
[--epochs N] [key=value ...]`: prune a trained model, save it, fine-tune it with its run's own config as a new
run, and report parameters, MACs, weight bytes and each task's validation metrics before pruning, right after
it, and after fine-tuning.

The pruned checkpoint (default beside the source, `<stem>.pruned-<method>-<amount>.pt`) loads wherever a
checkpoint does (eval, predict, export): it records its shapes. The fine-tuning is an ordinary training run, in
a new run folder and MLflow run of the same experiment, that starts from it (`model.init`), so it resumes like
any run; the overrides (e.g. train.optimizer.lr=0.0005) apply to it. Nothing of the source run is changed.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import Tensor
from torch.nn.utils import parametrize

from backbones.weights import WeightsFileError
from datasets.sample import Batch
from pipeline.compression.architecture import architecture
from pipeline.compression.pruning import PruneOptions, check_options, count, prune_model
from pipeline.config.schema import Config, apply_overrides, config_to_dict, parse_config
from pipeline.config.typed import ConfigError, DataCheckError
from pipeline.engine.checkpoint import save_checkpoint
from pipeline.engine.data import build_splits, eval_loader
from pipeline.engine.validation import evaluate
from pipeline.inference.trained import RUN_PREFIX, TrainedModel, load_trained
from pipeline.jobs.command import Command
from pipeline.model import MultiTaskModel
from pipeline.runtime.device import select_device, select_precision

TAYLOR_BATCHES = 4   # training batches whose loss gradients rank the channels for --method taylor


@dataclass
class Stage:
    """One row of the table: a model's size and validation metrics."""
    name: str
    params: int
    macs: int            # per image at the trained size, counted as `summary` counts them
    weight_bytes: int    # the float32 state dict, serialised
    metrics: dict[str, float]


@dataclass
class Measuring:
    """What every row is measured on."""
    example: Tensor                  # one image, for MACs
    val: torch.utils.data.DataLoader
    category_ids: list[int]
    device: torch.device
    amp: str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint file, or runs:/<run id> (its best.pt, else last.pt)")
    parser.add_argument("overrides", nargs="*", help="key.path=value overrides of the fine-tuning run's config")
    parser.add_argument("--amount", type=float, default=0.3,
                        help="fraction of each layer's channels (structured) or weights (--unstructured) to remove")
    parser.add_argument("--method", choices=("l1", "taylor"), default="l1",
                        help="channel importance: L1 norm of the weights, or first-order Taylor |weight x gradient| "
                             f"of the training loss over {TAYLOR_BATCHES} training batches")
    parser.add_argument("--unstructured", action="store_true",
                        help="zero the smallest weights instead of removing channels (torch.nn.utils.prune; the "
                             "dense size stays, for comparison)")
    parser.add_argument("--round-to", type=int, default=8,
                        help="keep channel counts multiples of this (default 8: onnxruntime's CPU kernels run "
                             "a MobileNetV2 pruned to odd counts slower than the unpruned one; 1: any count)")
    parser.add_argument("--epochs", type=int, default=3, help="fine-tuning epochs (0: prune and measure only)")
    parser.add_argument("--out", help="the pruned checkpoint (default: beside the source, "
                                      "<stem>.pruned-<method>-<amount>.pt; for runs:/ in the current folder)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    parser.add_argument("--tracking-uri", help="MLflow store for runs:/ (default: MLFLOW_TRACKING_URI)")


def run(args: argparse.Namespace) -> str:
    options = prune_options(args)
    trained = load_trained(args.checkpoint, args.tracking_uri)
    refuse_quantised(trained)
    out = Path(args.out) if args.out else default_out(args.checkpoint, trained.checkpoint, options)
    if out.exists() and not args.overwrite:
        raise ConfigError(f"--out: {out} exists; pass --overwrite to replace it, or choose another --out")
    fine_tune = fine_tune_config(trained, out, args.epochs, args.overrides)   # a bad override stops us here
    measuring, train_batches = measuring_data(trained)
    model = trained.model
    rows = [measure("before", model, measuring)]
    report = prune_model(model, measuring.example, options, taylor_loss(train_batches))
    save_pruned(trained, model, out, args.checkpoint, options)
    rows.append(measure(f"pruned ({describe(options)})", model, measuring))
    run_id = None
    if args.epochs > 0:
        from pipeline.jobs.train import run_training   # the training stack, only when fine-tuning

        result, run_id = run_training(fine_tune, tags={"pipeline.pruned_from": str(args.checkpoint),
                                                       "pipeline.prune": describe(options)})
        tuned = load_trained(result.best_checkpoint or result.checkpoint)
        name = f"fine-tuned ({args.epochs} epoch{'s' if args.epochs > 1 else ''})"
        rows.append(measure(name, tuned.model, measuring))
    summary = out.with_suffix(".json")
    summary.write_text(json.dumps({"source": str(args.checkpoint), "options": dataclasses.asdict(options),
                                   "sparsity": report.sparsity, "pruned_layers": report.pruned_layers,
                                   "fine_tune_run": run_id, "rows": [dataclasses.asdict(r) for r in rows]},
                                  indent=2))
    return (table(rows) + f"\npruned checkpoint: {out}"
            + (f" ({report.sparsity:.0%} of the pruned layers' weights are zero)" if not options.structured else "")
            + (f"\nfine-tuned as run {run_id}" if run_id else "") + f"\nsummary: {summary}")


def prune_options(args: argparse.Namespace) -> PruneOptions:
    options = PruneOptions(amount=args.amount, method=args.method, structured=not args.unstructured,
                           round_to=None if args.round_to == 1 else args.round_to)
    try:
        check_options(options)
    except ValueError as error:
        raise ConfigError(f"--{str(error).replace('_', '-')}") from None
    if args.epochs < 0:
        raise ConfigError(f"--epochs: expected 0 or more, got {args.epochs}")
    return options


def refuse_quantised(trained: TrainedModel) -> None:
    """Quantisation-aware layers hold their weight behind a parametrization that the dependency graph cannot
    resize: prune the float model, then train it with model.qat and model.init."""
    if any(parametrize.is_parametrized(module) for module in trained.model.modules()):
        raise ConfigError(f"{trained.checkpoint}: a quantisation-aware model (model.qat); prune its float "
                          "model, then fine-tune the pruned one with model.qat and model.init")


def default_out(source: str, checkpoint: Path, options: PruneOptions) -> Path:
    kind = "" if options.structured else "unstructured-"
    name = f"{checkpoint.stem}.pruned-{kind}{options.method}-{options.amount:g}.pt"
    if str(source).startswith(RUN_PREFIX):
        return Path(f"{str(source)[len(RUN_PREFIX):].split('/')[0]}.{name}")
    return checkpoint.with_name(name)


def fine_tune_config(trained: TrainedModel, init: Path, epochs: int, overrides: list[str]) -> Config:
    """The run's own config, starting from the pruned checkpoint for `epochs` epochs."""
    raw = config_to_dict(trained.config)
    raw["model"]["init"] = str(init)
    raw["model"]["backbone"]["pretrained"] = False   # every weight comes from model.init
    raw["train"]["epochs"] = max(epochs, 1)
    return parse_config(apply_overrides(raw, list(overrides)), source=f"{trained.checkpoint} (embedded config)")


def measuring_data(trained: TrainedModel) -> tuple[Measuring, list[Batch]]:
    """The validation loader the rows are measured on, and the first training batches (Taylor's loss)."""
    config = trained.config
    splits = build_splits(config.data, trained.policy)
    batches = []
    for batch in eval_loader(splits.train, config.data, config.seed):
        batches.append(batch)
        if len(batches) == TAYLOR_BATCHES:
            break
    measuring = Measuring(batches[0].image[:1], eval_loader(splits.val, config.data, config.seed),
                          trained.category_ids, select_device(config.train.device), config.train.amp)
    return measuring, batches


def taylor_loss(batches: list[Batch]) -> Callable[[MultiTaskModel], Tensor]:
    """The summed task losses over `batches`: the gradients Taylor importance ranks channels by."""
    def loss(model: MultiTaskModel) -> Tensor:
        total = torch.zeros(())
        for batch in batches:
            outputs = model(batch.image)
            for task, head in model.heads.items():
                total = total + sum(head.loss(outputs[task], batch).values())
        return total
    return loss


def measure(name: str, model: MultiTaskModel, measuring: Measuring) -> Stage:
    model.eval()
    macs, params = count(model.cpu(), measuring.example)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    device = measuring.device
    evaluation = evaluate(model.to(device), measuring.val, device, measuring.category_ids,
                          select_precision(measuring.amp, device).autocast())
    model.cpu()
    return Stage(name, params, macs, buffer.tell(), evaluation.metrics)


def save_pruned(trained: TrainedModel, model: MultiTaskModel, out: Path, source: str, options: PruneOptions) -> None:
    """A checkpoint every loader of trained models reads (load_trained: config, classes, weights, shapes)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint({"model": model.state_dict(), "ema": None, "architecture": architecture(model),
                     "config": config_to_dict(trained.config), "class_names": trained.class_names,
                     "category_ids": trained.category_ids, "image_policy": trained.policy.to_dict(),
                     "pruned": {"source": str(source), **dataclasses.asdict(options)}}, out)


def describe(options: PruneOptions) -> str:
    return f"{options.method} {options.amount:g}" + ("" if options.structured else " unstructured")


def table(rows: list[Stage]) -> str:
    """Sizes and the per-task headline metrics (task/metric keys), one row per stage."""
    keys = sorted({key for row in rows for key in row.metrics if key.count("/") == 1})
    header = ["", "params", "MMACs", "weights MB"] + keys
    lines = [[row.name, f"{row.params / 1e6:.2f}M", f"{row.macs / 1e6:.1f}", f"{row.weight_bytes / 2**20:.1f}"]
             + [f"{row.metrics[key]:.4f}" if key in row.metrics else "-" for key in keys] for row in rows]
    widths = [max(len(cells[i]) for cells in [header] + lines) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(cells, widths)).rstrip()
                     for cells in [header] + lines)


COMMAND = Command("prune", "prune a trained model's channels, fine-tune it, and compare size and metrics",
                  add_arguments, run, user_errors=(ConfigError, FileNotFoundError, DataCheckError, WeightsFileError),
                  takes_overrides=True)
