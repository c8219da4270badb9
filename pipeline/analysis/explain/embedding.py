"""The split in the backbone's feature space: nearest neighbours (against the same search on raw pixels) and a
t-SNE map. Both read the last stage, globally average-pooled: the vector a classification head sees."""
from __future__ import annotations

from collections import Counter
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from sklearn.manifold import TSNE
from torch import Tensor
from torch.utils.data import Dataset

from pipeline.analysis.explain.features_common import (CELL_INCHES, DPI, class_name, require_dataset, show_image,
                                                       split_batches)
from pipeline.analysis.explain.inputs import ExplainInputs, NotApplicable, Picture
from pipeline.model import MultiTaskModel

PIXEL_SIDE = 32         # images are compared in pixel space at this size (the lecture's CIFAR-sized kNN)
THUMBNAIL_SIDE = 96     # images kept for drawing are at most this big, so 500 of them stay small in memory
MIN_TSNE_IMAGES = 5
SAME, OTHER = "tab:green", "tab:red"


class PooledSplit(NamedTuple):
    features: Tensor            # [N, D] float: the last stage, global-average-pooled
    pixels: Tensor              # [N, P] float: the image at PIXEL_SIDE x PIXEL_SIDE, flattened
    labels: list[int | None]    # image-level labels
    images: Tensor              # [N, C, h, w] in [0, 1]: the images, shrunk to at most THUMBNAIL_SIDE (for drawing)


@torch.no_grad()
def pooled_features(model: MultiTaskModel, dataset: Dataset, limit: int, device) -> PooledSplit:
    """The first `limit` images of `dataset` through the backbone (on `device`); everything returned is on the CPU."""
    features, pixels, labels, images = [], [], [], []
    for batch, batch_labels in split_batches(dataset, limit, device):
        features.append(model.backbone(batch)[-1].float().mean(dim=(2, 3)).cpu())
        pixels.append(_resize(batch, (PIXEL_SIDE, PIXEL_SIDE)).flatten(1).cpu())
        images.append(_thumbnails(batch).cpu())
        labels += batch_labels
    return PooledSplit(torch.cat(features), torch.cat(pixels), labels, torch.cat(images))


def _resize(images: Tensor, size: tuple[int, int]) -> Tensor:
    return F.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)


def _thumbnails(images: Tensor) -> Tensor:
    height, width = images.shape[-2:]
    scale = THUMBNAIL_SIDE / max(height, width)
    if scale >= 1:
        return images.float()
    return _resize(images, (max(1, round(height * scale)), max(1, round(width * scale)))).clamp(0, 1)


def leave_one_out_neighbours(vectors: Tensor, k: int) -> Tensor:
    """[N, D] -> [N, k] indices of each row's k nearest other rows by Euclidean distance, nearest first."""
    distances = torch.cdist(vectors.double(), vectors.double())
    distances.fill_diagonal_(float("inf"))   # an image is not its own neighbour
    return distances.topk(min(k, len(vectors) - 1), dim=1, largest=False).indices


def same_class_rate(vectors: Tensor, labels: list[int | None], k: int) -> float:
    """Over the labelled images (every one a query, searched among the other labelled ones): the fraction of
    the k nearest neighbours that share the query's label. NaN with fewer than two labelled images."""
    kept = [i for i, label in enumerate(labels) if label is not None]
    if len(kept) < 2:
        return float("nan")
    known = torch.tensor([labels[i] for i in kept])
    neighbours = leave_one_out_neighbours(vectors[kept], k)
    return float((known[neighbours] == known[:, None]).float().mean())


def chance_rate(labels: list[int | None]) -> float:
    """The same-class rate of neighbours drawn at random: per labelled query, the share of the other labelled
    images with its label."""
    known = torch.tensor([label for label in labels if label is not None])
    if len(known) < 2:
        return float("nan")
    same = (known[:, None] == known[None, :]).sum(dim=1) - 1
    return float((same / (len(known) - 1)).mean())


def normalised(features: Tensor) -> Tensor:
    """L2-normalised rows: the direction of a feature vector, not its size, says what the image shows."""
    return F.normalize(features, dim=1)


def query_indices(labels: list[int | None], queries: int, seed: int) -> list[int]:
    """A seeded draw of `queries` images taking the classes in turn (one of each before a second of any), so
    the grids show every class rather than whatever the split starts with."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed)).tolist()
    drawn: Counter = Counter()
    turn = {}
    for i in order:
        turn[i] = drawn[labels[i]]
        drawn[labels[i]] += 1
    return sorted(order, key=turn.__getitem__)[:queries]   # a stable sort: within a turn, the seeded order


def neighbour_block(figure, split: PooledSplit, vectors: Tensor, queries: list[int], k: int,
                    class_names: list[str], title: str) -> None:
    """Rows = queries: the query, then its k nearest other images, titled with their class (green: the query's
    class, red: another)."""
    figure.suptitle(title, fontsize="small")
    neighbours = leave_one_out_neighbours(vectors, k)
    grid = figure.subplots(len(queries), 1 + neighbours.shape[1], squeeze=False)
    for row, query in zip(grid, queries):
        query_label = split.labels[query]
        show_image(row[0], split.images[query], f"query #{query}\n{class_name(class_names, query_label)}",
                   fontweight="bold")
        for axes, other in zip(row[1:], neighbours[query].tolist()):
            label = split.labels[other]
            colour = SAME if label is not None and label == query_label else OTHER
            show_image(axes, split.images[other], f"#{other}\n{class_name(class_names, label)}", color=colour)


def nearest_neighbours(inputs: ExplainInputs) -> list[Picture]:
    dataset = require_dataset(inputs, "nearest neighbours")
    options = inputs.options
    split = pooled_features(inputs.model, dataset, options.split_limit, inputs.device)
    count = len(split.labels)
    if count < 2:
        raise NotApplicable(f"nearest neighbours need at least 2 images in the split; it has {count}")
    k = min(options.neighbours, count - 1)
    features, pixels = normalised(split.features), split.pixels
    numbers = {"feature_same_class_rate": same_class_rate(features, split.labels, k),
               "pixel_same_class_rate": same_class_rate(pixels, split.labels, k),
               "chance_same_class_rate": chance_rate(split.labels)}
    queries = query_indices(split.labels, options.queries, options.seed)
    columns = 2 * (1 + k)
    figure = Figure(figsize=(CELL_INCHES * columns, (CELL_INCHES + 0.2) * len(queries) + 0.4), dpi=DPI,
                    layout="constrained")
    left, right = figure.subfigures(1, 2, wspace=0.04)
    neighbour_block(left, split, features, queries, k, inputs.class_names,
                    f"feature space: same class {_percent(numbers['feature_same_class_rate'])}")
    neighbour_block(right, split, pixels, queries, k, inputs.class_names,
                    f"pixel space: same class {_percent(numbers['pixel_same_class_rate'])}")
    unlabelled = sum(label is None for label in split.labels)
    skipped = f" {unlabelled} unlabelled image(s) left out of the rates." if unlabelled else ""
    caption = (f"Nearest neighbours among {count} images of the {inputs.split_name or 'split'}: left, by Euclidean "
               f"distance of L2-normalised pooled last-stage features; right, of raw pixels at {PIXEL_SIDE}x"
               f"{PIXEL_SIDE}. Each row: a query, then its {k} nearest other images (green: same class). Over "
               f"every labelled image as a query, {_percent(numbers['feature_same_class_rate'])} of the {k} "
               f"nearest neighbours share its class in feature space, {_percent(numbers['pixel_same_class_rate'])}"
               f" in pixel space ({_percent(numbers['chance_same_class_rate'])} by chance).{skipped}")
    return [Picture("Embedding", "embedding/neighbours.png", figure, caption, numbers)]


def _percent(rate: float) -> str:
    return "n/a" if np.isnan(rate) else f"{rate:.0%}"


def tsne_points(features: Tensor, seed: int) -> tuple[np.ndarray, float]:
    """[N, D] -> ([N, 2] t-SNE coordinates, the perplexity used)."""
    perplexity = min(30.0, (len(features) - 1) / 3)
    tsne = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed)
    return tsne.fit_transform(features.double().numpy()), perplexity


def tsne_figure(points: np.ndarray, labels: list[int | None], class_names: list[str]) -> Figure:
    """One scatter per class (and one grey one for unlabelled images), so the legend names them."""
    figure = Figure(figsize=(5.5, 4.5), dpi=DPI, layout="constrained")
    axes = figure.add_subplot()
    for label in sorted({label for label in labels if label is not None}) + [None]:
        rows = [i for i, value in enumerate(labels) if value == label]
        if not rows:
            continue
        colour = "lightgrey" if label is None else f"C{label % 10}"
        axes.scatter(points[rows, 0], points[rows, 1], s=14, color=colour, label=class_name(class_names, label))
    axes.legend(fontsize="x-small", markerscale=1.2, loc="best")
    axes.set_xticks([])
    axes.set_yticks([])
    axes.set_title("t-SNE of pooled last-stage features", fontsize="small")
    return figure


def tsne_embedding(inputs: ExplainInputs) -> list[Picture]:
    dataset = require_dataset(inputs, "the t-SNE embedding")
    options = inputs.options
    split = pooled_features(inputs.model, dataset, options.split_limit, inputs.device)
    count = len(split.labels)
    if count < MIN_TSNE_IMAGES:
        raise NotApplicable(f"a t-SNE map needs at least {MIN_TSNE_IMAGES} images; the split has {count}")
    points, perplexity = tsne_points(normalised(split.features), options.seed)
    figure = tsne_figure(points, split.labels, inputs.class_names)
    caption = (f"t-SNE (perplexity {perplexity:.3g}, seed {options.seed}) of the L2-normalised pooled last-stage "
               f"features of {count} images of the {inputs.split_name or 'split'}, coloured by image label. "
               "Tight single-colour clusters mean the backbone separates the classes; t-SNE keeps neighbourhoods, "
               "not distances, so gaps between clusters and their sizes mean little.")
    return [Picture("Embedding", "embedding/tsne.png", figure, caption)]
