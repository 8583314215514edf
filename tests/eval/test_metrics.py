"""Accuracy and macro-F1 against hand-computed cases and a per-class counting reference."""

from __future__ import annotations

import pytest
import torch

from deftx.eval.metrics import accuracy, confusion_matrix, macro_f1


def reference_macro_f1(pred: list[int], gold: list[int], num_labels: int) -> float:
    scores = []
    for c in range(num_labels):
        tp = sum(p == c and g == c for p, g in zip(pred, gold, strict=True))
        fp = sum(p == c and g != c for p, g in zip(pred, gold, strict=True))
        fn = sum(p != c and g == c for p, g in zip(pred, gold, strict=True))
        scores.append(0.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn))
    return sum(scores) / num_labels


def test_hand_computed_case():
    pred = torch.tensor([0, 0, 1, 2, 2, 2])
    gold = torch.tensor([0, 1, 1, 2, 2, 0])
    # class 0: tp 1 fp 1 fn 1 -> 0.5; class 1: tp 1 fp 0 fn 1 -> 2/3; class 2: tp 2 fp 1 fn 0 -> 0.8
    assert macro_f1(pred, gold, 3) == pytest.approx((0.5 + 2 / 3 + 0.8) / 3)
    assert accuracy(pred, gold, 3) == pytest.approx(4 / 6)
    assert confusion_matrix(pred, gold, 3).tolist() == [[1, 0, 1], [1, 1, 0], [0, 0, 2]]


@pytest.mark.parametrize("seed, n", [(0, 1), (1, 7), (2, 400)])
def test_macro_f1_matches_reference(seed, n):
    generator = torch.Generator().manual_seed(seed)
    pred = torch.randint(0, 3, (n,), generator=generator)
    gold = torch.randint(0, 3, (n,), generator=generator)
    assert macro_f1(pred, gold, 3) == pytest.approx(reference_macro_f1(pred.tolist(), gold.tolist(), 3))


def test_constant_prediction_scores_one_class_only():
    gold = torch.tensor([0, 1, 2, 2])
    pred = torch.full((4,), 2)
    assert macro_f1(pred, gold, 3) == pytest.approx((2 * 2 / (2 * 2 + 2)) / 3)


@pytest.mark.parametrize("pred, gold, error", [
    (torch.tensor([0, 1]), torch.tensor([0]), ValueError),
    (torch.tensor([], dtype=torch.int64), torch.tensor([], dtype=torch.int64), ValueError),
    (torch.tensor([0, 3]), torch.tensor([0, 1]), ValueError),
    (torch.tensor([0.0, 1.0]), torch.tensor([0, 1]), TypeError),
])
def test_rejects_bad_input(pred, gold, error):
    with pytest.raises(error):
        macro_f1(pred, gold, 3)


def test_a_class_neither_gold_nor_predicted_counts_as_zero_in_the_mean():
    """Over all num_labels classes (scikit-learn with labels=range(num_labels)), not only the classes present
    (scikit-learn's default, which would give 1.0 here)."""
    labels = torch.tensor([0, 0, 1, 1])
    assert macro_f1(labels.clone(), labels, 3) == pytest.approx(2 / 3)
