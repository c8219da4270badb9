"""The size / speed / accuracy trade-off of every way `pipeline` makes a model smaller, in one run.

Two models: the default job's (configs/shapes_multitask.yaml: pretrained MobileNetV2, cls + U-Net + YOLO + AE
heads, 96 px) and a classification-only one on real data that ships with scikit-image (LFW face / non-face
crops, bench/transfer_learning.py's split, 64 px). For each, the rows:

- float: the baseline, trained for --epochs from the ImageNet weights;
- float + N epochs: the float model trained --tune-epochs more (model.init), the same budget as the
  pruned and QAT rows, which start from it too;
- pruned 30 % / 50 %: `prune` (structured, L1, channels in multiples of 8) of the float model, fine-tuned
  --tune-epochs;
- pruned 50 %, distilled: the student (the 50 % pruned model: MobileNetV2 at half width everywhere, started
  from the float model's weights) fine-tuned as long, with the float model as teacher (model.distill): against
  "pruned 50 %", distilled against alone at the same budget;
- int8 PTQ: the float model's ONNX file quantised by onnxruntime, calibrated on the training split;
- int8 / ternary / binary QAT: the float model fine-tuned --tune-epochs with model.qat (model.init = float);
  the int8 QAT model is then quantised like PTQ (its weights already on the int8 grid).

Columns: parameters, FLOPs of one image (MACs, as `summary` counts them), the ONNX file's size, the weights'
size at their deployed precision (32/8/2/1 bits; the first conv and the heads' output layers stay float in
QAT), onnxruntime latency at batch 1 on one CPU thread (median of --runs after warm-up), and each task's
validation metric (of the ONNX file for the int8 rows, of PyTorch otherwise).

    .venv/bin/python bench/compression.py [--epochs N] [--tune-epochs N] [--models multitask classification]
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from pipeline.compression.int8 import Int8Options, int8_path, quantise, training_images  # noqa: E402
from pipeline.compression.pruning import count  # noqa: E402
from pipeline.config.schema import apply_overrides, parse_config  # noqa: E402
from pipeline.inference.export import export_model  # noqa: E402
from pipeline.inference.parity import check_parity  # noqa: E402
from pipeline.inference.trained import load_trained  # noqa: E402
from pipeline.jobs.cli import main as pipeline_main  # noqa: E402
from pipeline.jobs.train import run_training  # noqa: E402
from transfer_learning import export_lfw_subset  # noqa: E402

HEADLINE = {"classification": "accuracy", "segmentation": "mIoU", "detection": "mAP50", "reconstruction": "ssim"}
TEMPERATURE, ALPHA = 4.0, 0.5    # Hinton et al.'s usual softening; half the task loss, half the teacher's
# (training epochs, fine-tuning epochs) per model: the default job trains ~30 s an epoch here, LFW's 120
# training crops ~2 s, and a pruned MobileNetV2 needed 4 epochs on them to recover (1 left it at chance).
BUDGETS = {"multitask": (4, 2), "classification": (6, 4)}


@dataclass
class Row:
    name: str
    params: int = 0
    macs: int = 0
    onnx_mb: float = 0.0
    deployed_mb: float = 0.0
    latency_ms: float = float("nan")
    metrics: dict[str, float] = field(default_factory=dict)
    train_s: float = 0.0
    note: str = ""


# ---- the two models' configs -----------------------------------------------------------------------------

def multitask_config(root: Path, epochs: int) -> dict:
    raw = yaml.safe_load((REPO / "configs/shapes_multitask.yaml").read_text())
    raw["train"]["epochs"] = epochs
    return finish(raw, root, "bench_compression_multitask")


def classification_config(root: Path, epochs: int) -> dict:
    export_lfw_subset(root / "lfw")
    raw = {"name": "lfw", "seed": 0,
           "data": {"format": "imagefolder", "train": str(root / "lfw/train"), "val": str(root / "lfw/val"),
                    "image_size": 64, "batch_size": 16, "num_workers": 0},
           "model": {"backbone": {"name": "mobilenet_v2", "pretrained": "IMAGENET1K_V1"},
                     "heads": {"cls": {"type": "classification", "dropout": 0.2}}},
           "train": {"epochs": epochs, "optimizer": {"name": "adamw", "lr": 1e-3},
                     "scheduler": {"name": "cosine", "warmup_epochs": 0.5}}}
    return finish(raw, root, "bench_compression_classification")


def finish(raw: dict, root: Path, experiment: str) -> dict:
    raw["output_dir"] = str(root / "runs")
    raw["tracking"] = {"uri": f"sqlite:///{root}/mlflow.db", "experiment": experiment}
    return raw


def train(raw: dict, overrides: list[str]) -> tuple[Path, float]:
    config = parse_config(apply_overrides(copy.deepcopy(raw), overrides))
    result, _ = run_training(config)
    return result.best_checkpoint or result.checkpoint, result.seconds


# ---- measuring one model --------------------------------------------------------------------------------

def measured(name: str, checkpoint: Path, folder: Path, train_s: float, bits: int = 32, int8: bool = False,
             runs: int = 50, note: str = "") -> Row:
    """Export `checkpoint` to ONNX (then to int8 with `int8`) and measure everything a row shows."""
    trained = load_trained(checkpoint)
    size = trained.config.data.image_size
    example = torch.rand(1, trained.config.data.channels, size, size)
    macs, params = count(trained.model, example)
    exported = export_model(trained, folder / f"{name.replace(' ', '_')}.onnx")
    if int8:   # what `export --int8` does: calibrated on 64 training images, heads' output layers in float
        quantised = quantise(exported.model_path, int8_path(exported.model_path), training_images(trained, 64),
                             Int8Options())
        exported = dataclasses.replace(exported, model_path=quantised.model_path)
    parity = check_parity(trained, exported, max_images=100_000)
    metrics = parity.metrics_export if int8 else parity.metrics_torch
    return Row(name, params, macs, exported.model_path.stat().st_size / 2**20,
               deployed_megabytes(trained.model, bits), latency(exported.model_path, example, runs),
               headline(trained, metrics), train_s, note)


def deployed_megabytes(model: torch.nn.Module, bits: int) -> float:
    """Weights at the precision they are deployed at: quantised layers at `bits`, the rest (float layers,
    biases, norms) at 32."""
    quantised = sum(p.numel() for name, p in model.named_parameters() if "parametrizations.weight.original" in name)
    if bits == 8 and not quantised:   # PTQ: every conv / linear weight is int8
        quantised = sum(m.weight.numel() for m in model.modules()
                        if isinstance(m, (torch.nn.modules.conv._ConvNd, torch.nn.Linear)))
    total = sum(p.numel() for p in model.parameters())
    return (quantised * bits + (total - quantised) * 32) / 8 / 2**20


def latency(path: Path, example: torch.Tensor, runs: int) -> float:
    """Median milliseconds of one batch-1 inference in onnxruntime on one thread."""
    options = ort.SessionOptions()
    options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: example.numpy().astype(np.float32)}
    for _ in range(10):
        session.run(None, feed)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def headline(trained, metrics: dict[str, float]) -> dict[str, float]:
    """Each task's headline metric, by its head's kind."""
    return {f"{task}/{HEADLINE[head.kind]}": metrics[f"{task}/{HEADLINE[head.kind]}"]
            for task, head in trained.model.heads.items()}


# ---- the rows -------------------------------------------------------------------------------------------

def rows_for(raw: dict, root: Path, epochs: int, tune: int, runs: int) -> list[Row]:
    folder = root / "onnx"
    folder.mkdir(parents=True, exist_ok=True)
    rows: list[Row] = []

    def attempt(name: str, make) -> None:
        """One row; a failure is a row saying why, and the others still run."""
        try:
            rows.append(make())
        except Exception as error:   # noqa: BLE001 (a benchmark reports every row it can)
            traceback.print_exc()
            rows.append(Row(name, note=f"failed: {type(error).__name__}: {str(error).splitlines()[0][:120]}"))
        print(format_row(rows[-1], list(rows[0].metrics) if rows[0].metrics else []), flush=True)

    float_checkpoint, float_s = train(raw, [])
    attempt("float", lambda: measured("float", float_checkpoint, folder, float_s, runs=runs))
    # The fine-tuned rows below train --tune-epochs more than the float model: this is their reference.
    attempt(f"float + {tune} epochs", lambda: tuned_float_row(raw, float_checkpoint, tune, folder, runs))
    attempt("int8 PTQ", lambda: measured("int8 PTQ", float_checkpoint, folder, 0.0, bits=8, int8=True, runs=runs,
                                         note="calibrated on the training split"))
    for amount in (0.3, 0.5):
        attempt(f"pruned {amount:.0%}", lambda amount=amount: pruned_row(raw, float_checkpoint, amount, tune, folder,
                                                                          runs))
    # The student: the float model pruned by half (every layer at half its channels: MobileNetV2 at 0.5x width,
    # started from the teacher's weights), fine-tuned alone above and with the float model as its teacher here.
    distill = f"model.distill={{teacher: '{float_checkpoint}', temperature: {TEMPERATURE}, alpha: {ALPHA}}}"
    attempt("pruned 50%, distilled", lambda: pruned_row(raw, float_checkpoint, 0.5, tune, folder, runs, [distill]))
    for bits, name in ((8, "int8 QAT"), (2, "ternary QAT"), (1, "binary QAT")):
        attempt(name, lambda bits=bits, name=name: qat_row(raw, float_checkpoint, bits, name, tune, folder, runs))
    return rows


def pruned_row(raw: dict, float_checkpoint: Path, amount: float, tune: int, folder: Path, runs: int,
               overrides: tuple[str, ...] = ()) -> Row:
    """`prune` (structured, L1, channels in multiples of 8) of the float model, fine-tuned `tune` epochs with
    the fine-tuning run's `overrides`."""
    distilled = bool(overrides)
    out = folder / f"pruned_{amount}{'_distilled' if distilled else ''}.pt"
    started = time.perf_counter()
    status = pipeline_main(["prune", str(float_checkpoint), "--amount", str(amount), "--epochs", str(tune),
                            "--out", str(out), "--overwrite", f"output_dir={raw['output_dir']}",
                            f"tracking.uri={raw['tracking']['uri']}", *overrides])
    if status != 0:
        raise RuntimeError(f"prune exited with {status}")
    summary = yaml.safe_load(out.with_suffix(".json").read_text())
    run_id = summary["fine_tune_run"]
    run_folder = Path(raw["output_dir"]) / raw["name"] / run_id
    checkpoint = run_folder / "best.pt" if (run_folder / "best.pt").exists() else run_folder / "last.pt"
    name = f"pruned {amount:.0%}" + (", distilled" if distilled else "")
    note = f"structured L1, fine-tuned {tune} epochs" + (" with the float model as teacher" if distilled else "")
    return measured(name, checkpoint, folder, time.perf_counter() - started, runs=runs, note=note)


def tuned_float_row(raw: dict, float_checkpoint: Path, tune: int, folder: Path, runs: int) -> Row:
    checkpoint, seconds = train(raw, [f"model.init={float_checkpoint}", "model.backbone.pretrained=false",
                                      f"train.epochs={tune}"])
    return measured(f"float + {tune} epochs", checkpoint, folder, seconds, runs=runs,
                    note=f"from float, {tune} epochs more: the budget of the rows below")


def qat_row(raw: dict, float_checkpoint: Path, bits: int, name: str, tune: int, folder: Path, runs: int) -> Row:
    checkpoint, seconds = train(raw, [f"model.qat={{bits: {bits}}}", f"model.init={float_checkpoint}",
                                      "model.backbone.pretrained=false", f"train.epochs={tune}"])
    return measured(name, checkpoint, folder, seconds, bits=bits, int8=bits == 8, runs=runs,
                    note=f"from float, {tune} epochs" + (", then int8 PTQ" if bits == 8 else ", ONNX holds float32"))


# ---- the table ------------------------------------------------------------------------------------------

def format_row(row: Row, tasks: list[str]) -> str:
    metrics = " | ".join(f"{row.metrics[t]:.3f}" if t in row.metrics else "-" for t in tasks)
    return (f"| {row.name} | {row.params / 1e6:.2f}M | {row.macs / 1e6:.0f} | {row.onnx_mb:.2f} | "
            f"{row.deployed_mb:.2f} | {row.latency_ms:.2f} | {metrics} | {row.train_s:.0f} | {row.note} |")


def table(title: str, rows: list[Row]) -> str:
    tasks = next((list(r.metrics) for r in rows if r.metrics), [])
    header = (f"**{title}**\n\n| model | params | MMACs | ONNX MB | weights MB (deployed) | ms, batch 1, 1 thread | "
              + " | ".join(tasks) + " | train s | note |\n|" + "---|" * (8 + len(tasks)))
    return "\n".join([header] + [format_row(r, tasks) for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--epochs", type=int, help="training epochs (default: per model, see BUDGETS)")
    parser.add_argument("--tune-epochs", type=int, help="fine-tuning epochs (default: per model)")
    parser.add_argument("--runs", type=int, default=100, help="timed inferences per latency")
    parser.add_argument("--models", nargs="*", default=list(BUDGETS), choices=list(BUDGETS))
    parser.add_argument("--keep", help="keep the runs and files in this folder (default: a temporary one)")
    args = parser.parse_args()
    builders = {"multitask": multitask_config, "classification": classification_config}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.keep or tmp)
        tables = []
        for model in args.models:
            epochs, tune = args.epochs or BUDGETS[model][0], args.tune_epochs or BUDGETS[model][1]
            raw = builders[model](root / model, epochs)
            title = f"{model}: {epochs} epochs, fine-tuning {tune}"
            tables.append(table(title, rows_for(raw, root / model, epochs, tune, args.runs)))
            print("\n" + tables[-1] + "\n", flush=True)
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()
