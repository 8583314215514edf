"""Does a language SFT model its language beyond its training text? Held-out masked-LM scores.

A language SFT's training loss (:mod:`deftx.train.losses`) says whether it fit its sentences;
this says whether what it learned carries over to sentences of the language it never saw:
the masked-token cross-entropy and top-1 accuracy, through the MLM head the SFT was trained
with, of θ0 and of θ0 + s·φ_language, all scored against one set of masks
(:func:`~deftx.train.masking.mask_once`), so the differences are the SFT's and not the
masks'. The SFTs are applied to the MLM model's body and reverted bit-exactly after each
score.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from deftx.eval.paired import DEFAULT_PAIRS
from deftx.eval.report import mean_sd
from deftx.models.mlm import FrozenDecoderMLM
from deftx.sft import SparseDiff, apply_diffs
from deftx.train.head_warm_up import masked_features, masked_token_scores

BASE = "θ0"
"""The ``method`` of the row that scores the base model alone."""
HELDOUT_FIELDS = ("seed", "language", "method", "scale", "loss", "loss_change", "accuracy", "masked_tokens")
"""The columns of a held-out record (:func:`heldout_records`): heldout.csv's, and ``deftx heldout-mlm --csv``'s."""


@dataclass(frozen=True)
class MaskedLMScore:
    """Mean masked-token cross-entropy (nats) and top-1 accuracy over ``masked_tokens`` positions."""

    loss: float
    accuracy: float
    masked_tokens: int


@dataclass(frozen=True)
class HeldoutRow:
    """One model state on held-out text: ``method`` is :data:`BASE` (θ0, ``scale`` 0) or an SFT's method."""

    method: str
    scale: float
    score: MaskedLMScore

    def change(self, base: MaskedLMScore) -> float:
        """Relative fall of the loss from ``base``'s: > 0 when the SFT predicts the held-out text better."""
        return (base.loss - self.score.loss) / base.loss


def masked_lm_score(model: FrozenDecoderMLM, batches: Sequence[Mapping[str, torch.Tensor]]) -> MaskedLMScore:
    """The model's masked-LM loss and accuracy on fixed masked ``batches``, dropout off.

    Args:
        model: body + MLM head (:func:`~deftx.models.mlm.build_mlm_model`); its training mode is restored.
        batches: ``input_ids``, ``attention_mask``, ``labels`` (B, L) int64 each, as
            :func:`~deftx.train.masking.mask_once` makes them; at least one masked position in all.
    """
    training = model.training
    model.eval()
    try:
        scores = masked_token_scores(model.head, *masked_features(model, batches))
    finally:
        model.train(training)
    if scores["masked_tokens"] == 0:
        raise ValueError("no masked position to score: the held-out text is empty or too short to mask")
    return MaskedLMScore(scores["loss"], scores["accuracy"], scores["masked_tokens"])


def score_language_sfts(
    model: FrozenDecoderMLM,
    sfts: Mapping[str, SparseDiff],
    scales: Sequence[float],
    batches: Sequence[Mapping[str, torch.Tensor]],
) -> list[HeldoutRow]:
    """θ0 and θ0 + s·φ for every SFT and scale, on the same masked ``batches``.

    Args:
        model: the MLM model at θ0; each SFT is added to its body and reverted before the next.
        sfts: method -> the language SFT it trained (parameter names of the body, with or without
            the body's ``base_model_prefix``).
        scales: composition scales s (e.g. 1 and the pipeline's ``language_scale``).
        batches: fixed masked batches of held-out text (:func:`~deftx.train.masking.mask_once`).

    Returns:
        The :data:`BASE` row first, then one row per (method, scale) in the order given.
    """
    rows = [HeldoutRow(BASE, 0.0, masked_lm_score(model, batches))]
    for method, sft in sfts.items():
        for scale in scales:
            with apply_diffs(model.body, [sft], [scale]):
                rows.append(HeldoutRow(method, float(scale), masked_lm_score(model, batches)))
    return rows


def heldout_records(seed: int, language: str, rows: Sequence[HeldoutRow]) -> list[dict[str, Any]]:
    """``rows`` (:func:`score_language_sfts`: the θ0 row first) as plain records of :data:`HELDOUT_FIELDS`;
    ``loss_change`` is each row's :meth:`HeldoutRow.change` from the θ0 row's score."""
    base = rows[0].score
    return [{"seed": seed, "language": language, "method": row.method, "scale": row.scale, "loss": row.score.loss,
             "loss_change": row.change(base), "accuracy": row.score.accuracy,
             "masked_tokens": row.score.masked_tokens} for row in rows]


def _column(method: str, scale: float) -> str:
    return BASE if method == BASE else f"{method} ×{scale:g}"


def _paired_column(a: str, b: str, scale: float) -> str:
    return f"{a} − {b} ×{scale:g}"


def heldout_table(records: Sequence[Mapping[str, Any]], by: str, metric: str,
                  pairs: Sequence[tuple[str, str]] = DEFAULT_PAIRS) -> list[str]:
    """A markdown table of held-out records (:func:`heldout_records`, values as numbers or CSV strings).

    One line per value of the record field ``by`` (e.g. ``language``), in first-seen order; a
    :data:`BASE` column, then one per method × scale. A cell is, per seed, the mean over the line's
    records (e.g. over the targets of one variant), then mean ± sd over seeds, with the seed count.
    Then, for each pair (a, b) of ``pairs`` whose methods both have records, one column per scale
    with the paired difference a − b in points: per seed the mean over the line's languages that
    both have, then mean ± sd over seeds, with the seed count and how many seeds have it > 0 (the
    pipeline's methods branch from one phase 1 per seed, so the pairs share all but the selection).

    Args:
        metric: ``loss_change`` (the fall of the loss from θ0's, in %; the θ0 column is θ0's loss in
            nats) or ``accuracy`` (top-1 accuracy of the masked tokens, in %).
        pairs: (a, b) method pairs of the paired columns (default: those of :mod:`deftx.eval.paired`).
    """
    if metric not in ("loss_change", "accuracy"):
        raise ValueError(f"metric must be loss_change or accuracy, not {metric!r}")
    values: dict[tuple[Any, str], dict[int, list[float]]] = {}
    scores: dict[tuple[int, Any, str, str, float], float] = {}
    for record in records:
        seed, method, scale = int(record["seed"]), record["method"], float(record["scale"])
        value = float(record["loss" if metric == "loss_change" and method == BASE else metric])
        values.setdefault((record[by], _column(method, scale)), {}).setdefault(seed, []).append(value)
        scores[(seed, record[by], record["language"], method, scale)] = value
    lines = list(dict.fromkeys(line for line, _ in values))
    columns = list(dict.fromkeys(column for _, column in values))
    differences: dict[tuple[Any, str], dict[int, list[float]]] = {}
    by_scale = sorted(scores.items(), key=lambda item: item[0][4])
    for a, b in pairs:
        for (seed, line, language, method, scale), value in by_scale:
            other = scores.get((seed, line, language, b, scale))
            if method == a and other is not None:
                differences.setdefault((line, _paired_column(a, b, scale)), {}).setdefault(seed, []).append(
                    value - other)
    paired = list(dict.fromkeys(column for _, column in differences))

    def cell(line: Any, column: str) -> str:
        by_seed = values.get((line, column))
        if not by_seed:
            return "—"
        mean, sd = mean_sd([sum(v) / len(v) for v in by_seed.values()])
        if column == BASE and metric == "loss_change":
            number = f"{mean:.3f}" + (f" ± {sd:.3f}" if len(by_seed) > 1 else "")
        else:
            sign = "+" if metric == "loss_change" else ""
            number = f"{100 * mean:{sign}.1f}%" + (f" ± {100 * sd:.1f}" if len(by_seed) > 1 else "")
        return f"{number} ({len(by_seed)})"

    def paired_cell(line: Any, column: str) -> str:
        by_seed = differences.get((line, column))
        if not by_seed:
            return "—"
        per_seed = [sum(v) / len(v) for v in by_seed.values()]
        mean, sd = mean_sd(per_seed)
        spread = f" ± {100 * sd:.2f}" if len(per_seed) > 1 else ""
        return f"{100 * mean:+.2f}{spread} ({len(per_seed)}; {sum(d > 0 for d in per_seed)} > 0)"

    base_label = "θ0 loss" if metric == "loss_change" else BASE
    return [f"| {by} | " + " | ".join([*(base_label if c == BASE else c for c in columns), *paired]) + " |",
            "|---|" + "---:|" * (len(columns) + len(paired)),
            *(f"| {line} | " + " | ".join([*(cell(line, c) for c in columns), *(paired_cell(line, c) for c in paired)])
              + " |" for line in lines)]
