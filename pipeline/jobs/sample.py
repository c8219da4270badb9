"""The sample job: a checkpoint with a VAE head -> a PNG grid of images decoded from z ~ N(0, I)."""
from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path

import torch
from torchvision.utils import save_image

from heads.vae import VAEHead
from pipeline.config.schema import parse_config
from pipeline.config.typed import ConfigError
from pipeline.engine.checkpoint import load_checkpoint
from pipeline.jobs.command import Command
from pipeline.model import build_model
from pipeline.tracking.plots import display_channels


def run_sample(checkpoint: str | Path, task: str, num: int = 16, out: str | Path | None = None,
               seed: int = 0) -> Path:
    """Draw `num` images at the config's image_size from the VAE head `task`; write them to `out`
    (default: samples.png beside the checkpoint). Images of data.channels other than 3 are shown as
    pipeline.tracking.plots.display_channels does: channel 0 as grey below 3 channels, the first three above."""
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


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("checkpoint")
    parser.add_argument("--task", required=True, help="task name of the VAE head")
    parser.add_argument("--num", type=int, default=16, help="number of images (default 16)")
    parser.add_argument("--out", help="PNG path (default: samples.png beside the checkpoint)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> str:
    return f"wrote {run_sample(args.checkpoint, args.task, args.num, args.out, args.seed)}"


COMMAND = Command("sample", "a PNG grid of images decoded from z ~ N(0, I) by a VAE head", add_arguments, run,
                  user_errors=(ConfigError, FileNotFoundError, ValueError))
