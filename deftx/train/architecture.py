"""Which classifier an SFT belongs to: recorded when it is trained, read back when it is used.

A task SFT records in its ``info`` the model class it was trained in (``architecture``), the
pooling, the number of labels and their names (:func:`describe_model`). ``compose`` and
``evaluate`` rebuild that classifier (:func:`resolve_classifier`, :func:`build_from_spec`)
instead of guessing, for any encoder: deftx's mean-pooled BERT classifier or any
transformers ``…ForSequenceClassification`` class.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from deftx.models.classifier import build_classifier
from deftx.models.loading import load_pretrained
from deftx.sft import SparseDiff
from deftx.sft.apply import real_label_names

MEAN_POOL_ARCHITECTURE = "BertMeanPoolClassifier"
DEFAULT_POOLING = "mean"
DEFAULT_NUM_LABELS = 3
HEAD_SUFFIXES = ("classifier.weight", "classifier.out_proj.weight", "score.weight")
CLASSIFIER_SUFFIX = "ForSequenceClassification"


@dataclass(frozen=True)
class ClassifierSpec:
    """The classifier to load: architecture (class name), pooling, labels; ``source`` says where they came from."""

    architecture: str
    pooling: str
    num_labels: int
    labels: tuple[str, ...] | None
    source: str

    def describe(self) -> str:
        names = f" ({', '.join(self.labels)})" if self.labels else ""
        return f"{self.architecture}, pooling {self.pooling}, {self.num_labels} labels{names} [{self.source}]"


def describe_model(model: torch.nn.Module, *, head: bool) -> dict[str, Any]:
    """The ``info`` an SFT trained in ``model`` records: its class, pooling and, with a head, its labels."""
    config = getattr(model, "config", None)
    info: dict[str, Any] = {"architecture": type(model).__name__}
    pooling = getattr(config, "deftx_pooling", None)
    if pooling:
        info["pooling"] = pooling
    if head and config is not None:
        id2label = getattr(config, "id2label", None) or {}
        names = real_label_names([id2label.get(i, i) for i in range(int(config.num_labels))])
        info["num_labels"] = int(config.num_labels)
        if names is not None:
            info["labels"] = names
    return info


def _head_rows(diff: SparseDiff) -> int | None:
    """The label count of the classifier layer ``diff`` ships (rows of a dense tensor named by a
    :data:`HEAD_SUFFIXES` entry whole, after a dot: DistilBERT's ``pre_classifier.weight`` is no head)."""
    for name, tensor in diff.dense.items():
        if any(f".{name}".endswith(f".{suffix}") for suffix in HEAD_SUFFIXES) and tensor.dim() == 2:
            return int(tensor.shape[0])
    return None


def _folder_classifier(model_dir: Path) -> tuple[str, int, tuple[str, ...] | None] | None:
    """(architecture, labels, names) when ``model_dir`` is itself a saved sequence classifier."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(str(model_dir))
    architectures = getattr(config, "architectures", None) or []
    if not architectures or not (architectures[0].endswith(CLASSIFIER_SUFFIX)
                                 or architectures[0] == MEAN_POOL_ARCHITECTURE):
        return None
    id2label = getattr(config, "id2label", None) or {}
    names = real_label_names([id2label[i] for i in range(config.num_labels)]) if len(id2label) == config.num_labels \
        else None
    return architectures[0], int(config.num_labels), None if names is None else tuple(names)


def has_trained_head(diffs: Sequence[SparseDiff], model_dir: Path) -> bool:
    """Whether the classifier gets a trained head: a diff ships one as a dense tensor, or the model
    folder is itself a saved sequence classifier. False when the head would be newly initialised
    (a language SFT given as a task SFT, say)."""
    return any(_head_rows(diff) is not None for diff in diffs) or _folder_classifier(model_dir) is not None


def _check_overrides(info: Mapping[str, Any], pooling: str | None, num_labels: int | None) -> None:
    """Refuse ``--pooling`` / ``--num-labels`` other than what a shipped head was trained with (its ``info``)."""
    trained_pooling = info.get("pooling") or (
        DEFAULT_POOLING if info.get("architecture") == MEAN_POOL_ARCHITECTURE else "cls")
    if pooling is not None and pooling != trained_pooling:
        raise ValueError(f"--pooling {pooling} contradicts the task SFT, whose head was trained with {trained_pooling} "
                         f"pooling (in {info.get('architecture') or 'its classifier'}): leave --pooling out")
    if num_labels is not None and num_labels != int(info["num_labels"]):
        raise ValueError(f"--num-labels {num_labels} contradicts the task SFT, whose head gives "
                         f"{int(info['num_labels'])} classes: leave --num-labels out")


def resolve_classifier(
    diffs: Sequence[SparseDiff],
    model_dir: Path,
    *,
    pooling: str | None = None,
    num_labels: int | None = None,
) -> ClassifierSpec:
    """The classifier for ``diffs`` on ``model_dir``, from the most specific source that has it.

    In order: the arguments (command-line flags); the ``info`` of the SFT that ships the head
    (else of any SFT) — what it was trained in; the shape of a shipped head (its label
    count); the model folder when it is itself a saved ``…ForSequenceClassification``; and
    last the defaults (mean pooling, 3 labels: deftx's NusaX classifier).

    Raises:
        ValueError: ``pooling`` or ``num_labels`` contradicting the SFT that ships a trained head
            (the head would read features or give classes it was not trained for).
    """
    ordered = sorted(diffs, key=lambda d: not d.dense)
    shipped = next((d.info for d in ordered if d.dense and d.info.get("num_labels")), None)
    if shipped is not None:
        _check_overrides(shipped, pooling, num_labels)
    info: Mapping[str, Any] = next((d.info for d in ordered if d.info.get("num_labels")), {})
    rows = next((r for r in map(_head_rows, ordered) if r is not None), None)
    folder = _folder_classifier(model_dir)
    if info:
        architecture, source = info.get("architecture") or "", "from the SFT's metadata"
        names = real_label_names(info["labels"]) if info.get("labels") else None
        labels = None if names is None else tuple(names)
        count, chosen_pooling = int(info["num_labels"]), info.get("pooling") or (
            DEFAULT_POOLING if architecture == MEAN_POOL_ARCHITECTURE else "cls")
    elif folder is not None:
        (architecture, count, labels), source = folder, "from the model folder's config"
        chosen_pooling = DEFAULT_POOLING if architecture == MEAN_POOL_ARCHITECTURE else "cls"
    else:
        uses_pooler = any(".pooler." in f".{name}" for d in diffs for name in d.names)
        architecture, count, labels = "", rows or DEFAULT_NUM_LABELS, None
        chosen_pooling = "cls" if uses_pooler else DEFAULT_POOLING
        source = "no metadata in the SFTs: " + ", ".join(
            ["labels from the shipped head's shape" if rows else f"{DEFAULT_NUM_LABELS} labels by default",
             "pooling cls because the SFTs change a pooler" if uses_pooler else "mean pooling by default"])
    if pooling is not None and pooling != chosen_pooling:
        chosen_pooling, architecture, source = pooling, "", source + "; pooling from the command line"
    if num_labels is not None and num_labels != count:
        count, labels, source = num_labels, None, source + "; labels from the command line"
    if chosen_pooling == DEFAULT_POOLING:
        architecture = MEAN_POOL_ARCHITECTURE
    elif not architecture.endswith(CLASSIFIER_SUFFIX):
        architecture = "AutoModelForSequenceClassification"
    return ClassifierSpec(architecture, chosen_pooling, count, labels, source)


def build_from_spec(model_dir: str | Path, spec: ClassifierSpec, seed: int) -> torch.nn.Module:
    """Load ``spec``'s classifier from ``model_dir`` (a seeded new head where the folder has none)."""
    import transformers

    label_names = {"id2label": dict(enumerate(spec.labels)), "label2id": {n: i for i, n in enumerate(spec.labels)}} \
        if spec.labels else {}
    if spec.architecture == MEAN_POOL_ARCHITECTURE:
        model = build_classifier(model_dir, spec.num_labels, seed, DEFAULT_POOLING)
        model.config.update(label_names)
        return model
    cls = getattr(transformers, spec.architecture, None)
    if cls is None or not hasattr(cls, "from_pretrained"):
        raise ValueError(f"architecture {spec.architecture!r} (from the SFT's metadata) is not a transformers class; "
                         "pass --pooling to choose the classifier")
    torch.manual_seed(seed)
    model = load_pretrained(cls, model_dir, num_labels=spec.num_labels, **label_names)
    model.config.deftx_pooling = spec.pooling
    return model
