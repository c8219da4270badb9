"""The explain methods that explain one task's predictions: saliency, class activation maps, occlusion and
class visualisation. Each is `(ExplainInputs, task) -> list[Picture]`, one figure per task with a row per
(image, explained prediction)."""
from __future__ import annotations

from pipeline.analysis.explain.ascent import AscentOptions, class_images
from pipeline.analysis.explain.attributions import (cam_layer, cam_map, gradient_map, guided_backprop_map,
                                                    guided_copy, smoothgrad_map)
from pipeline.analysis.explain.drawing import Cell, grid
from pipeline.analysis.explain.inputs import ExplainInputs, NotApplicable, Picture
from pipeline.analysis.explain.occlusion import occlusion_map, patch_geometry
from pipeline.analysis.explain.targets import ExplainTarget, TaskScore, choose_targets

MAX_CLASSES_SHOWN = 12


def explained_rows(inputs: ExplainInputs, task: str) -> list[tuple[int, ExplainTarget]]:
    """(image index, target) for every prediction of `task` worth explaining on the query images."""
    rows = [(i, target) for i, image in enumerate(inputs.images)
            for target in choose_targets(inputs.model, image, task, inputs.class_names)]
    if not rows:
        raise NotApplicable(f"task {task!r} predicted nothing to explain on these images (no box or region)")
    return rows


def _input_cell(inputs: ExplainInputs, index: int, target: ExplainTarget) -> Cell:
    return Cell(inputs.images[index], title=f"{inputs.names[index]}\n{target.title}", box=target.box)


def saliency(inputs: ExplainInputs, task: str) -> list[Picture]:
    model, rows = inputs.model, explained_rows(inputs, task)
    guided = guided_copy(model)
    cells = []
    for index, target in rows:
        image, score = inputs.images[index], TaskScore(model, target)
        cells.append([_input_cell(inputs, index, target), Cell(heat=gradient_map(score, image)),
                      Cell(heat=guided_backprop_map(guided, target, image)),
                      Cell(heat=smoothgrad_map(score, image, inputs.options.smooth_samples, inputs.options.seed))])
    figure = grid(cells, ["input", "gradient", "guided backprop", "SmoothGrad"])
    caption = (f"{task}: |d score / d pixel| (max over channels) of each explained prediction: vanilla gradient, "
               f"guided backpropagation (only positive gradients pass each ReLU) and SmoothGrad "
               f"({inputs.options.smooth_samples} noisy copies). Score: {SCORE_TEXT[rows[0][1].kind]}.")
    return [Picture("Saliency", f"saliency/{task}.png", figure, caption)]


def cams(inputs: ExplainInputs, task: str) -> list[Picture]:
    model, rows = inputs.model, explained_rows(inputs, task)
    size = tuple(inputs.images.shape[-2:])
    name, layer = cam_layer(model, size, inputs.options.cam_layer)
    cells = []
    for index, target in rows:
        image, score = inputs.images[index], TaskScore(model, target)
        cells.append([_input_cell(inputs, index, target), Cell(image, heat=cam_map(score, image, layer)),
                      Cell(image, heat=cam_map(score, image, layer, plus_plus=True))])
    figure = grid(cells, ["input", "Grad-CAM", "Grad-CAM++"])
    caption = (f"{task}: class activation maps of layer {name}, weighted by the gradient of the score "
               f"({SCORE_TEXT[rows[0][1].kind]}), upsampled to the image and scaled to [0, 1] per image.")
    return [Picture("Class activation maps", f"cam/{task}.png", figure, caption)]


def occlusion(inputs: ExplainInputs, task: str) -> list[Picture]:
    model, rows = inputs.model, explained_rows(inputs, task)
    side, stride = patch_geometry(tuple(inputs.images.shape[-2:]), inputs.options.occlusion_patch)
    cells = [[_input_cell(inputs, index, target),
              Cell(inputs.images[index], heat=occlusion_map(TaskScore(model, target), inputs.images[index], side),
                   signed=True)]
             for index, target in rows]
    figure = grid(cells, ["input", "score drop"])
    caption = (f"{task}: how much the score ({SCORE_TEXT[rows[0][1].kind]}) drops when a grey {side}x{side} patch "
               f"hides each region (stride {stride}); red: hiding it lowers the score, blue: raises it.")
    return [Picture("Occlusion", f"occlusion/{task}.png", figure, caption)]


def class_visualisation(inputs: ExplainInputs, task: str) -> list[Picture]:
    classes = min(len(inputs.class_names), MAX_CLASSES_SHOWN)
    options = AscentOptions(steps=inputs.options.ascent_steps, seed=inputs.options.seed)
    images = class_images(inputs.model, task, classes, tuple(inputs.images.shape[-2:]), options)
    figure = grid([[Cell(images[c], title=inputs.class_names[c]) for c in range(classes)]])
    caption = (f"{task}: the image each class scores highest on, by gradient ascent from grey ({options.steps} "
               f"steps, L2 {options.l2:g} towards grey, jitter {options.jitter} px, blur every {options.blur_every} "
               f"steps). Objective: {ASCENT_TEXT[inputs.model.heads[task].kind]}"
               + (f"; the first {classes} of {len(inputs.class_names)} classes." if classes < len(inputs.class_names)
                  else "."))
    return [Picture("Class visualisation", f"class_visualisation/{task}.png", figure, caption)]


SCORE_TEXT = {
    "classification": "the predicted class's logit",
    "segmentation": "the mean logit of the predicted class over its predicted region",
    "detection": "the box's class score, from the best-overlapping candidate before NMS",
    "reconstruction": "minus the mean squared reconstruction error",
}
ASCENT_TEXT = {
    "classification": "the class's logit",
    "segmentation": "the class's mean logit over the image",
    "detection": "the class's best candidate score",
}
