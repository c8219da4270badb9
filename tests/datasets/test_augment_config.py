"""data.augment as the user writes it: presets, step lists and policies, checked at config load; geometric
steps keep masks and boxes on the image; every preset and policy works on 8-bit and float (16-bit) images."""
from __future__ import annotations

import albumentations as A
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from datasets.augment_config import AugmentOptions, MixArgs
from datasets.augment_mix import mix_samples
from datasets.augment_policies import GEOMETRIC, OPS, STANDARD, WIDE, fixed_op, magnitude
from datasets.collate import collate
from datasets.record import RawRecord
from datasets.sample import Sample
from datasets.transforms import SampleTransform, build_transform, compose_with_targets
from heads.classification import ClassificationHead
from pipeline.config.schema import config_to_dict, load_config, parse_config
from pipeline.config.typed import ConfigError

SIZE = 64
# (x0, y0, x1, y1) of two bright rectangles, classes 1 and 2 in the mask, box labels 0 and 1.
RECTANGLES = [(10, 8, 30, 24), (36, 34, 58, 56)]


def _write_config(tmp_path, augment, heads=None, channels=3):
    raw = {"model": {"heads": heads or {"det": {"type": "yolo"}}},
           "data": {"train": "train.json", "val": "val.json", "channels": channels, "augment": augment}}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _load_error(tmp_path, augment, **kwargs) -> str:
    with pytest.raises(ConfigError) as caught:
        load_config(_write_config(tmp_path, augment, **kwargs))
    return str(caught.value)


def _record(channels=3, dtype=np.uint8) -> RawRecord:
    image = np.full((SIZE, SIZE, channels), 0.1, np.float32)
    mask = np.zeros((SIZE, SIZE), np.uint8)
    for value, (x0, y0, x1, y1) in enumerate(RECTANGLES, start=1):
        image[y0:y1, x0:x1] = 0.9
        mask[y0:y1, x0:x1] = value
    if dtype == np.uint8:
        image = (image * 255).round().astype(np.uint8)
    return RawRecord(image=image, image_id=1, label=0, mask=mask,
                     boxes=np.array(RECTANGLES, np.float32), box_labels=np.array([0, 1]),
                     ignore_boxes=np.zeros((0, 4), np.float32), ignore_labels=np.zeros(0, np.int64))


# ---- config load ---------------------------------------------------------------------------------------

def test_an_unknown_transform_fails_at_load_naming_it_and_the_nearest_names(tmp_path):
    error = _load_error(tmp_path, [{"HorizontalFlip": {"p": 0.5}}, {"VerticalFlp": {"p": 0.5}}])
    assert "config.yaml" in error and "data.augment[1]" in error
    assert "'VerticalFlp'" in error and "'VerticalFlip'" in error


@pytest.mark.parametrize("step, named", [
    ({"Affine": {"rotat": 10}}, ["data.augment[0] (Affine)", "argument 'rotat'", "'rotate'"]),
    ({"Affine": {"rotate": "a lot"}}, ["data.augment[0] (Affine)", "argument 'rotate'"]),
    ({"HorizontalFlip": {"p": 1.5}}, ["data.augment[0] (HorizontalFlip)", "argument 'p'"]),
    ({"RandAugment": {"magnitude": 31}}, ["data.augment[0] (RandAugment)", "argument 'magnitude'", "[0, 30]"]),
    ({"RandAugment": {"num_op": 2}}, ["data.augment[0] (RandAugment)", "argument 'num_op'", "num_ops"]),
    ({"OneOf": {"transforms": [{"Blur": {"blur_limt": 3}}]}},
     ["data.augment[0] (OneOf).transforms[0] (Blur)", "argument 'blur_limt'"]),
])
def test_a_bad_argument_fails_at_load_naming_the_step_and_the_argument(tmp_path, step, named):
    error = _load_error(tmp_path, [step])
    for text in named:
        assert text in error, (text, error)


def test_the_mapping_form_names_steps_under_steps_and_an_unknown_preset_suggests_one(tmp_path):
    steps = ["Equalize", {"GaussNoise": {"std_range": [0.5, 0.1]}}]
    error = _load_error(tmp_path, {"preset": "aerial", "steps": steps})
    assert "data.augment.steps[1] (GaussNoise)" in error and "argument 'std_range'" in error
    error = _load_error(tmp_path, "aireal")
    assert "unknown preset 'aireal'" in error and "'aerial'" in error


def test_a_step_that_cannot_take_the_configured_channels_fails_at_load(tmp_path):
    error = _load_error(tmp_path, ["ColorJitter"], channels=4)
    assert "data.augment[0] (ColorJitter)" in error and "4-channel" in error


def test_steps_the_pipeline_does_itself_are_refused_with_the_reason(tmp_path):
    assert "backbone" in _load_error(tmp_path, ["Normalize"])


def test_mixing_is_only_for_classification_and_mosaic_only_without_it(tmp_path):
    error = _load_error(tmp_path, ["MixUp"], heads={"cls": {"type": "classification"}, "seg": {"type": "unet"}})
    assert "data.augment[0] (MixUp)" in error and "seg (unet)" in error
    error = _load_error(tmp_path, ["Mosaic"], heads={"cls": {"type": "classification"}})
    assert "data.augment[0] (Mosaic)" in error and "classification" in error
    assert load_config(_write_config(tmp_path, ["CutMix"], heads={"cls": {"type": "classification"}}))


def test_every_form_loads_and_round_trips_and_the_old_knobs_still_mean_the_default_preset(tmp_path):
    old = load_config(_write_config(tmp_path, {"hflip_p": 0.0, "affine_p": 1.0})).data.augment
    assert old == AugmentOptions(hflip_p=0.0, affine_p=1.0)
    assert (old.preset, old.color_p, old.scale, old.rotate) == ("default", 0.5, (0.8, 1.2), 10.0)
    light = load_config(_write_config(tmp_path, "light")).data.augment
    assert light.preset == "light" and light.color_p == 0.0 and light.scale == (0.9, 1.1)
    listed = load_config(_write_config(tmp_path, ["HorizontalFlip", {"RandAugment": {"num_ops": 3}}])).data.augment
    assert listed.preset == "none" and listed.hflip_p == 0.0 and listed.affine_p == 0.0
    assert listed.steps == [{"HorizontalFlip": {}}, {"RandAugment": {"num_ops": 3}}]
    for augment in ("aerial", {"preset": "microscopy", "steps": ["TrivialAugment"], "rotate": 30}, listed.steps):
        config = load_config(_write_config(tmp_path, augment))
        assert parse_config(yaml.safe_load(yaml.safe_dump(config_to_dict(config)))) == config


# ---- presets and policies on any image ----------------------------------------------------------------

RECIPES = [{"preset": name} for name in ("light", "default", "aerial", "microscopy")] + [
    {"preset": "none", "steps": [{name: {}}]} for name in ("RandAugment", "TrivialAugment", "AutoAugment")]


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda r: next(iter(r["steps"][0])) if "steps" in r else r["preset"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("dtype", [np.uint8, np.float32], ids=["uint8", "float32"])
def test_every_preset_and_policy_runs_on_8_bit_and_float_images(recipe, channels, dtype):
    transform = build_transform(48, train=True, options=AugmentOptions(**recipe), channels=channels)
    record = _record(channels, dtype)
    means = []
    for seed in range(8):
        transform.set_random_seed(seed)
        sample = transform(record)
        assert sample.image.shape == (channels, 48, 48) and sample.image.dtype == torch.float32
        assert torch.isfinite(sample.image).all() and 0 <= sample.image.min() and sample.image.max() <= 1
        means.append(float(sample.image.mean()))
    assert np.mean(means) > 0.1   # not the black image a float input mistaken for 8-bit would give


def test_multispectral_images_get_the_ops_that_fit_them():
    for recipe in RECIPES:
        transform = build_transform(32, train=True, options=AugmentOptions(**recipe), channels=5)
        for seed in range(4):
            transform.set_random_seed(seed)
            assert transform(_record(5, np.float32)).image.shape == (5, 32, 32)


# ---- geometry keeps targets on the image ----------------------------------------------------------------

def _geometric_policies() -> dict[str, A.BasicTransform]:
    """Each policy's geometric ops only, at its largest magnitude, one always firing: RandAugment and
    AutoAugment's table, TrivialAugment's wide ranges."""
    standard = [fixed_op(op, magnitude(op, 30, 31, STANDARD), 3) for op in GEOMETRIC]
    wide = [OPS[op](-magnitude(op, 30, 31, WIDE), magnitude(op, 30, 31, WIDE), 3) for op in GEOMETRIC]
    return {"RandAugment": A.SomeOf(standard, n=2, replace=True, p=1.0), "TrivialAugment": A.OneOf(wide, p=1.0)}


def _dilate(mask: torch.Tensor) -> torch.Tensor:
    return F.max_pool2d(mask[None, None].float(), 3, stride=1, padding=1)[0, 0].bool()


def _assert_aligned(sample: Sample) -> None:
    """Mask = thresholded image (up to a pixel at edges); every box encloses its class's mask pixels, and a class
    with pixels left has a box or an ignore region."""
    bright = sample.image.mean(0) > 0.5
    on_mask = sample.mask > 0
    edge = _dilate(on_mask) & _dilate(~on_mask)
    assert not ((bright != on_mask) & ~edge).any()
    for label in range(len(RECTANGLES)):
        ys, xs = torch.nonzero(sample.mask == label + 1, as_tuple=True)
        boxes = torch.cat([sample.boxes[sample.box_labels == label],
                           sample.ignore_boxes[sample.ignore_labels == label]])
        if len(xs) < 4:
            continue
        assert len(boxes) == 1, (label, boxes)
        x0, y0, x1, y1 = boxes[0].tolist()
        assert x0 <= xs.min() + 1 and y0 <= ys.min() + 1 and x1 >= xs.max() and y1 >= ys.max()


@pytest.mark.parametrize("policy", ["RandAugment", "TrivialAugment"])
def test_geometric_policy_ops_keep_masks_and_boxes_aligned_with_the_image(policy):
    transform = SampleTransform(compose_with_targets([_geometric_policies()[policy]]), min_box_visibility=0.3)
    moved = 0
    for seed in range(40):
        transform.set_random_seed(seed)
        sample = transform(_record())
        _assert_aligned(sample)
        moved += not torch.equal(sample.mask, torch.from_numpy(_record().mask).long())
    assert moved >= 35   # the ops did move things


@pytest.mark.parametrize("policy", ["RandAugment", "TrivialAugment", "AutoAugment"])
def test_whole_policies_move_boxes_with_the_mask(policy):
    """Photometric ops may invert or solarize the image, so only box-mask agreement is checked here."""
    options = AugmentOptions(preset="none", steps=[{policy: {"magnitude": 20} if policy == "RandAugment" else {}}])
    transform = build_transform(SIZE, train=True, options=options)
    for seed in range(30):
        transform.set_random_seed(seed)
        sample = transform(_record())
        for label in range(len(RECTANGLES)):
            ys, xs = torch.nonzero(sample.mask == label + 1, as_tuple=True)
            boxes = torch.cat([sample.boxes[sample.box_labels == label],
                               sample.ignore_boxes[sample.ignore_labels == label]])
            if len(xs) >= 4:
                x0, y0, x1, y1 = boxes[0].tolist()
                assert x0 <= xs.min() + 1 and y0 <= ys.min() + 1 and x1 >= xs.max() and y1 >= ys.max()


def test_aerial_and_microscopy_presets_keep_targets_aligned():
    for preset in ("aerial", "microscopy"):
        options = AugmentOptions(preset=preset, color_p=0.0)   # colour off: the threshold check needs levels kept
        transform = build_transform(SIZE, train=True, options=options)
        for seed in range(20):
            transform.set_random_seed(seed)
            sample = transform(_record(dtype=np.float32))
            if preset == "aerial":
                _assert_aligned(sample)
            assert ((sample.boxes >= 0) & (sample.boxes <= SIZE)).all()


# ---- mosaic -------------------------------------------------------------------------------------------

def _cell_record(k: int, dtype=np.uint8) -> RawRecord:
    """A 48x64 image with one bright 24x20 rectangle of class k (mask value k + 1)."""
    image = np.full((48, 64, 3), 0.1, np.float32)
    mask = np.zeros((48, 64), np.uint8)
    x0, y0 = 5 + 6 * k, 6 + 4 * k
    image[y0:y0 + 20, x0:x0 + 24] = 0.9
    mask[y0:y0 + 20, x0:x0 + 24] = k + 1
    if dtype == np.uint8:
        image = (image * 255).astype(np.uint8)
    return RawRecord(image=image, image_id=k, label=k, mask=mask, boxes=np.array([[x0, y0, x0 + 24, y0 + 20]],
                     np.float32), box_labels=np.array([k]), ignore_boxes=np.zeros((0, 4), np.float32),
                     ignore_labels=np.zeros(0, np.int64))


def test_mosaic_assembles_other_records_with_their_boxes_masks_and_ignore_regions():
    transform = build_transform(40, train=True, options=AugmentOptions(preset="none", steps=[{"Mosaic": {"p": 1.0}}]))
    records = [_cell_record(0), _cell_record(1, np.float32), _cell_record(2), _cell_record(3)]  # mixed depths
    classes_seen = set()
    for seed in range(20):
        transform.set_random_seed(seed)
        partners = transform.draw_partners(len(records))
        assert len(partners.positions) == 3
        sample = transform(records[0], partners, [records[i] for i in partners.positions])
        assert sample.image.shape == (3, 40, 40) and sample.label is None   # a mosaic has no one image label
        assert ((sample.boxes >= 0) & (sample.boxes <= 40)).all()
        bright = sample.image.mean(0) > 0.5
        for k in range(4):
            ys, xs = torch.nonzero(sample.mask == k + 1, as_tuple=True)
            if len(xs) == 0:
                continue
            assert bright[ys, xs].float().mean() > 0.9
            boxes = torch.cat([sample.boxes[sample.box_labels == k], sample.ignore_boxes[sample.ignore_labels == k]])
            inside = torch.zeros(len(xs), dtype=torch.bool)
            for x0, y0, x1, y1 in boxes.tolist():
                inside |= (xs >= x0 - 1) & (xs < x1 + 1) & (ys >= y0 - 1) & (ys < y1 + 1)
            assert inside.all(), (seed, k)
            classes_seen.add(k)
    assert classes_seen == {0, 1, 2, 3}


def test_a_box_the_mosaic_cuts_to_nothing_is_dropped_not_passed_on_with_zero_width():
    transform = build_transform(48, train=True, options=AugmentOptions(preset="none", steps=[{"Mosaic": {"p": 1.0}}]))
    records = [_cell_record(k) for k in range(4)]
    for seed in range(20):   # seed 15 cuts a box to zero width on the crop's edge
        transform.set_random_seed(seed)
        partners = transform.draw_partners(len(records))
        sample = transform(records[0], partners, [records[i] for i in partners.positions])
        assert (sample.boxes[:, 2:] > sample.boxes[:, :2]).all()


def test_mosaic_draws_its_partners_from_the_sample_seed():
    transform = build_transform(40, train=True, options=AugmentOptions(preset="none", steps=[{"Mosaic": {"p": 0.5}}]))
    draws = []
    for _ in range(2):
        transform.set_random_seed(7)
        draws.append([transform.draw_partners(100).positions for _ in range(5)])
    assert draws[0] == draws[1] and any(draws[0]) and not all(draws[0])   # same seed, same draws; p = 0.5


def test_mosaic_through_a_reader_and_check_data_grid(shapes_annotations):
    from datasets.coco import CocoDataset
    from pipeline.data_check.drawing import sample_grid

    options = AugmentOptions(preset="aerial", steps=[{"Mosaic": {"p": 1.0}}])
    dataset = CocoDataset(shapes_annotations, transform=build_transform(48, train=True, options=options))
    for seed in range(8):   # boxes cut to slivers on the crop's edge once made the later steps fail
        dataset.transform.set_random_seed(seed)
        for index in range(len(dataset)):
            sample = dataset[index]
            assert sample.image.shape == (3, 48, 48) and ((sample.boxes >= 0) & (sample.boxes <= 48)).all()
            assert (sample.boxes[:, 2:] > sample.boxes[:, :2]).all()
    grid, shown = sample_grid(dataset, list(dataset.class_names), count=4, seed=0)
    assert all("image_id" in entry for entry in shown)
    plain = CocoDataset(shapes_annotations, transform=build_transform(48, train=False))
    plain_grid, _ = sample_grid(plain, list(plain.class_names), count=4, seed=0)
    assert grid.shape == plain_grid.shape and not torch.equal(grid, plain_grid) and len(shown) == 4


# ---- MixUp / CutMix -----------------------------------------------------------------------------------

def _labelled(label: int, value: float) -> Sample:
    return Sample(image=torch.full((3, 16, 16), value), image_id=label, orig_size=(16, 16), label=label)


@pytest.mark.parametrize("kind", ["MixUp", "CutMix"])
def test_mixing_gives_soft_labels_that_sum_to_one_and_the_loss_takes_them(kind):
    mixed = mix_samples(_labelled(1, 0.0), _labelled(3, 1.0), MixArgs(kind=kind), num_classes=4, seed=5)
    share = float(mixed.image.mean())                           # the partner's share of the picture
    assert mixed.label == 1 and mixed.soft_label.sum().item() == pytest.approx(1.0)
    assert mixed.soft_label[[0, 2]].sum() == 0 and mixed.soft_label[3].item() == pytest.approx(share, abs=1e-5)
    assert 0 < share < 1
    batch = collate([mixed, _labelled(2, 0.5)])
    assert batch.soft_label.shape == (2, 4) and batch.soft_label[1].tolist() == [0, 0, 1, 0]
    head = ClassificationHead([8], [32], 4, ClassificationHead.Options())
    logits = torch.randn(2, 4)
    soft_loss = head.loss(logits, batch)["ce"]
    expected = -(batch.soft_label * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(soft_loss, expected)
    plain = collate([_labelled(1, 0.0), _labelled(2, 0.5)])
    assert plain.soft_label.shape == (2, 0)
    torch.testing.assert_close(head.loss(logits, plain)["ce"], F.cross_entropy(logits, plain.label))


def test_mixing_through_a_reader_pairs_samples_of_the_split(tmp_path):
    from datasets.imagefolder import ImageFolderDataset
    import cv2

    for name, value in (("a", 30), ("b", 220)):
        (tmp_path / name).mkdir()
        for i in range(3):
            cv2.imwrite(str(tmp_path / name / f"{i}.png"), np.full((20, 20, 3), value, np.uint8))
    options = AugmentOptions(preset="none", steps=[{"MixUp": {"p": 1.0}}])
    dataset = ImageFolderDataset(tmp_path, transform=build_transform(32, train=True, options=options))
    dataset.transform.set_random_seed(0)
    samples = [dataset[i] for i in range(len(dataset))]
    assert all(s.soft_label is not None and s.soft_label.sum().item() == pytest.approx(1.0) for s in samples)
    assert any(s.soft_label.max() < 0.999 for s in samples)   # some were mixed across the two classes
