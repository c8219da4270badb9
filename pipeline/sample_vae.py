"""The sample job: a checkpoint with a VAE head -> a PNG grid of images decoded from z ~ N(0, I)."""
from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import torch
from torchvision.utils import save_image

from heads.vae import VAEHead
from pipeline.checkpoint import load_checkpoint
from pipeline.config import parse_config
from pipeline.model import build_model
from pipeline.plots import display_channels


def run_sample(checkpoint: str | Path, task: str, num: int = 16, out: str | Path | None = None,
               seed: int = 0) -> Path:
    """Draw `num` images at the config's image_size from the VAE head `task`; write them to `out`
    (default: samples.png beside the checkpoint). Images of data.channels other than 3 are shown as
    pipeline.plots.display_channels does: channel 0 as grey below 3 channels, the first three above."""
    checkpoint = Path(checkpoint)
    state = load_checkpoint(checkpoint)
    config = parse_config(state["config"], source=f"{checkpoint} (embedded config)")
    # The checkpoint holds every weight; do not ask for pretrained files.
    model_config = dataclasses.replace(config.model, backbone=dataclasses.replace(config.model.backbone, pretrained=False))
    model = build_model(model_config, num_classes=len(state["class_names"]), in_channels=config.data.channels)
    model.load_state_dict(state["model"])
    head = vae_head(model.heads, task)
    images = head.eval().sample(num, config.data.image_size, torch.Generator().manual_seed(seed))
    path = Path(out) if out else checkpoint.parent / "samples.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(display_channels(images), path, nrow=math.ceil(math.sqrt(num)))
    return path


def vae_head(heads: torch.nn.ModuleDict, task: str) -> VAEHead:
    if task not in heads:
        raise ValueError(f"no task {task!r} in the checkpoint; its tasks: {', '.join(heads)}")
    head = heads[task]
    if not isinstance(head, VAEHead):
        vaes = [name for name, h in heads.items() if isinstance(h, VAEHead)]
        raise ValueError(f"task {task!r} is a {type(head).__name__}, not a VAE head; VAE tasks here: "
                         f"{', '.join(vaes) or 'none'}")
    return head
