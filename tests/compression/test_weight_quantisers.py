"""Quantisation-aware training's weight quantisers: the values a deployed layer holds, the straight-through
gradient, and that a model trains and checkpoints with them attached."""
from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from pipeline.compression.weight_quantisers import WeightQuantiser, bake, quantise_weights


def _network() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


@pytest.mark.parametrize("bits, most_values", [(1, 2), (2, 3), (4, 15), (8, 255)])
def test_each_output_channel_holds_at_most_the_levels_of_its_bit_width_after_baking(bits, most_values):
    model = _network()
    names = quantise_weights(model, bits, keep=["0", "6"])     # first and last layer stay full precision
    assert names == ["2"]
    bake(model)
    weight = model[2].weight.detach()
    for channel in weight.flatten(1):
        values = channel.unique()
        assert len(values) <= most_values
        if bits == 2:   # ternary: exactly {-s, 0, +s}, symmetric
            assert len(values) == 3 and values[1] == 0 and torch.equal(values[0], -values[2])
        if bits == 1:   # binary: exactly {-s, +s}
            assert len(values) == 2 and torch.equal(values[0], -values[1])
    assert len(model[0].weight.detach().flatten(1)[0].unique()) > 3     # the kept layer was not touched


def test_uniform_quantisation_error_is_at_most_half_a_step():
    weight = torch.randn(4, 3, 3, 3)
    quantised = WeightQuantiser(8)(weight)
    step = weight.abs().flatten(1).amax(dim=1) / 127
    assert ((quantised - weight).abs().flatten(1).amax(dim=1) <= step / 2 + 1e-7).all()


def test_the_gradient_passes_the_quantiser_unchanged():
    weight = torch.randn(4, 3, 3, 3, requires_grad=True)
    upstream = torch.randn(4, 3, 3, 3)
    (WeightQuantiser(2)(weight) * upstream).sum().backward()
    torch.testing.assert_close(weight.grad, upstream)


@pytest.mark.parametrize("bits", [8, 2, 1])
def test_a_quantised_network_still_learns_and_checkpoints_its_full_precision_weights(bits):
    model = _network()
    quantise_weights(model, bits, keep=["0", "6"])
    images, labels = torch.rand(16, 3, 8, 8), torch.arange(16) % 3
    optimiser = torch.optim.Adam(model.parameters(), lr=0.01)
    losses = []
    for _ in range(60):
        loss = nn.functional.cross_entropy(model(images), labels)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    buffer.seek(0)
    again = _network()
    quantise_weights(again, bits, keep=["0", "6"])
    again.load_state_dict(torch.load(buffer, weights_only=True))
    torch.testing.assert_close(again(images), model(images))


def test_an_unsupported_bit_width_is_named():
    with pytest.raises(ValueError, match="bits: expected one of"):
        WeightQuantiser(3)
