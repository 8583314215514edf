"""Any text or text-classification data set through ``datasets``: a local CSV/TSV/JSON/parquet file or a Hub name.

Beside the NusaX / AmericasNLI / AmericasNLP readers (which read the authors' files), this
reader takes whatever ``datasets.load_dataset`` reads, with the columns named by the caller:

* a local ``.csv`` / ``.tsv`` / ``.json`` / ``.jsonl`` / ``.parquet`` file (one split: the whole file);
* a local folder of such files, or a Hub data set name (with ``split`` and ``config``),
  fetched through the ``datasets`` cache (offline once cached).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOCAL_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


@dataclass(frozen=True)
class ClassificationData:
    """Texts (and second segments) with their label names; ``label_names`` in class-id order."""

    texts: list[str]
    labels: list[str]
    label_names: tuple[str, ...]
    pairs: list[str] | None = None

    def label_ids(self, names: Sequence[str] | None = None) -> list[int]:
        """Each example's class id in ``names`` (default: this data's own ``label_names``).

        Labels that are all integers in ``range(len(names))`` but not names are taken as ids.

        Raises:
            ValueError: a label is not among ``names`` (all unknown labels are listed).
        """
        order = list(names if names is not None else self.label_names)
        unknown = sorted(set(self.labels) - set(order))
        if unknown and all(label.isdigit() and int(label) < len(order) for label in self.labels):
            return [int(label) for label in self.labels]
        if unknown:
            raise ValueError(f"labels {unknown} of the data are not among the classifier's labels {order}")
        index = {name: i for i, name in enumerate(order)}
        return [index[label] for label in self.labels]


def load_rows(source: str | os.PathLike, *, split: str = "train", config: str | None = None) -> Any:
    """A ``datasets.Dataset`` of ``source``: a local file (the whole file), a local folder or a Hub name."""
    import datasets

    path = Path(source).expanduser()
    if path.is_file():
        builder = LOCAL_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"{path}: unsupported file type {path.suffix!r}; expected one of {sorted(LOCAL_BUILDERS)}")
        options = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
        return datasets.load_dataset(builder, data_files=str(path), split="train", **options)
    try:
        return datasets.load_dataset(str(source) if not path.is_dir() else str(path), config, split=split)
    except (FileNotFoundError, ConnectionError) as err:
        raise FileNotFoundError(
            f"data {str(source)!r} is not a local file or folder, and the Hub data set could not be loaded "
            f"({type(err).__name__}: {err}); offline, it must be in the datasets cache"
        ) from err


def _column(rows: Any, name: str, source: str) -> list[Any]:
    if name not in rows.column_names:
        raise KeyError(f"{source}: no column {name!r}; columns: {rows.column_names}")
    return list(rows[name])


def load_texts(source: str | os.PathLike, *, text_column: str = "text", split: str = "train",
               config: str | None = None) -> list[str]:
    """The non-empty texts of one column (unlabelled text for language SFTs)."""
    rows = load_rows(source, split=split, config=config)
    return [str(t).strip() for t in _column(rows, text_column, str(source)) if t is not None and str(t).strip()]


def load_classification(
    source: str | os.PathLike,
    *,
    text_column: str = "text",
    label_column: str = "label",
    pair_column: str | None = None,
    split: str = "train",
    config: str | None = None,
    label_names: Sequence[str] | None = None,
) -> ClassificationData:
    """Labelled examples of ``source``.

    Labels become names: a ``ClassLabel`` column's names, or the values as strings. The class
    order is ``label_names`` when given, else the ``ClassLabel`` order, else the sorted names.

    Raises:
        KeyError: a named column is missing (the columns are listed).
        ValueError: empty data, or labels outside ``label_names``.
    """
    rows = load_rows(source, split=split, config=config)
    texts = [str(t) for t in _column(rows, text_column, str(source))]
    raw = _column(rows, label_column, str(source))
    if not texts:
        raise ValueError(f"{source}: no examples")
    feature = rows.features.get(label_column)
    class_names = getattr(feature, "names", None)
    labels = [class_names[v] if class_names else str(v) for v in raw]
    order = tuple(label_names) if label_names is not None else tuple(class_names or sorted(set(labels)))
    data = ClassificationData(texts, labels, order,
                              [str(p) for p in _column(rows, pair_column, str(source))] if pair_column else None)
    data.label_ids()
    return data
