"""`python -m pipeline explain CHECKPOINT|runs:/<id> [IMAGES...] [--data val|train|ANNOTATIONS]`: see inside a
trained model. Filters, activations, maximally activating patches, saliency, Grad-CAM, occlusion, class and
channel visualisation, nearest neighbours and a t-SNE embedding (pipeline/analysis/explain/methods.py), as PNG
files and one self-contained index.html; for a runs:/ source also logged to that run under explain/."""
from __future__ import annotations

import argparse
import copy
import logging
from pathlib import Path

import torch

from backbones.weights import WeightsFileError
from pipeline.analysis.explain.inputs import ExplainInputs, ExplainOptions
from pipeline.analysis.explain.methods import METHODS, parse_methods, run_methods
from pipeline.analysis.explain.page import PAGE, write_explain_outputs
from pipeline.config.schema import split_paths
from pipeline.config.typed import ConfigError, DataCheckError
from pipeline.inference.predict_images import PredictOptions, model_inputs
from pipeline.inference.sources import expand_inputs
from pipeline.inference.trained import RUN_PREFIX, TrainedModel, load_trained
from pipeline.inference.val_data import evaluation_dataset
from pipeline.jobs.command import Command
from pipeline.runtime.device import select_device

log = logging.getLogger(__name__)

DEFAULT_IMAGES = 4


def read_split(trained: TrainedModel, data: str, images_root: str | None):
    """--data: 'val' / 'train' (the checkpoint's own splits) or an annotation file in its format."""
    if data in ("val", "train"):
        if data == "val":
            return evaluation_dataset(trained)
        annotations, root = split_paths(trained.config.data.train)
        dataset, _ = evaluation_dataset(trained, str(annotations), str(root) if root else None)
        return dataset, annotations
    return evaluation_dataset(trained, data, images_root)


def query_images(trained: TrainedModel, items: list[str], dataset, count: int) -> tuple[torch.Tensor, list[str]]:
    """The images to explain: the files named, else the split's first `count` images."""
    if items:
        found = expand_inputs(items)
        options = PredictOptions(image_size=trained.config.data.image_size, resize=trained.config.data.resize,
                                 policy=trained.policy)
        return model_inputs(found, options), [entry.name for entry in found]
    if dataset is None:
        raise ConfigError("explain: name images to explain, or a readable --data split to take them from")
    count = min(count, len(dataset))
    samples = [dataset[i] for i in range(count)]
    return torch.stack([s.image for s in samples]), [f"image {s.image_id}" for s in samples]


def explain_copy(trained: TrainedModel, device: torch.device) -> torch.nn.Module:
    """The model the methods differentiate: float32, eval mode, on `device`; the loaded one stays as it was."""
    return copy.deepcopy(trained.model).float().eval().to(device)


def output_folder(requested: str | None, source: str, trained: TrainedModel, overwrite: bool) -> Path:
    """--out, else explain/ beside the checkpoint (its run folder; for runs:/, explain/<run id> here). A folder
    holding an earlier page is refused without --overwrite."""
    if requested:
        out = Path(requested)
    elif source.startswith(RUN_PREFIX):
        out = Path("explain") / source[len(RUN_PREFIX):].split("/")[0]
    else:
        out = trained.checkpoint.parent / "explain"
    if (out / PAGE).exists() and not overwrite:
        raise ConfigError(f"--out {out}: holds an earlier explain page ({PAGE}); choose another folder or pass "
                          "--overwrite")
    return out


def run_explain(args: argparse.Namespace) -> tuple[Path, list, list]:
    try:
        names = parse_methods(args.methods)
    except ValueError as error:
        raise ConfigError(str(error)) from None
    trained = load_trained(args.checkpoint, args.tracking_uri)
    tasks = [t.strip() for t in args.tasks.split(",")] if args.tasks else list(trained.model.heads)
    unknown = sorted(set(tasks) - set(trained.model.heads))
    if unknown:
        raise ConfigError(f"--tasks: {unknown} not in the model; it has {sorted(trained.model.heads)}")
    out = output_folder(args.out, args.checkpoint, trained, args.overwrite)
    dataset, split_name, notes = None, "", []
    try:
        dataset, split_name = read_split(trained, args.data, args.images_root)
    except (FileNotFoundError, DataCheckError) as error:
        if args.data != "val" or not args.items:   # asked for, or the only source of images
            raise
        notes.append(f"No split for the dataset methods ({error}).")
    device = select_device(args.device)
    images, image_names = query_images(trained, args.items, dataset, args.num_images)
    inputs = ExplainInputs(explain_copy(trained, device), trained.class_names, images.to(device), image_names,
                           dataset, str(split_name), options(args))
    pictures, refusals = run_methods(inputs, names, tasks)
    notes.insert(0, f"Model: {args.checkpoint} ({trained.config.model.backbone.name} + "
                    f"{', '.join(f'{t}: {h.kind}' for t, h in trained.model.heads.items())}); images: "
                    f"{', '.join(image_names)}; split: {split_name or 'none'}.")
    page = write_explain_outputs(out, f"Explain {Path(str(args.checkpoint)).name}", pictures, refusals, notes)
    if args.checkpoint.startswith(RUN_PREFIX):
        log_to_run(args.checkpoint, args.tracking_uri, out)
    return page, pictures, refusals


def options(args: argparse.Namespace) -> ExplainOptions:
    stages = [int(s) for s in args.stages.split(",")] if args.stages else None
    return ExplainOptions(stages=stages, channels=args.channels, split_limit=args.split_limit,
                          cam_layer=args.cam_layer, ascent_steps=args.ascent_steps, seed=args.seed)


def log_to_run(source: str, tracking_uri: str | None, out: Path) -> None:
    """The outputs under the run's explain/ artifact folder, so they open from the run's artifact view."""
    from mlflow.tracking import MlflowClient

    run_id = source[len(RUN_PREFIX):].split("/")[0]
    MlflowClient(tracking_uri=tracking_uri).log_artifacts(run_id, str(out), "explain")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint", help="a checkpoint file, or runs:/<run id> (its best.pt, else last.pt)")
    parser.add_argument("items", nargs="*", metavar="IMAGES",
                        help=f"images, folders or glob patterns to explain (default: the split's first "
                             f"{DEFAULT_IMAGES})")
    parser.add_argument("--data", default="val",
                        help="the split for patches, neighbours and the embedding: val, train, or an annotation "
                             "file in the checkpoint's format (default: val)")
    parser.add_argument("--images-root", help="image folder of an annotation file given as --data")
    parser.add_argument("--methods", help=f"comma-separated, from: {', '.join(METHODS)} (default: all)")
    parser.add_argument("--tasks", help="comma-separated tasks to explain (default: all)")
    parser.add_argument("--num-images", type=int, default=DEFAULT_IMAGES,
                        help=f"images taken from the split when none are named (default {DEFAULT_IMAGES})")
    parser.add_argument("--stages", help="backbone stages to show, e.g. 2,3,4 (default: all)")
    parser.add_argument("--channels", type=int, default=8, help="channels per stage (default 8)")
    parser.add_argument("--split-limit", type=int, default=500, help="split images read (default 500)")
    parser.add_argument("--cam-layer", help="module for Grad-CAM, e.g. backbone.stages.3 (default: the deepest "
                                            "stage with at least 4x4 cells)")
    parser.add_argument("--ascent-steps", type=int, default=100, help="gradient ascent steps (default 100)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", help="output folder (default: explain/ beside the checkpoint)")
    parser.add_argument("--overwrite", action="store_true", help="write into an --out that holds a page")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--tracking-uri", help="MLflow store for runs:/ (default: MLFLOW_TRACKING_URI)")


def run(args: argparse.Namespace) -> str:
    page, pictures, refusals = run_explain(args)
    lines = [f"explain: {len(pictures)} figures in {page.parent}, page {page}"]
    lines += [f"  not applicable: {r.method}{f' ({r.task})' if r.task else ''}: {r.reason}" for r in refusals]
    return "\n".join(lines)


COMMAND = Command("explain", "see inside a trained model: filters, activations, patches, saliency, Grad-CAM, "
                             "occlusion, class visualisation, neighbours, t-SNE (PNGs + one HTML page)",
                  add_arguments, run,
                  user_errors=(ConfigError, DataCheckError, FileNotFoundError, WeightsFileError))
