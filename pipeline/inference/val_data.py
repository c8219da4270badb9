"""The data a trained model is evaluated on: its own validation split, or other annotations in its format, read
exactly as its training read them (image policy, resize). Used by eval and by the export's parity check."""
from __future__ import annotations

from pathlib import Path

from torch.utils.data import Dataset

from datasets.build import build_dataset
from pipeline.config.schema import split_paths
from pipeline.config.typed import DataCheckError
from pipeline.engine.data import build_splits, data_errors, read_options
from pipeline.inference.trained import TrainedModel


def evaluation_dataset(first: TrainedModel, data: str | None = None,
                       images: str | None = None) -> tuple[Dataset, str | Path]:
    """The data to evaluate on: `data` (with its images under `images`), else the checkpoint's val split. A split
that cannot be read, is empty or has other classes is a DataCheckError naming it (FileNotFoundError when the
annotations are not there)."""
    config = first.config
    if data is None and config.data.sources:  # a mixture: the validation splits of its sources
        annotations, dataset = "the mixture's val splits", build_splits(config.data, first.policy).val
    else:
        annotations, images_root = (Path(data), Path(images) if images else None) if data else \
            split_paths(config.data.val)
        with data_errors("--data" if data else "data.val"):
            dataset = build_dataset(config.data.format, annotations, images_root, train=False,
                                    options=read_options(config.data, first.policy), split="val",
                                    class_names=first.class_names)
    if len(dataset) == 0:
        raise DataCheckError(f"{annotations}: no images to evaluate; expected at least one image entry")
    if list(dataset.class_names) != first.class_names:
        raise DataCheckError(f"{annotations}: categories {dataset.class_names} do not match the classes the checkpoint "
                             f"was trained on {first.class_names}")
    return dataset, annotations
