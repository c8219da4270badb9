"""Feature-space explain methods: first-layer filters, activation maps, maximally activating patches, nearest
neighbours and t-SNE. Geometry is checked on hand-made backbones whose answers are known; the neighbour
measurement on the shapes classifier."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from backbones.base import Backbone
from datasets.sample import Sample
from pipeline.analysis.explain.activations import activation_maps
from pipeline.analysis.explain.embedding import (leave_one_out_neighbours, nearest_neighbours, query_indices,
                                                 same_class_rate, tsne_embedding)
from pipeline.analysis.explain.filters import filter_grid, first_layer_filters, normalised_kernels
from pipeline.analysis.explain.inputs import ExplainInputs, ExplainOptions, NotApplicable
from pipeline.analysis.explain.max_patches import (FILL, StageMaxima, crop_patch, max_activating_patches,
                                                   top_units)
from pipeline.inference.val_data import evaluation_dataset
from pipeline.model import MultiTaskModel


class ListDataset(Dataset):
    def __init__(self, samples: list[Sample]) -> None:
        self.samples = samples
        self.class_names = ["a", "b"]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


def model_of(*stages: nn.Module, channels: list[int], strides: list[int], in_channels: int = 1) -> MultiTaskModel:
    """A headless model whose backbone is `stages`, with no normalisation (mean 0, std 1)."""
    backbone = Backbone(list(stages), channels, strides, mean=(0.0,) * in_channels, std=(1.0,) * in_channels)
    return MultiTaskModel(backbone, {}).eval()


def inputs_for(model, images, dataset=None, **options) -> ExplainInputs:
    return ExplainInputs(model, ["a", "b"], images, [f"#{i}" for i in range(len(images))], dataset, "test split",
                         ExplainOptions(**options))


def sample(image: torch.Tensor, label: int | None = 0) -> Sample:
    return Sample(image=image, image_id=0, orig_size=tuple(image.shape[-2:]), label=label)


# --- filters -------------------------------------------------------------------------------------------------

def test_filter_grid_has_one_cell_per_kernel_each_scaled_on_its_own():
    weight = torch.randn(10, 3, 5, 5) * torch.logspace(-3, 1, 10).view(10, 1, 1, 1)  # magnitudes differ 10^4
    mosaic, rows, cols = filter_grid(weight)
    assert (rows, cols) == (3, 4)
    assert mosaic.shape == (3 * 6 - 1, 4 * 6 - 1, 3)
    expected = normalised_kernels(weight)
    for i in range(10):
        top, left = (i // cols) * 6, (i % cols) * 6
        cell = mosaic[top:top + 5, left:left + 5]
        np.testing.assert_allclose(cell, expected[i].permute(1, 2, 0).numpy())
        assert cell.min() == 0.0 and cell.max() == 1.0    # own scale: even the 1e-3 kernel spans [0, 1]
    assert (mosaic[12:, 12:] == 1.0).all()                # cells 10 and 11 are empty background


def test_filter_grid_shows_fewer_than_three_channels_side_by_side_in_grey():
    mosaic, rows, cols = filter_grid(torch.randn(4, 2, 3, 3))
    assert (rows, cols) == (2, 2)
    assert mosaic.shape == (2 * 4 - 1, 2 * 8 - 1)         # each cell: 3 + gap + 3 wide


def test_first_layer_filters_draws_the_first_convolution_in_module_order():
    first = nn.Conv2d(3, 6, 5)
    model = model_of(nn.Sequential(first, nn.ReLU()), nn.Conv2d(6, 9, 3), channels=[6, 9], strides=[1, 1],
                     in_channels=3)
    [picture] = first_layer_filters(inputs_for(model, torch.rand(1, 3, 16, 16)))
    shown = picture.figure.axes[0].images[0].get_array()
    np.testing.assert_allclose(shown, filter_grid(first.weight)[0])
    assert picture.section == "Filters" and "6 kernels" in picture.caption


def test_first_layer_filters_refuses_a_backbone_without_convolutions():
    model = model_of(nn.AvgPool2d(2), channels=[1], strides=[2])
    with pytest.raises(NotApplicable, match="no nn.Conv2d"):
        first_layer_filters(inputs_for(model, torch.rand(1, 1, 8, 8)))


# --- activations ---------------------------------------------------------------------------------------------

def test_activation_maps_show_each_images_strongest_channels_first():
    conv = nn.Conv2d(1, 3, 1, bias=False)
    conv.weight.data = torch.tensor([1.0, 3.0, 2.0]).view(3, 1, 1, 1)   # channel means rank 1, 2, 0
    model = model_of(conv, nn.AvgPool2d(2), channels=[3, 3], strides=[1, 2])
    images = torch.rand(2, 1, 8, 8) + 0.1
    pictures = activation_maps(inputs_for(model, images, channels=2, stages=[-1]))
    assert [p.file for p in pictures] == ["activations/stage1.png"]
    axes = pictures[0].figure.axes
    assert len(axes) == 2 * 3                                 # rows = images; the image + 2 channels
    assert [a.get_title().split()[:2] for a in axes[1:3]] == [["ch", "1"], ["ch", "2"]]
    with pytest.raises(NotApplicable, match="stages"):
        activation_maps(inputs_for(model, images, stages=[2]))


# --- maximally activating patches ----------------------------------------------------------------------------

def test_crop_patch_is_centred_and_padded_with_grey():
    image = torch.arange(100.0).view(1, 10, 10)
    inside = crop_patch(image, (5.0, 5.0), (4, 4))            # pixels 3..6 have centres in [3, 7)
    assert torch.equal(inside, image[:, 3:7, 3:7])
    corner = crop_patch(image, (1.0, 1.0), (4, 4))            # would start at -1: one grey row and column
    assert (corner[:, 0, :] == FILL).all() and (corner[:, :, 0] == FILL).all()
    assert torch.equal(corner[:, 1:, 1:], image[:, 0:3, 0:3])


def test_top_units_skip_dead_channels_and_take_distinct_images():
    values = torch.tensor([[0.0, 5.0, 1.0], [0.0, 2.0, 9.0], [0.0, 7.0, 3.0]])   # [image, channel]; ch 0 dead
    positions = torch.tensor([[0, 5, 1], [0, 7, 2], [0, 3, 8]])
    units = top_units(StageMaxima(values, positions, (3, 4)), channels=2, top_k=2)
    assert list(units) == [2, 1]                              # by peak: 9, then 7
    assert [(u.image, u.y, u.x) for u in units[1]] == [(2, 0, 3), (0, 1, 1)]
    assert [u.value for u in units[2]] == [9.0, 3.0]


def square_image(top: int, left: int, brightness: float, size: int = 32) -> torch.Tensor:
    image = torch.zeros(1, size, size)
    image[:, top:top + 4, left:left + 4] = brightness
    return image


def test_max_patches_crop_each_unit_around_the_square_that_drives_it():
    # One stage, an 8x8 stride-4 box filter (padding 2): unit (y, x) sees input rows 4y-2 .. 4y+5, so a 4x4 square
    # at (4y, 4x) fills exactly one unit's window, and that unit's patch must show it at offset (2, 2).
    # Channel 1 (negative weights) never rises above 0 and must not be picked.
    conv = nn.Conv2d(1, 2, 8, stride=4, padding=2, bias=False)
    conv.weight.data = torch.stack([torch.ones(1, 8, 8), -torch.ones(1, 8, 8)])
    model = model_of(conv, channels=[2], strides=[4])
    squares = [(12, 20, 0.5), (0, 4, 1.0), (24, 8, 0.75)]     # (top, left, brightness); image 1 at the border
    dataset = ListDataset([sample(square_image(*s)) for s in squares])
    [picture] = max_activating_patches(inputs_for(model, torch.zeros(1, 1, 32, 32), dataset,
                                                  channels=1, top_k=3, stages=[0]))
    axes = picture.figure.axes
    assert len(axes) == 3 and axes[0].get_title().startswith("ch 0")
    for cell, image_index in zip(axes, [1, 2, 0]):            # strongest first
        top, left, brightness = squares[image_index]
        patch = torch.as_tensor(np.asarray(cell.images[0].get_array()))
        assert patch.shape == (8, 8)                          # the measured receptive field
        expected = crop_patch(dataset[image_index].image, (top + 2.0, left + 2.0), (8, 8))[0]
        assert torch.equal(patch, expected), image_index
        assert (patch[2:6, 2:6] == brightness).all()          # the square, centred in the patch
    border = torch.as_tensor(np.asarray(axes[0].images[0].get_array()))
    assert (border[:2] == FILL).all()                         # above the image: grey
    assert "8 px" in picture.caption and "clipped" not in picture.caption


# --- nearest neighbours and t-SNE ----------------------------------------------------------------------------

def test_neighbours_leave_the_query_out_and_rates_skip_unlabelled_images():
    vectors = torch.tensor([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2], [0.05]])
    labels = [0, 0, 0, 1, 1, 1, None]
    neighbours = leave_one_out_neighbours(vectors, 2)
    assert all(i not in row for i, row in enumerate(neighbours.tolist()))
    assert same_class_rate(vectors, labels, 2) == 1.0         # the unlabelled image is neither query nor neighbour
    assert same_class_rate(vectors, [0, 1, 0, 1, 0, 1, None], 1) < 0.5


def test_queries_take_the_classes_in_turn():
    labels = [0] * 10 + [1] * 2 + [2] * 2
    assert sorted(labels[i] for i in query_indices(labels, 3, seed=0)) == [0, 1, 2]


@pytest.fixture(scope="module")
def classifier_inputs(shapes_classifier):
    dataset, _ = evaluation_dataset(shapes_classifier)
    images = torch.stack([dataset[i].image for i in range(4)])
    return ExplainInputs(shapes_classifier.model, shapes_classifier.class_names, images,
                         [f"val #{i}" for i in range(4)], dataset, "shapes val split")


def test_feature_space_neighbours_share_the_class_more_often_than_pixel_neighbours(classifier_inputs):
    [picture] = nearest_neighbours(classifier_inputs)
    rates = picture.numbers
    print(f"\nsame-class rate of the {classifier_inputs.options.neighbours} nearest neighbours over "
          f"{len(classifier_inputs.dataset)} images: features {rates['feature_same_class_rate']:.3f}, "
          f"pixels {rates['pixel_same_class_rate']:.3f}, chance {rates['chance_same_class_rate']:.3f}")
    assert rates["feature_same_class_rate"] > rates["pixel_same_class_rate"]
    assert f"{rates['feature_same_class_rate']:.0%}" in picture.caption
    assert len(picture.figure.subfigs) == 2                   # feature space, pixel space


def test_tsne_has_one_point_per_image_read_and_refuses_under_five(classifier_inputs):
    [picture] = tsne_embedding(replace(classifier_inputs, options=ExplainOptions(split_limit=12)))
    axes = picture.figure.axes[0]
    assert sum(len(c.get_offsets()) for c in axes.collections) == 12
    legend = {t.get_text() for t in axes.get_legend().get_texts()}
    assert legend <= set(classifier_inputs.class_names) and legend
    with pytest.raises(NotApplicable, match="at least 5"):
        tsne_embedding(replace(classifier_inputs, options=ExplainOptions(split_limit=4)))


@pytest.mark.parametrize("method", [max_activating_patches, nearest_neighbours, tsne_embedding])
def test_methods_that_read_a_split_refuse_without_one(method):
    model = model_of(nn.Conv2d(1, 2, 3), channels=[2], strides=[1])
    with pytest.raises(NotApplicable, match="--data"):
        method(inputs_for(model, torch.rand(2, 1, 8, 8), dataset=None))


@pytest.mark.parametrize("method", [first_layer_filters, activation_maps])
def test_methods_on_the_explained_images_need_no_split(method):
    model = model_of(nn.Conv2d(1, 2, 3), channels=[2], strides=[1])
    assert method(inputs_for(model, torch.rand(2, 1, 8, 8), dataset=None))
