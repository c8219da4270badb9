"""PSPNet, DeepLabv3 and DeepLabv3+: pyramid pooling, stride-scaled atrous rates, the auxiliary loss,
overfitting one batch, and living beside other heads in one multi-task model."""
from __future__ import annotations

import pytest
import torch

from heads.blocks import upsample_to
from heads.deeplab import DeepLabV3Head, DeepLabV3Options, DeepLabV3PlusHead, DeepLabV3PlusOptions, low_level_index
from heads.pspnet import PSPNetHead, PSPNetOptions, PSPNetOutputs, PyramidPooling
from support import CHANNELS, STRIDES, fake_features, make_batch, multitask_backward

NUM_CLASSES = 3
SMALL = {"pspnet": {"channels": 16}, "deeplabv3": {"channels": 16}, "deeplabv3plus": {"channels": 16, "low_level_channels": 8}}


def test_pyramid_pooling_of_a_constant_map_is_that_constant_in_every_bin():
    value = 0.7
    x = torch.full((2, 8, 5, 7), value)  # odd, non-square: bins 2, 3, 6 do not divide it evenly
    pyramid = PyramidPooling(8, [1, 2, 3, 6])
    for branch, bins in zip(pyramid.branches, [1, 2, 3, 6]):
        pooled = branch.pool(x)
        assert pooled.shape[-2:] == (bins, bins)
        assert torch.allclose(pooled, torch.full_like(pooled, value))
        back = upsample_to(pooled, x)  # the branch's upsampling, here applied before its conv
        assert back.shape == x.shape and torch.allclose(back, x)
    with torch.no_grad():
        out = pyramid.eval()(x)
    # The map itself first, then one C/4 branch per bin; each branch is constant over the map too.
    assert out.shape == (2, 8 + 4 * 2, 5, 7)
    assert torch.equal(out[:, :8], x)
    assert torch.allclose(out[:, 8:], out[:, 8:, :1, :1].expand_as(out[:, 8:]), atol=1e-6)


def dilations(head: DeepLabV3Head) -> list[int]:
    # torchvision's ASPP: convs[0] the 1x1 branch, then one ASPPConv (Conv2d first) per rate, then image pooling.
    return [branch[0].dilation[0] for branch in head.aspp.convs[1:-1]]


@pytest.mark.parametrize("head_class, options", [(DeepLabV3Head, DeepLabV3Options(channels=8)),
                                                 (DeepLabV3PlusHead, DeepLabV3PlusOptions(channels=8))])
def test_aspp_rates_double_when_the_output_stride_halves(head_class, options):
    by_stride = {}
    for deepest in (32, 16, 8):
        strides = [s if s < deepest else deepest for s in STRIDES]  # a dilated backbone keeps its last stages' stride
        by_stride[deepest] = dilations(head_class(CHANNELS, strides, NUM_CLASSES, options))
    assert by_stride[16] == [6, 12, 18]
    assert by_stride[32] == [3, 6, 9]
    assert by_stride[8] == [12, 24, 36]


def test_deeplabv3plus_takes_its_skip_at_stride_4_or_the_shallowest_beyond():
    assert low_level_index([2, 4, 8, 16, 32]) == 1
    assert low_level_index([2, 8, 16, 32]) == 1
    assert low_level_index([4, 4, 8, 16]) == 1  # equal strides: the deeper, richer map
    head = DeepLabV3PlusHead(CHANNELS, STRIDES, NUM_CLASSES, DeepLabV3PlusOptions(channels=8, low_level_channels=6))
    assert head.reduce[0].in_channels == CHANNELS[1] and head.reduce[0].out_channels == 6


DILATED = [2, 4, 8, 8, 8]  # output stride 8, as both papers train: the heads without skips need the resolution


def head_of(head_type: str, strides: list[int] = STRIDES, **options):
    torch.manual_seed(0)
    classes = {"pspnet": (PSPNetHead, PSPNetOptions), "deeplabv3": (DeepLabV3Head, DeepLabV3Options),
               "deeplabv3plus": (DeepLabV3PlusHead, DeepLabV3PlusOptions)}
    head_class, options_class = classes[head_type]
    return head_class(CHANNELS, strides, NUM_CLASSES, options_class(**{**SMALL[head_type], **options}))


@pytest.mark.parametrize("head_type", ["pspnet", "deeplabv3", "deeplabv3plus"])
def test_overfits_one_batch(head_type):
    # Fixed features that carry the mask (as a trained backbone's would), so the head alone must learn to read them.
    size = 48
    batch = make_batch(size=size, batch=2)
    one_hot = torch.nn.functional.one_hot(batch.mask, NUM_CLASSES + 1).permute(0, 3, 1, 2).float()
    noise = torch.Generator().manual_seed(0)
    features = [torch.nn.functional.avg_pool2d(one_hot, s).repeat(1, c // (NUM_CLASSES + 1) + 1, 1, 1)[:, :c]
                + 0.1 * torch.randn(2, c, size // s, size // s, generator=noise) for c, s in zip(CHANNELS, DILATED)]
    head = head_of(head_type, DILATED).train()
    optimizer = torch.optim.Adam(head.parameters(), lr=5e-3)
    losses = []
    for _ in range(40):
        terms = head.loss(head(features, batch.image), batch)
        loss = torch.stack(list(terms.values())).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    metric = head.metric()
    with torch.no_grad():
        metric.update(head.decode(head.eval()(features, batch.image)), batch)
    assert losses[-1] < 0.5 * losses[0], f"{head_type}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"
    assert metric.compute()["mIoU"] > 0.5


@pytest.mark.parametrize("head_type", ["pspnet", "deeplabv3", "deeplabv3plus"])
def test_plugs_into_a_multi_task_model(head_type):
    heads = {"cls": {"type": "classification"}, "seg": {"type": head_type, **SMALL[head_type]}, "det": {"type": "yolo"}}
    model, batch, terms = multitask_backward(heads, num_classes=NUM_CLASSES)
    assert all(torch.isfinite(v) for v in terms.values())
    seg = model.heads["seg"]
    assert all(p.grad is not None for p in seg.parameters())  # every branch (pspnet's aux too) is trained
    assert next(model.backbone.parameters()).grad is not None
    model.eval()
    with torch.no_grad():
        outputs = model(batch.image)
    assert outputs["seg"].shape == (2, NUM_CLASSES + 1, 64, 64)
    assert seg.decode(outputs["seg"]).shape == (2, 64, 64)
    assert outputs["cls"].shape == (2, NUM_CLASSES)


def test_pspnet_aux_loss_in_training_only_and_eval_outputs_unchanged_by_it():
    features, image, batch = fake_features(2, 64), torch.rand(2, 3, 64, 64), make_batch(size=64, batch=2)
    with_aux, without = head_of("pspnet", aux_weight=0.4), head_of("pspnet", aux_weight=0.0)
    outputs = with_aux.train()(features, image)
    assert isinstance(outputs, PSPNetOutputs) and outputs.aux_logits.shape == outputs.logits.shape
    terms = with_aux.loss(outputs, batch)
    assert "aux" in terms and terms["aux"] > 0
    main_only = {k: v for k, v in terms.items() if k != "aux"}
    assert torch.allclose(torch.stack(list(main_only.values())).sum(),
                          torch.stack(list(with_aux.criterion(outputs.logits, batch).values())).sum())
    assert "aux" not in without.train().loss(without(features, image), batch)
    # Same seed, aux built last: the main branches are identical; the state dicts differ by the aux branch alone.
    missing, unexpected = without.load_state_dict(with_aux.state_dict(), strict=False)
    assert not missing and unexpected and all(k.startswith("aux.") for k in unexpected)
    with_aux.eval(), without.eval()
    with torch.no_grad():
        a, b = with_aux(features, image), without(features, image)
    assert isinstance(a, torch.Tensor) and torch.equal(a, b)
    assert with_aux.named_outputs(a).keys() == {"logits"} and torch.equal(with_aux.named_outputs(a)["logits"], b)
    assert "aux" not in with_aux.loss(a, batch)
