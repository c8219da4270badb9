"""Builders shared across the suite (importable as `support`: tests/ is on pytest's pythonpath)."""
from __future__ import annotations

from pathlib import Path

import torch
import yaml

from datasets.sample import IGNORE_INDEX, Batch

CHANNELS = [8, 12, 16, 24, 32]
STRIDES = [2, 4, 8, 16, 32]


def make_batch(size: int = 64, batch: int = 2, num_classes: int = 3, seed: int = 0) -> Batch:
    """Images with one filled rectangle each; label, mask and box all describe that rectangle."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, 3, size, size, generator=g) * 0.2
    masks = torch.zeros(batch, size, size, dtype=torch.long)
    labels, boxes, box_labels = [], [], []
    for i in range(batch):
        cls = i % num_classes
        x1, y1 = 8 + 4 * i, 10 + 2 * i
        x2, y2 = x1 + 24, y1 + 20
        images[i, cls, y1:y2, x1:x2] = 0.9
        masks[i, y1:y2, x1:x2] = cls + 1
        labels.append(cls)
        boxes.append(torch.tensor([[x1, y1, x2, y2]], dtype=torch.float32))
        box_labels.append(torch.tensor([cls]))
    return Batch(
        image=images, image_id=torch.arange(batch), orig_size=torch.full((batch, 2), size),
        label=torch.tensor(labels), has_label=torch.ones(batch, dtype=torch.bool),
        mask=masks, has_mask=torch.ones(batch, dtype=torch.bool),
        boxes=boxes, box_labels=box_labels, has_boxes=torch.ones(batch, dtype=torch.bool),
    )


def without_targets(batch: Batch) -> Batch:
    """The same images with every target marked missing."""
    n = len(batch)
    return Batch(
        image=batch.image, image_id=batch.image_id, orig_size=batch.orig_size,
        label=torch.zeros(n, dtype=torch.long), has_label=torch.zeros(n, dtype=torch.bool),
        mask=torch.full_like(batch.mask, IGNORE_INDEX), has_mask=torch.zeros(n, dtype=torch.bool),
        boxes=[torch.zeros(0, 4)] * n, box_labels=[torch.zeros(0, dtype=torch.long)] * n,
        has_boxes=torch.zeros(n, dtype=torch.bool),
    )


def fake_features(batch: int, size: int, seed: int = 0) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, size // s, size // s, generator=g) for c, s in zip(CHANNELS, STRIDES)]


def detection_batch(boxes: list[list[list[float]]], labels: list[list[int]], has_boxes: list[bool],
                    size: int = 64) -> Batch:
    """Blank images carrying only the given boxes (xyxy px) and box labels; other targets missing."""
    n = len(boxes)
    return Batch(
        image=torch.zeros(n, 3, size, size), image_id=torch.arange(n), orig_size=torch.full((n, 2), size),
        label=torch.zeros(n, dtype=torch.long), has_label=torch.zeros(n, dtype=torch.bool),
        mask=torch.zeros(n, size, size, dtype=torch.long), has_mask=torch.zeros(n, dtype=torch.bool),
        boxes=[torch.tensor(b, dtype=torch.float32).reshape(-1, 4) for b in boxes],
        box_labels=[torch.tensor(l, dtype=torch.long) for l in labels],
        has_boxes=torch.tensor(has_boxes),
    )


def train_head(head, features: list[torch.Tensor], image: torch.Tensor, batch: Batch, steps: int,
               lr: float) -> list[dict[str, float]]:
    """Adam on one fixed batch; the loss terms of every step, before its update."""
    optimiser = torch.optim.Adam(head.parameters(), lr=lr)
    history = []
    for _ in range(steps):
        terms = head.loss(head(features, image), batch)
        optimiser.zero_grad()
        sum(terms.values()).backward()
        optimiser.step()
        history.append({name: value.item() for name, value in terms.items()})
    return history


def assert_finds_the_boxes(head, features: list[torch.Tensor], image: torch.Tensor, batch: Batch,
                           min_iou: float) -> None:
    """In eval mode, each image's most confident predictions are its ground-truth boxes with their labels."""
    from torchvision.ops import box_iou

    head.eval()
    for prediction, gt_boxes, gt_labels in zip(head.decode(head(features, image)), batch.boxes, batch.box_labels):
        top = slice(0, len(gt_boxes))
        iou = box_iou(gt_boxes, prediction["boxes"][top])
        assert (iou.amax(dim=1) > min_iou).all()
        assert torch.equal(prediction["labels"][top][iou.argmax(dim=1)], gt_labels)


class _BatchList(torch.utils.data.Dataset):
    """Ready-made batches as a dataset keyed like the trainer's sampler keys: (epoch, index) -> batch."""

    def __init__(self, batches: list[Batch]) -> None:
        self.batches = batches

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, key):
        return self.batches[key[1]]


def batch_loader(batches: list[Batch], seed: int = 0) -> torch.utils.data.DataLoader:
    """A train loader over fixed batches, with the trainer's resumable sampler (one batch per index)."""
    from datasets.sampling import ResumableDistributedSampler

    dataset = _BatchList(batches)
    sampler = ResumableDistributedSampler(dataset, num_replicas=1, rank=0, seed=seed)
    return torch.utils.data.DataLoader(dataset, batch_size=1, sampler=sampler, collate_fn=lambda items: items[0])


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now (for torchrun and mlflow server)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_tiny_config(folder: Path, name: str, experiment: str, train: dict | None = None) -> Path:
    """A config that trains in seconds: LeNet-5 classifying 8 (train) / 4 (val) 32 px shapes images, its runs
    and sqlite MLflow store under `folder`; `train` is its train section (default: 1 epoch on the CPU)."""
    config = {"name": name, "seed": 0, "output_dir": str(folder / "runs"),
              "tracking": {"uri": f"sqlite:///{folder / 'mlflow.db'}", "experiment": experiment},
              "data": {"train": str(folder / "data/train/annotations.json"),
                       "val": str(folder / "data/val/annotations.json"), "image_size": 32, "batch_size": 4,
                       "num_workers": 0, "shapes": {"train_images": 8, "val_images": 4}},
              "model": {"backbone": {"name": "lenet5"}, "heads": {"cls": {"type": "classification"}}},
              "train": train or {"epochs": 1, "device": "cpu"}}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def multitask_backward(heads: dict, size: int = 64, num_classes: int = 3) -> tuple:
    """A ResNet-18 model with `heads` (task -> head config), one forward and backward of every task's loss on a
    `make_batch`; returns (model, batch, {"<task>/<term>": loss})."""
    from pipeline.config.schema import parse_config
    from pipeline.model import build_model

    config = parse_config({"data": {"train": "unused", "val": "unused", "image_size": size},
                           "model": {"backbone": {"name": "resnet18", "pretrained": False}, "heads": heads}})
    torch.manual_seed(0)
    model = build_model(config.model, num_classes=num_classes).train()
    batch = make_batch(size=size, batch=2, num_classes=num_classes)
    outputs = model(batch.image)
    terms = {f"{task}/{name}": value for task, head in model.heads.items()
             for name, value in head.loss(outputs[task], batch).items()}
    torch.stack(list(terms.values())).sum().backward()
    return model, batch, terms
