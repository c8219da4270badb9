from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from datasets.build import build_loader
from datasets.coco import CocoDataset
from datasets.collate import collate
from datasets.build import ReadOptions
from datasets.mixture import MixtureDataset, MixtureSampler, MixtureSource, build_mixture, mixture_order
from datasets.sample import IGNORE_INDEX, Sample
from datasets.sampling import EpochSeeded, ResumableDistributedSampler
from datasets.shapes import generate_shapes
from datasets.shapes_variants import write_shapes_variant_splits
from datasets.images import ImageOnlyDataset
from datasets.transforms import AugmentOptions, build_transform


class Listed(Dataset):
    """Ready-made samples with a class list: a stand-in source (the mixture is what is under test)."""

    def __init__(self, class_names: list[str], samples: list[Sample]) -> None:
        self.class_names, self.samples = class_names, samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> Sample:
        return self.samples[index]


def sample(label=None, mask=None, box_labels=None, multi_label=None) -> Sample:
    return Sample(
        image=torch.zeros(3, 2, 3), image_id=7, orig_size=(2, 3), label=label,
        mask=torch.tensor(mask).reshape(2, 3) if mask is not None else None,
        boxes=torch.zeros(len(box_labels), 4) if box_labels is not None else None,
        box_labels=torch.tensor(box_labels, dtype=torch.int64) if box_labels is not None else None,
        multi_label=torch.tensor(multi_label, dtype=torch.float32) if multi_label is not None else None,
    )


def two_sources() -> MixtureDataset:
    first = Listed(["cat", "dog"], [sample(1, [0, 1, 2, 255, 0, 1], [0, 1], [1, 1])])
    second = Listed(["dog", "bird", "cat"], [sample(2, [0, 1, 2, 3, 255, 0], [2, 1, 0], [0, 1, 1])])
    return MixtureDataset([first, second], ["first", "second"])


def test_classes_are_reconciled_by_name_in_order_of_first_appearance():
    mixture = two_sources()
    assert mixture.class_names == ["cat", "dog", "bird"] and mixture.category_ids == [1, 2, 3]
    assert mixture.sizes == [1, 1] and mixture.locate(1) == (1, 0)


def test_every_target_is_remapped_into_the_global_classes_keeping_background_and_ignore():
    mixture = two_sources()
    first, second = mixture[0], mixture[1]
    assert first.label == 1 and first.mask.flatten().tolist() == [0, 1, 2, 255, 0, 1]  # already global
    assert first.multi_label.tolist() == [1, 1, 0]  # widened to the global class count
    # second: dog -> 1, bird -> 2, cat -> 0; mask values are class + 1
    assert second.label == 0
    assert second.mask.flatten().tolist() == [0, 2, 3, 1, IGNORE_INDEX, 0]
    assert second.box_labels.tolist() == [0, 2, 1]
    assert second.multi_label.tolist() == [1, 0, 1]  # bird and cat present
    assert second.image_id == 7 and second.mask.dtype == torch.int64


def test_the_same_class_lists_in_another_order_map_to_the_same_global_indices():
    a = Listed(["x", "y", "z"], [sample(label=0), sample(label=2)])
    b = Listed(["z", "x", "y"], [sample(label=1), sample(label=0)])
    mixture = MixtureDataset([a, b], ["a", "b"])
    assert [mixture[i].label for i in range(4)] == [0, 2, 0, 2]  # x, z, x, z


@pytest.mark.parametrize("second_classes, message", [
    (["dog", "dog"], r"source 'second': expected unique class names \(ignoring case\), got 'dog' and 'dog'"),
    (["Bird", "bird"], r"source 'second': expected unique class names \(ignoring case\), got 'Bird' and 'bird'"),
    (["Cat"], r"source 'second': class 'Cat' differs only in case from 'cat' of source 'first'"),
    (["cat", ""], r"source 'second': expected non-empty class names"),
])
def test_conflicting_class_lists_are_an_error_naming_the_source_and_the_names(second_classes, message):
    first = Listed(["cat", "dog"], [sample()])
    with pytest.raises(ValueError, match=message):
        MixtureDataset([first, Listed(second_classes, [sample()])], ["first", "second"])


def test_a_fixed_class_list_maps_onto_it_and_refuses_unknown_classes():
    mixture = MixtureDataset([Listed(["dog"], [sample(label=0)])], ["val"], class_names=["cat", "dog"])
    assert mixture.class_names == ["cat", "dog"] and mixture[0].label == 1
    with pytest.raises(ValueError, match=r"source 'val': classes \['bird'\] are not in the class list"):
        MixtureDataset([Listed(["bird"], [sample()])], ["val"], class_names=["cat", "dog"])


def test_source_names_must_be_unique_and_one_per_source():
    with pytest.raises(ValueError, match="unique source names"):
        MixtureDataset([Listed([], [sample()]), Listed([], [sample()])], ["a", "a"])
    with pytest.raises(ValueError, match="one name per source"):
        MixtureDataset([Listed([], [sample()])], ["a", "b"])


def test_targets_a_source_lacks_are_none_and_the_batch_marks_them_missing():
    labelled = Listed(["cat", "dog"], [sample(label=1, multi_label=[0, 1])])
    masked = Listed(["dog"], [sample(mask=[0, 1, 1, 0, 255, 0])])
    unlabelled = Listed([], [sample()])
    mixture = MixtureDataset([labelled, masked, unlabelled], ["labels", "masks", "raw"])
    assert mixture[1].label is None and mixture[1].boxes is None and mixture[2].mask is None
    batch = collate([mixture[i] for i in range(3)])
    assert batch.has_label.tolist() == [True, False, False]
    assert batch.has_mask.tolist() == [False, True, False]
    assert batch.has_multi_label.tolist() == [True, False, False] and batch.multi_label.shape == (3, 2)
    assert not batch.has_boxes.any()
    assert batch.mask[1].flatten().tolist() == [0, 2, 2, 0, IGNORE_INDEX, 0]  # dog is global class 1
    assert (batch.mask[0] == IGNORE_INDEX).all()


# ---- order -----------------------------------------------------------------


def test_mixture_order_follows_the_ratios_to_within_one_sample_and_interleaves_the_sources():
    sizes, ratios, length = [10, 1000, 50], [0.5, 0.3, 0.2], 10_001
    order = mixture_order(sizes, ratios, length, seed=3, epoch=0)
    source = np.searchsorted(np.cumsum(sizes), order, side="right")
    counts = np.bincount(source, minlength=3)
    assert counts.sum() == length
    assert np.all(np.abs(counts - np.array(ratios) * length) <= 1)
    # Randomly interleaved, not in blocks: every window of 1000 has about the right share (binomial sd 0.016).
    for window in source.reshape(-1)[: 10_000].reshape(10, 1000):
        assert abs((window == 0).mean() - 0.5) < 0.08


def test_each_source_is_sampled_without_replacement_within_a_pass_and_cycles_across_epochs():
    sizes, ratios, length = [4, 100], [0.5, 0.5], 12  # 6 draws of the 4-sample source per epoch
    draws = [i for epoch in range(2) for i in mixture_order(sizes, ratios, length, seed=0, epoch=epoch) if i < 4]
    assert len(draws) == 12
    for start in range(0, 12, 4):  # consecutive passes, epochs continuing each other
        assert sorted(draws[start : start + 4]) == [0, 1, 2, 3]
    big = [i for i in mixture_order(sizes, ratios, length, seed=0, epoch=0) if i >= 4]
    assert len(set(big)) == len(big) == 6


def test_mixture_order_is_deterministic_in_seed_and_epoch():
    args = ([30, 70], [1.0, 3.0], 100)
    assert mixture_order(*args, seed=1, epoch=2) == mixture_order(*args, seed=1, epoch=2)
    assert mixture_order(*args, seed=1, epoch=2) != mixture_order(*args, seed=1, epoch=3)
    assert mixture_order(*args, seed=1, epoch=2) != mixture_order(*args, seed=2, epoch=2)


def test_without_ratios_an_epoch_is_a_shuffle_of_everything():
    orders = [mixture_order([3, 5, 2], None, 10, seed=0, epoch=epoch) for epoch in range(2)]
    assert all(sorted(order) == list(range(10)) for order in orders)
    assert orders[0] != orders[1] and orders[0] != list(range(10))


@pytest.mark.parametrize("sizes, ratios, length, message", [
    ([3, 3], [1.0], 6, "expected one ratio per source"),
    ([3, 3], [1.0, -1.0], 6, "ratios: expected finite numbers >= 0"),
    ([3, 0], [1.0, 1.0], 6, r"sources \[1\] have a positive ratio but no samples"),
    ([3, 3], None, 0, "expected a positive number of samples"),
])
def test_bad_order_arguments_are_errors(sizes, ratios, length, message):
    with pytest.raises(ValueError, match=message):
        mixture_order(sizes, ratios, length, seed=0, epoch=0)


# ---- sampler ---------------------------------------------------------------


def listed_mixture(sizes: list[int]) -> MixtureDataset:
    return MixtureDataset([Listed([], [sample()] * size) for size in sizes], [f"s{i}" for i in range(len(sizes))])


def test_rank_shards_are_disjoint_and_interleave_into_the_single_rank_order():
    mixture = listed_mixture([6, 10])
    single = MixtureSampler(mixture, num_replicas=1, rank=0, seed=4)
    ranks = [MixtureSampler(mixture, num_replicas=2, rank=r, seed=4) for r in range(2)]
    for sampler in (single, *ranks):
        sampler.set_epoch(1)
    whole, (zero, one) = list(single), [list(s) for s in ranks]
    assert isinstance(single, ResumableDistributedSampler) and len(whole) == 16
    assert all(epoch == 1 for epoch, _ in whole + zero + one)
    assert not {i for _, i in zero} & {i for _, i in one}
    assert [key for pair in zip(zero, one) for key in pair] == whole


def test_with_an_uneven_length_every_rank_gets_the_same_count_and_the_tail_is_dropped():
    mixture = listed_mixture([5, 6])
    ranks = [MixtureSampler(mixture, num_replicas=2, rank=r, seed=0, ratios=[1.0, 1.0], length=9) for r in range(2)]
    shards = [list(s) for s in ranks]
    assert [len(s) for s in ranks] == [len(s) for s in shards] == [4, 4]
    assert [k for pair in zip(*shards) for k in pair] == \
        [(0, i) for i in mixture_order([5, 6], [1.0, 1.0], 9, seed=0, epoch=0)[:8]]


def test_set_position_skips_into_the_epoch_like_the_resumable_sampler():
    sampler = MixtureSampler(listed_mixture([4, 8]), num_replicas=1, rank=0, seed=0, ratios=[1.0, 1.0], length=20)
    sampler.set_position(3, 0)
    full = list(sampler)
    sampler.set_position(3, 7)
    assert list(sampler) == full[7:] and len(sampler) == 13


def test_a_loader_over_the_mixture_is_reproducible_by_seed(tmp_path):
    annotations = generate_shapes(tmp_path, num_images=4, image_size=32, seed=0)
    augment = build_transform(32, train=True, options=AugmentOptions(affine_p=1.0))
    sources = [CocoDataset(annotations, transform=augment), ImageOnlyDataset(tmp_path / "images", transform=augment)]
    mixture = MixtureDataset(sources, ["shapes", "raw"])

    def first_batch():
        sampler = MixtureSampler(mixture, num_replicas=1, rank=0, seed=5)
        loader = build_loader(EpochSeeded(mixture, seed=5), batch_size=8, shuffle=False, num_workers=0, seed=5,
                              sampler=sampler)
        return next(iter(loader))

    a, b = first_batch(), first_batch()
    assert torch.equal(a.image, b.image) and torch.equal(a.mask, b.mask)
    assert a.has_mask.sum() == 4 and len(a) == 8


# ---- from config-like sources, on real files ---------------------------------


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    return root, write_shapes_variant_splits(root, train=9, val=6, image_size=48, seed=2)


def sources_of(paths: dict, ratios=(None, None, None)) -> list[MixtureSource]:
    train, val = paths["train"], paths["val"]
    return [
        MixtureSource("boxes", str(train.coco), str(val.coco), "coco", ratio=ratios[0]),
        MixtureSource("masks", str(train.masks), str(val.masks), "masks", ratio=ratios[1]),
        MixtureSource("raw", str(train.images), None, "images", ratio=ratios[2]),
    ]


def test_the_shapes_variants_mixture_recovers_the_original_masks_through_class_reconciliation(variants):
    root, paths = variants
    splits = build_mixture(sources_of(paths), ReadOptions(48, AugmentOptions()))
    assert splits.train.class_names == ["circle", "square", "triangle"]  # the COCO part's order comes first
    assert splits.train.sizes == [3, 3, 3] and splits.val.names == ["boxes", "masks"] and splits.ratios is None
    # The mask part's classes.txt lists the classes in another order; remapped, its masks equal the originals.
    train_seed = int(np.random.SeedSequence(2).generate_state(2)[0])
    original = CocoDataset(generate_shapes(root / "original", num_images=9, image_size=48, seed=train_seed))
    splits.train.datasets[1].transform = original.transform  # no resize: compare pixel for pixel
    for local, image_position in enumerate([1, 4, 7]):  # the mask part holds images i % 3 == 1
        remapped = splits.train[3 + local].mask
        assert torch.equal(remapped, original[image_position].mask)
    batch = collate([splits.val[i] for i in range(len(splits.val))])
    assert batch.has_boxes.tolist() == [True, True, False, False]
    assert batch.has_mask.tolist() == [False, False, True, True]


def test_ratios_must_be_set_on_every_source_or_none(variants):
    _, paths = variants
    with pytest.raises(ValueError, match=r"sources \['raw'\]: ratio: expected a ratio on every source or on none"):
        build_mixture(sources_of(paths, ratios=(1.0, 1.0, None)), ReadOptions(48, AugmentOptions()))
    splits = build_mixture(sources_of(paths, ratios=(2.0, 1.0, 1.0)), ReadOptions(48, AugmentOptions()))
    assert splits.ratios == [2.0, 1.0, 1.0]


def test_variant_splits_are_reused_and_refused_when_generated_otherwise(variants):
    root, paths = variants
    assert write_shapes_variant_splits(root, train=9, val=6, image_size=48, seed=2) == paths
    with pytest.raises(ValueError, match="variants.json: expected shapes variants generated with"):
        write_shapes_variant_splits(root, train=10, val=6, image_size=48, seed=2)
