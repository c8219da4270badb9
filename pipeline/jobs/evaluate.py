"""The eval job: a checkpoint (and optionally other data) -> metrics.json + detections.json."""
from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from backbones.weights import WeightsFileError
from datasets.build import build_dataset
from pipeline.config.schema import parse_config, split_paths
from pipeline.config.typed import ConfigError, DataCheckError
from pipeline.engine.checkpoint import load_checkpoint
from pipeline.engine.data import build_splits, data_errors, eval_loader, read_options, stored_image_policy
from pipeline.engine.validation import Evaluation, evaluate
from pipeline.jobs.command import Command
from pipeline.jobs.tables import metrics_table
from pipeline.model import MultiTaskModel, build_model
from pipeline.runtime.device import select_device, select_precision


def run_eval(checkpoint: str | Path, data: str | None = None, images: str | None = None,
             out_dir: str | Path | None = None, device_name: str = "auto") -> tuple[Evaluation, Path]:
    """Evaluate on the checkpoint's validation split, or on the COCO file `data`; write the results to `out_dir`."""
    checkpoint = Path(checkpoint)
    model, state = model_from_checkpoint(checkpoint)
    config = parse_config(state["config"], source=f"{checkpoint} (embedded config)")
    policy = stored_image_policy(state)
    if data is None and config.data.sources:  # a mixture: the validation splits of its sources
        annotations, dataset = "the mixture's val splits", build_splits(config.data, policy).val
    else:
        annotations, images_root = (Path(data), Path(images) if images else None) if data else \
            split_paths(config.data.val)
        with data_errors("--data" if data else "data.val"):
            dataset = build_dataset(config.data.format, annotations, images_root, train=False,
                                    options=read_options(config.data, policy), split="val",
                                    class_names=list(state["class_names"]))
    if len(dataset) == 0:
        raise DataCheckError(f"{annotations}: no images to evaluate; expected at least one image entry")
    if list(dataset.class_names) != list(state["class_names"]):
        raise DataCheckError(f"{annotations}: categories {dataset.class_names} do not match the classes the checkpoint "
                         f"was trained on {state['class_names']}")
    device = select_device(device_name)
    evaluation = evaluate(model.to(device), eval_loader(dataset, config.data, config.seed), device,
                          list(dataset.category_ids), select_precision(config.train.amp, device).autocast(),
                          collect_detections=True)
    out = Path(out_dir) if out_dir else checkpoint.parent
    write_results(evaluation, out)
    return evaluation, out


def write_results(evaluation: Evaluation, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "metrics.json").write_text(json.dumps(evaluation.metrics, indent=2, sort_keys=True))
    for task, results in evaluation.detections.items():
        name = "detections.json" if len(evaluation.detections) == 1 else f"detections_{task}.json"
        (out / name).write_text(json.dumps(results))


def model_from_checkpoint(checkpoint: Path) -> tuple[MultiTaskModel, dict]:
    """The trained model a checkpoint holds (its EMA weights when the run kept them: they are what its
    validation metrics and best.pt measured), and the checkpoint itself."""
    state = load_checkpoint(checkpoint)
    config = parse_config(state["config"], source=f"{checkpoint} (embedded config)")
    # The checkpoint holds every weight; do not ask for pretrained files.
    model_config = dataclasses.replace(config.model, backbone=dataclasses.replace(config.model.backbone, pretrained=False))
    model = build_model(model_config, num_classes=len(state["class_names"]), in_channels=config.data.channels)
    model.load_state_dict(state["ema"] if state.get("ema") is not None else state["model"])
    return model, state


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint")
    parser.add_argument("--data", help="COCO annotation file to evaluate on (default: the config's val split)")
    parser.add_argument("--images", help="folder the annotation file's image paths are relative to")
    parser.add_argument("--out", help="output folder (default: the checkpoint's folder)")
    parser.add_argument("--device", default="auto")


def run(args: argparse.Namespace) -> str:
    evaluation, out = run_eval(args.checkpoint, args.data, args.images, args.out, args.device)
    return (metrics_table(evaluation.metrics, title="eval metrics")
            + f"\nwrote {out / 'metrics.json'}" + (" and detections" if evaluation.detections else ""))


COMMAND = Command("eval", "evaluate a checkpoint; writes metrics.json and detections.json", add_arguments, run,
                  user_errors=(ConfigError, FileNotFoundError, WeightsFileError, DataCheckError))
