"""The complexity report (`python -m pipeline summary`): counts held against published figures and hand sums."""
from __future__ import annotations

import pytest
import torch
import torchvision
import yaml
from torch import nn

from pipeline.jobs.cli import main
from pipeline.analysis.receptive_field import measure
from pipeline.analysis.complexity import format_summary, measure_complexity
from pipeline.jobs.summary import build_classifier, load_target


def classifier_on_meta(name: str) -> nn.Module:
    """Shapes only, no memory and no initialisation time: parameter and FLOP counts work on the meta device."""
    with torch.device("meta"):
        model, _ = build_classifier(name)
    return model


@pytest.mark.parametrize("name, params", [
    ("alexnet", 61_100_840),   # torchvision; the paper says ~60M
    ("vgg16", 138_357_544),    # Simonyan & Zisserman Table 2: 138M
    ("vgg19", 143_667_240),    # Table 2: 144M
    ("resnet18", 11_689_512),
])
def test_published_parameter_counts(name, params):
    assert measure_complexity(classifier_on_meta(name), (3, 224, 224)).total.params == params


def test_vgg16_at_224_is_15_5_gmacs():
    total = measure_complexity(classifier_on_meta("vgg16"), (3, 224, 224)).total
    assert total.flops == pytest.approx(30.9e9, rel=0.02)  # torch counts a multiply-add as 2 FLOPs
    assert total.macs == pytest.approx(15.5e9, rel=0.02)   # the paper-style figure


def test_flops_on_meta_match_a_real_forward():
    real = torchvision.models.resnet18()
    on_cpu = measure_complexity(real, (3, 32, 32), receptive_fields=False).total
    on_meta = measure_complexity(classifier_on_meta("resnet18"), (3, 32, 32)).total
    assert (on_meta.params, on_meta.flops, on_meta.activation_bytes) == (on_cpu.params, on_cpu.flops,
                                                                        on_cpu.activation_bytes)


def test_one_conv_layer_by_hand():
    conv = nn.Conv2d(3, 8, 3, padding=1)
    summary = measure_complexity(nn.Sequential(conv), (3, 16, 16), receptive_fields=False)
    (row,) = summary.rows
    # torch's counter: 2 FLOPs per multiply-add, the bias addition not counted.
    assert row.flops == summary.total.flops == 2 * 3 * 3 * 3 * 8 * 16 * 16
    assert summary.total.macs == 3 * 3 * 3 * 8 * 16 * 16
    assert row.params == 3 * 3 * 3 * 8 + 8
    assert row.output_shapes == [(8, 16, 16)]
    assert row.activation_bytes == 8 * 16 * 16 * 4


def test_in_place_activation_adds_no_activation_memory():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.Conv2d(8, 4, 1))
    total = measure_complexity(model, (3, 16, 16), receptive_fields=False).total
    assert total.activation_bytes == (8 + 4) * 16 * 16 * 4  # the ReLU output is the conv's own storage


def conv3(cin=4, cout=4, stride=1):
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1)


class Residual(nn.Module):
    """x + conv3x3(conv3x3(x)), the addition in place as torchvision's blocks do it."""
    def __init__(self):
        super().__init__()
        self.a, self.b = conv3(), conv3()

    def forward(self, x):
        out = self.b(torch.relu(self.a(x)))
        out += x
        return out


class Branches(nn.Module):
    """Inception-style: concatenate a 1x1 branch, a 5x5 branch and a max-pool branch."""
    def __init__(self):
        super().__init__()
        self.one, self.five = nn.Conv2d(4, 2, 1), nn.Conv2d(4, 2, 5, padding=2)
        self.pool = nn.MaxPool2d(3, stride=1, padding=1)

    def forward(self, x):
        return torch.cat([self.one(x), self.five(x), self.pool(x)], dim=1)


class InPlaceSum(nn.Module):
    """conv1x1(x) += conv5x5(x): the 1x1 layer's own output must keep its field of 1."""
    def __init__(self):
        super().__init__()
        self.one, self.five = nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 5, padding=2)

    def forward(self, x):
        out = self.one(x)
        out += self.five(x)
        return out


def rf(model, names, size=32):
    fields = measure(model, (4, size, size), names)
    return [(fields[n].size_text(), fields[n].stride_text()) for n in names]


def test_receptive_field_of_chains():
    three = nn.Sequential(conv3(), nn.ReLU(), conv3(), nn.BatchNorm2d(4), conv3())
    assert rf(three, ["0", "2", "4"]) == [("3", "1"), ("5", "1"), ("7", "1")]
    strided = nn.Sequential(conv3(stride=2), conv3())
    assert rf(strided, ["0", "1"]) == [("3", "2"), ("7", "2")]
    # Max pooling and ReLU are non-linear: measured as-is their gradient would hide part of the field.
    pooled = nn.Sequential(conv3(), nn.MaxPool2d(2), nn.ReLU(), conv3())
    assert rf(pooled, ["1", "3"]) == [("4", "2"), ("8", "2")]
    # The theoretical field belongs to the architecture, not to the weights (some heads zero-initialise a conv).
    zeroed = nn.Sequential(conv3(), conv3())
    nn.init.zeros_(zeroed[0].weight)
    assert rf(zeroed, ["1"]) == [("5", "1")]


def test_receptive_field_of_residual_and_branches():
    assert rf(Residual(), ["", "a"]) == [("5", "1"), ("3", "1")]
    assert rf(Branches(), ["", "one", "pool"]) == [("5", "1"), ("1", "1"), ("3", "1")]
    assert rf(InPlaceSum(), ["one", ""]) == [("1", "1"), ("5", "1")]


def test_receptive_field_reaching_the_border_is_a_lower_bound():
    deep = nn.Sequential(*[conv3() for _ in range(5)])  # RF 11 on an 8-pixel input
    assert rf(deep, ["4"], size=8) == [(">=8", "1")]


def test_vgg16_conv5_3_and_pool5_receptive_fields():
    # VGG-16's geometry (torchvision's own layer list "D") at 1/16 of the width: the field depends only on
    # kernels, strides and padding, and this runs ~250x faster than the full-width network.
    cfg = [v if v == "M" else v // 16 for v in torchvision.models.vgg.cfgs["D"]]
    features = torchvision.models.vgg.make_layers(cfg)
    convs = [name for name, m in features.named_modules() if isinstance(m, nn.Conv2d)]
    pools = [name for name, m in features.named_modules() if isinstance(m, nn.MaxPool2d)]
    fields = measure(features, (3, 224, 224), [convs[-1], pools[-1]])
    conv5_3, pool5 = fields[convs[-1]], fields[pools[-1]]
    assert (conv5_3.size_text(), conv5_3.stride_text()) == ("196", "16")
    assert (pool5.size_text(), pool5.stride_text()) == ("212", "32")


def test_resnet18_stage_receptive_fields():
    net = torchvision.models.resnet18()
    fields = measure(net, (3, 128, 128), ["conv1", "maxpool", "layer1", "layer2", "layer2.1.conv1", "layer2.0.downsample"])
    assert {k: (v.size_text(), v.stride_text()) for k, v in fields.items()} == {
        "conv1": ("7", "2"), "maxpool": ("11", "4"), "layer1": ("43", "4"), "layer2": ("99", "8"),
        "layer2.1.conv1": ("83", "8"), "layer2.0.downsample": ("43", "8"),
    }


def test_config_summary_parts_add_up(tmp_path):
    config = {
        "data": {"train": str(tmp_path / "none/annotations.json"), "val": str(tmp_path / "none/annotations.json"),
                 "image_size": 64},
        "model": {"backbone": {"name": "mobilenet_v2", "pretrained": "IMAGENET1K_V1"},  # forced off: no file needed
                  "heads": {"cls": {"type": "classification"},
                            "seg": {"type": "unet", "decoder_channels": [16, 8, 8, 8, 8]}}},
    }
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(config))
    target = load_target(str(path))
    assert target.parts == ["backbone", "heads.cls", "heads.seg"] and target.default_input == (3, 64, 64)
    assert "classes: 3" in target.notes[0]
    assert target.model.heads["cls"].num_classes == 3
    summary = measure_complexity(target.model, target.default_input, depth=1, parts=target.parts, receptive_fields=False)
    assert sum(p.params for p in summary.parts.values()) == summary.total.params
    assert sum(p.flops for p in summary.parts.values()) == summary.total.flops
    assert [row.name for row in summary.rows] == ["backbone", "heads.cls", "heads.seg"]
    text = format_summary(summary)
    assert [line.split()[0] for line in text.splitlines()[-5:]] == ["backbone", "heads.cls", "heads.seg", "total",
                                                                    "parameter"]


def test_cli_prints_a_table(capsys):
    assert main(["summary", "resnet18", "--input", "3x64x64"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert "multiply-add = 2 FLOPs" in out and "MACs" in out
    header = next(i for i, line in enumerate(lines) if line.startswith("layer "))
    assert lines[header].split() == ["layer", "type", "output", "params", "FLOPs", "act.", "mem", "RF", "stride"]
    stem = lines[header + 2].split()  # the stem conv: 7x7 stride 2
    assert stem[1:4] == ["Conv2d", "64x32x32", "9,408"] and stem[-2:] == ["7", "2"]
    total = next(line for line in lines if line.startswith("total"))
    assert "11,176,512" in total  # ResNet-18 without its fc layer


def test_cli_unknown_name_is_an_error(capsys):
    assert main(["summary", "resnet19"]) == 2
    assert "unknown backbone 'resnet19'" in capsys.readouterr().err


def test_cli_output_stride_reports_the_dilated_stages(capsys):
    assert main(["summary", "resnet18", "--input", "3x64x64", "--output-stride", "16", "--depth", "2", "--no-rf"]) == 0
    out = capsys.readouterr().out
    assert "output stride 16" in out
    deepest = next(line for line in out.splitlines() if line.startswith("stages.4.1 "))
    assert "512x4x4" in deepest  # 64 px / 16, not / 32
    assert "11,176,512" in next(line for line in out.splitlines() if line.startswith("total"))  # same parameters


def test_cli_output_stride_of_a_config_is_its_own(capsys):
    assert main(["summary", "configs/heads/fcn8s.yaml", "--output-stride", "16"]) == 2
    assert "model.backbone.output_stride" in capsys.readouterr().err
