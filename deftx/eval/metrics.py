"""Classification metrics: accuracy and macro-F1 (as NusaX and AmericasNLI report them)."""

from __future__ import annotations

import torch


def _check(predictions: torch.Tensor, labels: torch.Tensor, num_labels: int) -> None:
    if predictions.shape != labels.shape or predictions.dim() != 1:
        raise ValueError(
            f"predictions {tuple(predictions.shape)} and labels {tuple(labels.shape)} must be equal 1-D shapes"
        )
    if predictions.numel() == 0:
        raise ValueError("no examples to score")
    for name, values in (("predictions", predictions), ("labels", labels)):
        if values.dtype not in (torch.int64, torch.int32):
            raise TypeError(f"{name} must be integer class ids, got {values.dtype}")
        if bool(((values < 0) | (values >= num_labels)).any()):
            raise ValueError(f"{name} must be in [0, {num_labels})")


def confusion_matrix(predictions: torch.Tensor, labels: torch.Tensor, num_labels: int) -> torch.Tensor:
    """(num_labels, num_labels) int64 counts; row = gold label, column = prediction."""
    _check(predictions, labels, num_labels)
    flat = labels.long() * num_labels + predictions.long()
    return torch.bincount(flat, minlength=num_labels * num_labels).view(num_labels, num_labels)


def accuracy(predictions: torch.Tensor, labels: torch.Tensor, num_labels: int) -> float:
    """Share of examples whose prediction equals the gold label."""
    _check(predictions, labels, num_labels)
    return float((predictions == labels).double().mean())


def macro_f1(predictions: torch.Tensor, labels: torch.Tensor, num_labels: int) -> float:
    """Unweighted mean over all ``num_labels`` classes of F1 = 2·TP / (2·TP + FP + FN).

    A class with no gold and no predicted example (0 / 0) scores 0 and still counts in the
    mean: this is scikit-learn's ``f1_score(labels, predictions, average="macro",
    labels=range(num_labels))``, not its default, which averages over the classes present
    in the gold labels or predictions only.
    """
    confusion = confusion_matrix(predictions, labels, num_labels).double()
    true_positive = confusion.diagonal()
    denominator = confusion.sum(0) + confusion.sum(1)
    f1 = torch.where(denominator > 0, 2 * true_positive / denominator.clamp(min=1), torch.zeros_like(true_positive))
    return float(f1.mean())
