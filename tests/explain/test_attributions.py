"""Saliency, Grad-CAM, occlusion and gradient ascent measured on a trained shapes classifier, and the targets
they explain checked against what the heads decode."""
from __future__ import annotations

import pytest
import torch

from pipeline.analysis.explain.ascent import AscentOptions, channel_images, class_images
from pipeline.analysis.explain.attributions import (cam_layer, cam_map, gradient_map, guided_backprop_map,
                                                    guided_copy, smoothgrad_map)
from pipeline.analysis.explain.occlusion import occlusion_map
from pipeline.analysis.explain.inputs import NotApplicable
from pipeline.analysis.explain.targets import TaskScore, choose_targets
from pipeline.inference.trained import load_trained
from pipeline.inference.val_data import evaluation_dataset


def _peak_inside(heat, box) -> bool:
    heat = torch.as_tensor(heat)
    y, x = divmod(int(heat.flatten().argmax()), heat.shape[1])
    return bool(box[0] <= x + 0.5 <= box[2] and box[1] <= y + 0.5 <= box[3])


def _box_mask(box, size) -> torch.Tensor:
    x1, y1, x2, y2 = (int(v) for v in box.round())
    mask = torch.zeros(size, dtype=torch.bool)
    mask[y1:y2, x1:x2] = True
    return mask


def test_grad_cam_peaks_inside_the_shape_for_most_val_images(shapes_classifier):
    model = shapes_classifier.model.float().eval()
    dataset, _ = evaluation_dataset(shapes_classifier)
    size = tuple(dataset[0].image.shape[-2:])
    _, layer = cam_layer(model, size, None)
    inside = chance = 0.0
    for i in range(len(dataset)):
        sample = dataset[i]
        target = choose_targets(model, sample.image, "cls", shapes_classifier.class_names)[0]
        inside += _peak_inside(cam_map(TaskScore(model, target), sample.image, layer), sample.boxes[0])
        chance += float(_box_mask(sample.boxes[0], size).float().mean())   # a random peak lands inside this often
    inside, chance = inside / len(dataset), chance / len(dataset)
    print(f"Grad-CAM peak inside the shape's box: {inside:.2f} of {len(dataset)} val images (chance {chance:.2f})")
    assert inside >= 0.6 and inside > 3 * chance


def test_saliency_concentrates_on_the_shape(shapes_classifier):
    """Vanilla gradient and SmoothGrad: the share of the map's mass inside the shape's box beats the box's
    share of the image (what a map spread evenly would give) on most val images."""
    model = shapes_classifier.model.float().eval()
    dataset, _ = evaluation_dataset(shapes_classifier)
    wins = {"gradient": 0, "SmoothGrad": 0}
    for i in range(len(dataset)):
        sample = dataset[i]
        score = TaskScore(model, choose_targets(model, sample.image, "cls", shapes_classifier.class_names)[0])
        inside = _box_mask(sample.boxes[0], sample.image.shape[-2:])
        for name, heat in (("gradient", gradient_map(score, sample.image)),
                           ("SmoothGrad", smoothgrad_map(score, sample.image, samples=8, seed=0))):
            wins[name] += float(heat[inside].sum() / heat.sum()) > float(inside.float().mean())
    rates = {name: count / len(dataset) for name, count in wins.items()}
    print(f"saliency mass concentrated on the shape: {rates} of {len(dataset)} val images")
    assert min(rates.values()) >= 0.75


def test_occluding_the_object_lowers_the_score_more_than_occluding_the_background(shapes_classifier):
    model = shapes_classifier.model.float().eval()
    dataset, _ = evaluation_dataset(shapes_classifier)
    more_on_object, drops = 0, []
    for i in range(len(dataset)):
        sample = dataset[i]
        target = choose_targets(model, sample.image, "cls", shapes_classifier.class_names)[0]
        drop = occlusion_map(TaskScore(model, target), sample.image)
        on_object = _box_mask(sample.boxes[0], drop.shape)
        drops.append((float(drop[on_object].mean()), float(drop[~on_object].mean())))
        more_on_object += drops[-1][0] > drops[-1][1]
    rate = more_on_object / len(dataset)
    mean_object, mean_background = (sum(d[k] for d in drops) / len(drops) for k in (0, 1))
    print(f"occlusion: the object's patches lower the logit more on {rate:.2f} of {len(dataset)} images "
          f"(mean drop {mean_object:.2f} on the object vs {mean_background:.2f} on the background)")
    assert rate >= 0.75 and mean_object > mean_background


def test_guided_backprop_passes_only_positive_gradients_through_relus(shapes_classifier):
    model = shapes_classifier.model.float().eval()
    image = evaluation_dataset(shapes_classifier)[0][0].image
    target = choose_targets(model, image, "cls", shapes_classifier.class_names)[0]
    # MobileNetV2's ReLU6 split into ReLU + clamp computes the same outputs
    torch.testing.assert_close(guided_copy(model)(image[None])["cls"], model(image[None])["cls"])
    guided, vanilla = guided_backprop_map(guided_copy(model), target, image), gradient_map(TaskScore(model, target), image)
    assert guided.shape == vanilla.shape == image.shape[-2:]
    assert (guided >= 0).all() and not torch.allclose(guided / guided.max(), vanilla / vanilla.max(), atol=0.05)


def test_class_visualisation_gives_each_class_an_image_the_model_calls_that_class(shapes_classifier):
    model = shapes_classifier.model.float().eval()
    classes = len(shapes_classifier.class_names)
    images = class_images(model, "cls", classes, (96, 96), AscentOptions(steps=40))
    with torch.no_grad():
        logits = model(images)["cls"]
        grey = model(torch.full_like(images[:1], 0.5))["cls"][0]
    assert logits.argmax(dim=1).tolist() == list(range(classes))
    assert (logits.diagonal() > grey + 1.0).all()       # it climbed well above where it started
    assert images.min() >= 0 and images.max() <= 1


def test_channel_visualisation_excites_its_channel_far_more_than_grey(tiny_run):
    model = load_trained(tiny_run.checkpoint).model.float().eval()
    units = [(3, 0), (3, 5), (4, 7)]
    images = channel_images(model, units, (64, 64), AscentOptions(steps=30))
    with torch.no_grad():
        excited = model.backbone(images)
        grey = model.backbone(torch.full_like(images, 0.5))
    for i, (stage, channel) in enumerate(units):
        assert excited[stage][i, channel].mean() > grey[stage][i, channel].mean() + 0.1, (stage, channel)


def test_a_detection_target_scores_its_box_as_the_head_decoded_it(tiny_run):
    trained = load_trained(tiny_run.checkpoint)
    model = trained.model.float().eval()
    dataset, _ = evaluation_dataset(trained)
    checked = 0
    for i in range(len(dataset)):
        image = dataset[i].image
        for target in choose_targets(model, image, "det", trained.class_names):
            decoded_score = float(target.title.rsplit("(", 1)[1].rstrip(")"))
            # the candidate that produced the box overlaps it fully, so the score is at least the decoded one
            assert float(TaskScore(model, target)(image[None])[0].detach()) >= decoded_score - 0.006
            checked += 1
    assert checked > 0


def test_a_segmentation_target_is_the_mean_logit_over_its_predicted_region(tiny_run):
    trained = load_trained(tiny_run.checkpoint)
    model = trained.model.float().eval()
    image = evaluation_dataset(trained)[0][0].image
    targets = choose_targets(model, image, "seg", trained.class_names)
    assert targets, "the tiny model predicts no foreground region"
    with torch.no_grad():
        logits = model(image[None])["seg"][0]
        for target in targets:
            assert (logits.argmax(dim=0) == target.label + 1).equal(target.region)
            expected = logits[target.label + 1][target.region].mean()
            torch.testing.assert_close(TaskScore(model, target)(image[None])[0], expected)


def test_the_default_cam_layer_keeps_at_least_four_cells(tiny_run):
    model = load_trained(tiny_run.checkpoint).model
    name, _ = cam_layer(model, (64, 64), None)       # resnet18 strides 4..32: stride 16 is 4x4 at 64 px
    assert name == "backbone.stages.3"
    assert cam_layer(model, (64, 64), "backbone.stages.4")[0] == "backbone.stages.4"
    with pytest.raises(NotApplicable, match="backbone.stages.0"):
        cam_layer(model, (64, 64), "backbone.layer9")
