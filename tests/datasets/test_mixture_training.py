"""A mixture of two datasets with disjoint tasks (boxes only, masks only) feeds a two-head model end to end."""
from __future__ import annotations

import math

import torch

import backbones
from datasets.build import ReadOptions, build_dataset, build_loader
from datasets.mixture import MixtureDataset, MixtureSampler
from datasets.sampling import EpochSeeded
from datasets.shapes_variants import write_shapes_variant_splits
from datasets.transforms import AugmentOptions
from heads.registry import HEADS, build
from pipeline.model import MultiTaskModel

SIZE = 64


def test_a_boxes_only_and_a_masks_only_source_train_a_detection_and_a_segmentation_head(tmp_path):
    paths = write_shapes_variant_splits(tmp_path, train=12, val=3, image_size=SIZE, seed=0)["train"]
    common = dict(images_root=None, train=True, options=ReadOptions(SIZE, AugmentOptions()))
    mixture = MixtureDataset([build_dataset("coco", paths.coco, **common), build_dataset("masks", paths.masks, **common)],
                             ["boxes", "masks"])
    sampler = MixtureSampler(mixture, num_replicas=1, rank=0, seed=0, ratios=[1.0, 1.0], length=12)
    loader = build_loader(EpochSeeded(mixture, seed=0), batch_size=2, shuffle=False, num_workers=0, seed=0,
                          sampler=sampler)
    torch.manual_seed(0)
    backbone = backbones.build("resnet18", pretrained=False)
    heads = {task: build(kind, backbone.channels, backbone.strides, len(mixture.class_names), HEADS[kind].Options())
             for task, kind in (("det", "yolo"), ("seg", "unet"))}
    model = MultiTaskModel(backbone, heads).train()
    before = {task: [p.detach().clone() for p in head.parameters()] for task, head in model.heads.items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen, unlabelled_batches = {"det": 0, "seg": 0}, 0
    for batch in loader:
        outputs = model(batch.image)
        terms = {task: head.loss(outputs[task], batch) for task, head in model.heads.items()}
        for task, flag in (("det", batch.has_boxes), ("seg", batch.has_mask)):
            seen[task] += int(flag.sum())
            if not flag.any():  # this batch has no labels for the task: it contributes exactly nothing
                unlabelled_batches += 1
                assert all(value.item() == 0.0 for value in terms[task].values())
        loss = sum(value for task_terms in terms.values() for value in task_terms.values())
        assert torch.isfinite(loss)
        optimizer.zero_grad()
        loss.backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
    assert seen == {"det": 6, "seg": 6}  # ratios 1:1 over 12 samples
    assert unlabelled_batches > 0  # (with this seed) the zero-contribution case did occur
    for task, head in model.heads.items():
        assert any(not torch.equal(old, new) for old, new in zip(before[task], head.parameters())), task


def test_a_mixed_dataset_config_trains_through_the_pipeline(tmp_path):
    """The same through `run_training`: data.sources, the shapes split three ways, class lists reconciled."""
    from pipeline.config.schema import parse_config
    from pipeline.jobs.train import run_training

    root = tmp_path / "mix"
    config = parse_config({
        "name": "mix", "output_dir": str(tmp_path / "runs"),
        "data": {"sources": [
            {"name": "boxes", "format": "coco", "train": str(root / "train/coco/annotations.json"),
             "val": str(root / "val/coco/annotations.json"), "ratio": 1.0},
            {"name": "masks", "format": "masks", "train": str(root / "train/masks"), "val": str(root / "val/masks"),
             "ratio": 1.0},
            {"name": "raw", "format": "images", "train": str(root / "train/images"), "ratio": 0.5}],
            "shapes_variants": {"root": str(root), "train_images": 15, "val_images": 6},
            "epoch_length": 16, "image_size": 32, "batch_size": 4, "num_workers": 0},
        "model": {"backbone": {"name": "resnet18"},
                  "heads": {"det": {"type": "yolo"}, "seg": {"type": "unet"}, "recon": {"type": "ae"}}},
        "train": {"epochs": 1, "device": "cpu"},
        "tracking": {"uri": f"sqlite:///{tmp_path}/mlflow.db"},
    })
    result, _ = run_training(config)
    (epoch,) = result.history
    assert all(torch.isfinite(torch.tensor(v)) for v in epoch.values())
    assert {"val/seg/mIoU", "val/det/mAP", "val/recon/psnr"} <= set(epoch)
    # 16 samples drawn 2:2:1 -> 4 steps, every one with a finite loss (none skipped)
    assert result.position.global_step == 4 and result.position.skipped_steps == 0
    assert math.isfinite(result.last_step["train/loss"])
