"""k-means anchors with the IoU distance."""
import pytest
import torch

from heads.anchors import kmeans_anchors, shape_iou


def jittered(size: tuple[float, float], count: int, generator: torch.Generator, jitter: float = 1.0) -> torch.Tensor:
    return torch.tensor(size) + (torch.rand(count, 2, generator=generator) * 2 - 1) * jitter


def test_shape_iou_compares_sizes_as_if_centred():
    iou = shape_iou(torch.tensor([[10.0, 10.0], [20.0, 10.0]]), torch.tensor([[10.0, 10.0], [10.0, 20.0]]))
    assert torch.allclose(iou, torch.tensor([[1.0, 0.5], [0.5, 100 / 300]]))


def test_two_known_sizes_are_recovered_sorted_by_area():
    g = torch.Generator().manual_seed(0)
    # Many more small boxes: plain Euclidean k-means would still work here, but the IoU fit must too.
    sizes = torch.cat([jittered((10, 10), 300, g), jittered((40, 20), 60, g)])
    result = kmeans_anchors(sizes[torch.randperm(len(sizes), generator=g)], k=2)
    assert torch.allclose(result.anchors, torch.tensor([[10.0, 10.0], [40.0, 20.0]]), atol=1.0)
    assert result.mean_iou > 0.85


def test_is_deterministic_and_ignores_boxes_without_area():
    g = torch.Generator().manual_seed(1)
    sizes = torch.cat([jittered((8, 30), 50, g), jittered((30, 8), 50, g), jittered((60, 60), 50, g, 3.0)])
    degenerate = torch.tensor([[0.0, 12.0], [5.0, 0.0]])
    first = kmeans_anchors(torch.cat([sizes, degenerate]), k=3).anchors
    again = kmeans_anchors(sizes, k=3).anchors
    assert torch.equal(first, again)
    assert torch.allclose(first[2], torch.tensor([60.0, 60.0]), atol=3.0)
    # The two thin shapes of equal area both get their own anchor.
    assert {tuple(a.round().tolist()) for a in first[:2]} == {(8.0, 30.0), (30.0, 8.0)}


def test_no_boxes_raise_a_clear_error():
    with pytest.raises(ValueError, match="no boxes"):
        kmeans_anchors(torch.zeros(0, 2), k=3)
