"""What every explain method takes and gives: the boundary between pipeline/jobs/explain.py and the methods.

A method is a function `(ExplainInputs) -> list[Picture]`, listed in methods.py with the head kinds it applies
to. It draws matplotlib figures; the job saves them as PNG files and shows them, captioned, in one HTML page.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from matplotlib.figure import Figure
from torch import Tensor
from torch.utils.data import Dataset

from pipeline.model import MultiTaskModel


class NotApplicable(ValueError):
    """A method that cannot explain this model or task says why; the job reports it and goes on."""


@dataclass
class ExplainOptions:
    stages: list[int] | None = None     # backbone stages to show (activations, patches); None: all
    channels: int = 8                   # channels per stage (activations, patches, channel visualisation)
    top_k: int = 6                      # patches per channel
    neighbours: int = 5                 # nearest neighbours per query image
    queries: int = 4                    # query images for the neighbour grids
    split_limit: int = 500              # images of the split read for patches, neighbours and the embedding
    cam_layer: str | None = None        # module path for Grad-CAM (e.g. "backbone.stages.3"); None: see attributions
    occlusion_patch: int = 0            # side in input pixels; 0: a quarter of the image side
    smooth_samples: int = 16            # SmoothGrad's noisy copies
    ascent_steps: int = 100             # gradient ascent iterations (class / channel visualisation)
    seed: int = 0


@dataclass
class ExplainInputs:
    model: MultiTaskModel               # eval mode, float32, on `device`; methods must not change its weights
    class_names: list[str]
    images: Tensor                      # [N, C, H, W] in [0, 1] at the model's input size: the images to explain
    names: list[str]                    # one short name per image (captions, file names)
    dataset: Dataset | None = None      # a split of datasets.sample.Sample (patches, neighbours, embedding)
    split_name: str = ""                # how to name that split in captions ("val split of configs/x.yaml")
    options: ExplainOptions = field(default_factory=ExplainOptions)

    @property
    def device(self):
        return self.images.device


@dataclass
class Picture:
    section: str                        # the page's section, e.g. "Filters", "Saliency"
    file: str                           # relative PNG path under the output folder, e.g. "filters/first_layer.png"
    figure: Figure
    caption: str                        # what it shows and how it was made, one or two sentences
    numbers: dict[str, float] = field(default_factory=dict)   # measured values worth printing (rates, scores)
