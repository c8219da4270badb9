"""Classification head: single/multi-label losses, auxiliary classifiers, MLP option and metrics by hand."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from support import CHANNELS, STRIDES, fake_features, make_batch, without_targets
from heads.classification import ClassificationHead, ClassificationOptions, ClassificationOutputs
from heads.classification_metric import ClassificationMetric, MultiLabelMetric


def head(num_classes: int = 3, **options) -> ClassificationHead:
    torch.manual_seed(0)
    return ClassificationHead(CHANNELS, STRIDES, num_classes, ClassificationOptions(dropout=0.0, **options))


def multi_label_batch(targets: list[list[float] | None]):
    batch = make_batch(size=32, batch=len(targets))
    batch.multi_label = torch.tensor([t if t is not None else [1.0] * len(targets[0]) for t in targets])
    batch.has_multi_label = torch.tensor([t is not None for t in targets])
    return batch


# Losses


def test_label_smoothing_follows_the_formula():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
    batch = make_batch(size=32, batch=2)  # labels 0, 1
    eps = 0.3
    log_p = logits.log_softmax(dim=1)
    # (1 - eps) * NLL of the true class + eps * mean over classes of -log p
    expected = ((1 - eps) * -log_p[[0, 1], [0, 1]] + eps * -log_p.mean(dim=1)).mean()
    smoothed = head(label_smoothing=eps).loss(logits, batch)["ce"]
    plain = head().loss(logits, batch)["ce"]
    assert torch.allclose(smoothed, expected) and not torch.allclose(smoothed, plain)


def test_multi_label_bce_by_hand_and_missing_rows_ignored():
    logits = torch.tensor([[2.0, -1.0, 0.0], [5.0, 5.0, 5.0], [-3.0, 1.0, 4.0]])
    batch = multi_label_batch([[1.0, 0.0, 1.0], None, [0.0, 0.0, 1.0]])  # row 1 missing (its target says all 1)
    terms = head(multi_label=True).loss(logits, batch)
    assert set(terms) == {"bce"}
    rows, targets = logits[[0, 2]], torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]])
    p = rows.sigmoid()
    expected = -(targets * p.log() + (1 - targets) * (1 - p).log()).mean()
    assert torch.allclose(terms["bce"], expected)


def test_multi_label_decode_is_per_class_sigmoid_single_label_is_softmax():
    logits = torch.tensor([[2.0, -1.0, 0.0]])
    assert torch.allclose(head(multi_label=True).decode(logits), logits.sigmoid())
    assert torch.allclose(head().decode(logits), logits.softmax(dim=1))


@pytest.mark.parametrize("multi_label", [False, True])
def test_no_targets_give_connected_zeros_for_main_and_aux_terms(multi_label):
    model = head(multi_label=multi_label, aux_stages=[2]).train()
    batch = without_targets(make_batch(size=32, batch=2))
    terms = model.loss(model(fake_features(2, 32), batch.image), batch)
    assert set(terms) == {"bce" if multi_label else "ce", "aux2"}
    total = torch.stack(list(terms.values())).sum()
    total.backward()
    assert total.item() == 0.0
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


# Auxiliary classifiers


def test_aux_classifiers_add_weighted_terms_in_training_and_nothing_in_eval():
    model = head(aux_stages=[1, 3], aux_weight=0.25)
    features, batch = fake_features(2, 64), make_batch(size=64, batch=2)
    outputs = model.train()(features, batch.image)
    assert isinstance(outputs, ClassificationOutputs) and set(outputs.aux_logits) == {1, 3}
    terms = model.loss(outputs, batch)
    assert set(terms) == {"ce", "aux1", "aux3"}
    for stage in (1, 3):
        assert torch.allclose(terms[f"aux{stage}"], 0.25 * F.cross_entropy(outputs.aux_logits[stage], batch.label))
    evaluated = model.eval()(features, batch.image)
    assert isinstance(evaluated, torch.Tensor) and evaluated.shape == (2, 3)
    assert set(model.loss(evaluated, batch)) == {"ce"}
    assert torch.allclose(model.decode(evaluated), model.decode(outputs))  # decode uses the main classifier only


def test_aux_gradient_reaches_its_intermediate_stage():
    model = head(aux_stages=[1]).train()
    features = [f.requires_grad_() for f in fake_features(2, 64)]
    terms = model.loss(model(features, features[0]), make_batch(size=64, batch=2))
    terms["ce"].backward(retain_graph=True)
    assert features[1].grad is None  # the main classifier only reads the deepest map
    terms["aux1"].backward()
    assert features[1].grad is not None and features[1].grad.abs().sum() > 0


def test_aux_stage_out_of_range_is_a_clear_error():
    with pytest.raises(ValueError, match="aux_stages"):
        head(aux_stages=[len(CHANNELS)])


# Architecture options


def test_mlp_hidden_widths_and_shapes():
    model = head(num_classes=4, hidden=[16, 8])
    linears = [m for m in model.classifier if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(CHANNELS[-1], 16), (16, 8), (8, 4)]
    assert model(fake_features(3, 64), torch.zeros(3, 3, 64, 64)).shape == (3, 4)


def test_max_pooling_reads_the_peak():
    avg, peak = head(pooling="avg").eval(), head(pooling="max").eval()
    features = [torch.zeros(1, c, 2, 2) for c in CHANNELS]
    features[-1][0, :, 0, 0] = 4.0  # one hot cell: its mean is 1, its max 4
    fc_avg, fc_max = avg.classifier[-1], peak.classifier[-1]
    assert torch.allclose(avg(features, None), fc_avg(torch.full((1, CHANNELS[-1]), 1.0)))
    assert torch.allclose(peak(features, None), fc_max(torch.full((1, CHANNELS[-1]), 4.0)))


# Metrics


def test_single_label_metric_by_hand():
    # 6 classes; true labels 0, 1, 2, 3; top-1 predictions 0, 2, 2, 5; a fifth image without a label is skipped.
    probs = torch.tensor([
        [0.50, 0.10, 0.10, 0.10, 0.10, 0.10],  # true 0: right
        [0.05, 0.25, 0.40, 0.10, 0.10, 0.10],  # true 1: predicted 2, true class ranked 2nd
        [0.00, 0.10, 0.60, 0.10, 0.10, 0.10],  # true 2: right
        [0.30, 0.20, 0.19, 0.01, 0.10, 0.20],  # true 3: predicted 0 (first of the max), true class ranked last
        [0.00, 0.00, 0.00, 0.00, 0.00, 1.00],  # unlabelled
    ])
    batch = make_batch(size=16, batch=5)
    batch.label = torch.tensor([0, 1, 2, 3, 0])
    batch.has_label = torch.tensor([True, True, True, True, False])
    metric = ClassificationMetric(6)
    metric.update(probs, batch)
    result = metric.compute()
    assert result["accuracy"] == pytest.approx(2 / 4)
    assert result["top5"] == pytest.approx(3 / 4)
    # predicted 0 twice (once right), 2 twice (once right); 1, 3, 4, 5 never predicted
    assert [result[f"precision/{i}"] for i in range(6)] == pytest.approx([0.5, 0, 0.5, 0, 0, 0])
    assert [result[f"recall/{i}"] for i in range(6)] == pytest.approx([1, 0, 1, 0, 0, 0])
    assert all(isinstance(v, float) for v in result.values())
    expected = torch.zeros(6, 6, dtype=torch.long)
    expected[0, 0] = expected[1, 2] = expected[2, 2] = expected[3, 0] = 1
    assert torch.equal(metric.confusion_matrix(), expected)


def test_top5_is_omitted_with_five_classes_or_fewer():
    batch = make_batch(size=16, batch=2)
    metric = ClassificationMetric(5)
    metric.update(torch.eye(5)[batch.label], batch)
    assert "top5" not in metric.compute() and metric.compute()["accuracy"] == 1.0


def test_multi_label_metric_by_hand():
    # Class 2 never occurs, so it counts in neither mean; row 2 is missing and would spoil both if counted.
    probs = torch.tensor([[0.9, 0.2, 0.1], [0.6, 0.7, 0.0], [0.0, 0.0, 0.9]])
    batch = multi_label_batch([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], None])
    metric = MultiLabelMetric(3)
    metric.update(probs, batch)
    result = metric.compute()
    # class 0: scores 0.9 (pos), 0.6 (neg) -> AP 1; class 1: 0.7 (pos), 0.2 (neg) -> AP 1
    assert result["mAP"] == pytest.approx(1.0)
    # at 0.5: class 0 predicted for both rows (TP 1, FP 1) -> F1 2/3; class 1 TP 1 -> F1 1
    assert result["f1"] == pytest.approx((2 / 3 + 1) / 2)
    assert metric.confusion_matrix()[0].tolist() == [[0, 1], [0, 1]]  # [[TN, FP], [FN, TP]]


def test_multi_label_map_ranks_by_score():
    probs = torch.tensor([[0.2, 0.9], [0.8, 0.1], [0.5, 0.1]])
    batch = multi_label_batch([[1.0, 1.0], [0.0, 0.0], [1.0, 0.0]])
    metric = MultiLabelMetric(2)
    metric.update(probs, batch)
    # class 0 ranked 0.8 (neg), 0.5 (pos), 0.2 (pos): precision at the positives 1/2, 2/3; class 1: AP 1
    assert metric.compute()["mAP"] == pytest.approx(((1 / 2 + 2 / 3) / 2 + 1) / 2)
