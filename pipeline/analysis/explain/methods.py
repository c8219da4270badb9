"""Every explain method by name, in the order the page shows them. A new method is one function
`(ExplainInputs) -> list[Picture]` (about the backbone) or `(ExplainInputs, task) -> list[Picture]` (about one
task's predictions) plus a line here."""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from pipeline.analysis.explain.activations import activation_maps
from pipeline.analysis.explain.channel_visualisation import channel_visualisation
from pipeline.analysis.explain.embedding import nearest_neighbours, tsne_embedding
from pipeline.analysis.explain.filters import first_layer_filters
from pipeline.analysis.explain.inputs import ExplainInputs, NotApplicable, Picture
from pipeline.analysis.explain.max_patches import max_activating_patches
from pipeline.analysis.explain.task_methods import cams, class_visualisation, occlusion, saliency

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Method:
    name: str
    about_backbone: Callable[[ExplainInputs], list[Picture]] | None = None
    about_task: Callable[[ExplainInputs, str], list[Picture]] | None = None


METHODS = {method.name: method for method in (
    Method("filters", about_backbone=first_layer_filters),
    Method("channels", about_backbone=channel_visualisation),
    Method("activations", about_backbone=activation_maps),
    Method("patches", about_backbone=max_activating_patches),
    Method("saliency", about_task=saliency),
    Method("cam", about_task=cams),
    Method("occlusion", about_task=occlusion),
    Method("class-visualisation", about_task=class_visualisation),
    Method("neighbours", about_backbone=nearest_neighbours),
    Method("embedding", about_backbone=tsne_embedding),
)}


@dataclass
class Refusal:
    method: str
    task: str | None
    reason: str


def run_methods(inputs: ExplainInputs, names: list[str], tasks: list[str]) -> tuple[list[Picture], list[Refusal]]:
    """Every named method, per task where it is about a task. A method that does not apply says why (a Refusal)
    and the others go on."""
    pictures, refusals = [], []
    for name in names:
        method = METHODS[name]
        calls = [(None, lambda: method.about_backbone(inputs))] if method.about_backbone else \
            [(task, lambda task=task: method.about_task(inputs, task)) for task in tasks]
        for task, call in calls:
            log.info("explain: %s%s", name, f" ({task})" if task else "")
            try:
                pictures.extend(call())
            except NotApplicable as reason:
                refusals.append(Refusal(name, task, str(reason)))
    return pictures, refusals


def parse_methods(text: str | None) -> list[str]:
    """'saliency,cam' -> those names, checked; None or 'all': every method."""
    if not text or text == "all":
        return list(METHODS)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in METHODS]
    if unknown:
        raise ValueError(f"--methods: unknown {unknown}; valid: {', '.join(METHODS)}")
    return names
