from __future__ import annotations

import pytest
import torch

from datasets.build import FORMATS, ReadOptions, build_dataset, build_loader
from datasets.sample import Batch
from datasets.transforms import AugmentOptions


def _dataset(annotations, train=True, augment=None):
    return build_dataset("coco", annotations, None, train=train,
                         options=ReadOptions(image_size=32, augment=augment or AugmentOptions()))


def test_build_dataset_reads_the_format_at_the_requested_size(shapes_annotations):
    sample = _dataset(shapes_annotations, train=False)[0]
    assert sample.image.shape == (3, 32, 32) and sample.mask.shape == (32, 32)
    assert sample.orig_size == (64, 64)


def test_unknown_format_lists_the_known_ones(shapes_annotations):
    with pytest.raises(ValueError, match="coco"):
        build_dataset("no_such_format", shapes_annotations, None, True, ReadOptions(32, AugmentOptions()))
    assert "coco" in FORMATS


def _first_batches(loader, count=2) -> list[Batch]:
    return [batch for _, batch in zip(range(count), loader)]


def test_loader_is_reproducible_by_seed(shapes_annotations):
    dataset = _dataset(shapes_annotations)
    run = lambda seed: _first_batches(build_loader(dataset, batch_size=2, shuffle=True, num_workers=0, seed=seed))
    a, b, c = run(5), run(5), run(6)
    for x, y in zip(a, b):
        assert torch.equal(x.image_id, y.image_id) and torch.equal(x.image, y.image) and torch.equal(x.mask, y.mask)
    assert any(not torch.equal(x.image, z.image) for x, z in zip(a, c))


def test_workers_do_not_repeat_each_others_augmentation(tmp_path, kit):
    """Four entries of the same file: any difference between them comes from augmentation alone.
    Forked workers that share one copy of the augmentation RNG would return identical images."""
    images = [{**kit.image(i), "file_name": "img/1.png"} for i in range(1, 5)]
    kit.write_image(tmp_path / "img/1.png", 32, 32)
    path = kit.write(tmp_path, images, [kit.box(1, i, 1, [2, 2, 10, 10]) for i in range(1, 5)], create_files=False)
    augment = AugmentOptions(affine_p=1.0, hflip_p=0.0, color_p=0.0)

    def run():
        loader = build_loader(_dataset(path, augment=augment), batch_size=1, shuffle=False, num_workers=2, seed=1)
        return [b.boxes[0] for b in loader]

    first, again = run(), run()
    assert all(torch.equal(x, y) for x, y in zip(first, again))
    assert not torch.equal(first[0], first[1])  # sample 0 from worker 0, sample 1 from worker 1
