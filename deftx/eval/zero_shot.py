"""Zero-shot evaluation of composed models: θ = θ0 + φ_task + s·φ_language(target).

The base classifier is loaded once; for every (method, target) the SFTs are applied with
one fused scatter (:func:`deftx.sft.apply_diffs`), the test split is predicted, and the
model is reverted bit-exactly before the next composition. :func:`score_compositions` is
the evaluation loop of ``deftx pipeline``, ``deftx ablate`` and ``deftx evaluate``: one
:class:`EvalRow` per (target, :class:`Composition`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from deftx.data import americasnli, nusax
from deftx.eval.metrics import accuracy, macro_f1
from deftx.eval.predict import predict_labels
from deftx.sft import SparseDiff, apply_diffs
from deftx.train.task import classification_examples


@dataclass
class EvalRow:
    """One evaluated (benchmark, method, source, target, seed) cell.

    ``split`` names the evaluated split (``test``, or ``valid`` when choosing a recipe);
    ``language_scale`` is the scale the target's language SFT was composed with (None for
    rows without a language SFT).
    """

    benchmark: str
    protocol: str
    method: str
    source: str
    target: str
    seed: int
    macro_f1: float
    accuracy: float
    examples: int
    language_sft: bool
    split: str = "test"
    language_scale: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_record(cls, record: Mapping[str, str]) -> EvalRow:
        """The row a ``results.csv`` line of :meth:`as_dict` was written from (numbers and flags parsed)."""
        scale = record.get("language_scale", "")
        return cls(record["benchmark"], record["protocol"], record["method"], record["source"], record["target"],
                   int(record["seed"]), float(record["macro_f1"]), float(record["accuracy"]), int(record["examples"]),
                   record["language_sft"] == "True", record.get("split") or "test",
                   None if scale in ("", None) else float(scale))


def nusax_class_ids(class_order: Sequence[str]) -> tuple[int, ...]:
    """The classifier's class id of each NusaX label (indexed as :data:`deftx.data.nusax.LABELS`): the
    position of its name in ``class_order``, the classifier's label names in class-id order.

    Raises:
        ValueError: ``class_order`` is not NusaX's labels (other names, some missing, or more).
    """
    if sorted(class_order) != sorted(nusax.LABELS):
        raise ValueError(f"the classifier's labels ({', '.join(class_order)}) are not NusaX sentiment's "
                         f"({', '.join(nusax.LABELS)}): its class ids cannot be scored against NusaX labels")
    return tuple(list(class_order).index(name) for name in nusax.LABELS)


def nusax_split_examples(data_dir: Path, language: str, split: str, tokenizer, max_length: int,
                         class_order: Sequence[str] = nusax.LABELS) -> list[dict] | None:
    """Tokenised NusaX sentiment ``split`` of ``language``, labelled with the class ids of ``class_order``
    (:func:`nusax_class_ids`; default NusaX's own order); None when the split is absent."""
    ids = nusax_class_ids(class_order)
    if not nusax.has_split(data_dir, language, split):
        return None
    rows = nusax.load_sentiment(data_dir, language, split)
    return classification_examples(tokenizer, [r.text for r in rows], [ids[r.label] for r in rows], max_length)


def nusax_test_examples(data_dir: Path, language: str, tokenizer, max_length: int,
                        class_order: Sequence[str] = nusax.LABELS) -> list[dict] | None:
    """Tokenised NusaX sentiment test split of ``language`` (class ids of ``class_order``); None when the
    split is absent."""
    return nusax_split_examples(data_dir, language, "test", tokenizer, max_length, class_order)


def nli_examples(data_dir: Path, language: str, split: str, tokenizer, max_length: int) -> list[dict]:
    """Tokenised AmericasNLI premise/hypothesis pairs of one language and split."""
    rows = americasnli.load_nli(data_dir, language, split)
    return classification_examples(
        tokenizer, [r.premise for r in rows], [r.label for r in rows], max_length,
        pairs=[r.hypothesis for r in rows],
    )


def score_composed(
    model: torch.nn.Module,
    tokenizer,
    examples: Sequence[dict],
    diffs: Sequence[SparseDiff],
    scales: Sequence[float],
    num_labels: int,
    *,
    batch_size: int = 64,
    check_base: bool = True,
    progress: str | None = None,
) -> tuple[float, float]:
    """(macro-F1, accuracy) of ``model`` with ``diffs`` applied, reverted afterwards.

    The revert restores the exact original bits, so the same base model serves every
    composition in turn. ``check_base=False`` applies diffs recorded for another base model.
    ``progress``: the description of a progress bar over the batches (on stderr), or None for none.
    """
    if not examples:
        raise ValueError("no examples to evaluate")
    handle = apply_diffs(model, list(diffs), list(scales), check_base=check_base) if diffs else None
    try:
        predictions = predict_labels(model, tokenizer, examples, batch_size=batch_size, progress=progress is not None,
                                     description=progress or "predict")
    finally:
        if handle is not None:
            handle.revert()
    labels = torch.tensor([int(e["labels"]) for e in examples], dtype=torch.int64)
    return macro_f1(predictions, labels, num_labels), accuracy(predictions, labels, num_labels)


@dataclass(frozen=True)
class Composition:
    """One composition to score: the row's method name, the SFTs and their scales (none: the model
    as it is), and whether the target's language SFT is among them (at ``language_scale``, when recorded)."""

    method: str
    diffs: tuple[SparseDiff, ...] = ()
    scales: tuple[float, ...] = ()
    language_sft: bool = False
    language_scale: float | None = None


@dataclass(frozen=True)
class RowContext:
    """What every row of one evaluation shares."""

    benchmark: str
    protocol: str
    source: str
    seed: int = 0
    split: str = "test"


def score_compositions(
    model: torch.nn.Module,
    tokenizer,
    cells: Iterable[tuple[str, Sequence[dict], Composition]],
    context: RowContext,
    num_labels: int,
    *,
    batch_size: int = 64,
    check_base: bool = True,
    progress: bool = False,
) -> Iterator[EvalRow]:
    """Score each ``(target, examples, composition)`` in turn (:func:`score_composed`), one row each,
    yielded as soon as it is scored; with ``progress``, a progress bar over each target's batches."""
    for target, examples, composition in cells:
        f1, acc = score_composed(model, tokenizer, examples, composition.diffs, composition.scales, num_labels,
                                 batch_size=batch_size, check_base=check_base, progress=target if progress else None)
        yield EvalRow(context.benchmark, context.protocol, composition.method, context.source, target, context.seed,
                      f1, acc, len(examples), composition.language_sft, context.split, composition.language_scale)
