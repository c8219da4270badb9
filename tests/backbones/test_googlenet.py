"""GoogLeNet: our input normalisation reproduces torchvision's transform_input; aux classifiers are dropped."""
from __future__ import annotations

import torch
from torchvision.models import googlenet

import backbones
from backbones.torchvision_models import IMAGENET_MEAN, IMAGENET_STD


def test_normalisation_reproduces_transform_input(tmp_path):
    # transform_input=True is what torchvision's ImageNet weights set; aux classifiers as in a model trained with them.
    torch.manual_seed(0)
    reference = googlenet(weights=None, aux_logits=True, transform_input=True, init_weights=False).eval()
    path = tmp_path / "googlenet.pth"
    torch.save(reference.state_dict(), path)
    backbone = backbones.build("googlenet", pretrained=str(path)).eval()
    assert not any("aux" in key for key in backbone.state_dict())

    captured = {}
    reference.inception5b.register_forward_hook(lambda module, inputs, output: captured.update(out=output))
    image = torch.rand(2, 3, 64, 64)
    imagenet_normalised = (image - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        reference(imagenet_normalised)
        ours = backbone(image)[-1]
    torch.testing.assert_close(ours, captured["out"], rtol=1e-5, atol=1e-5)
