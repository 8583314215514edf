"""Any text or text-classification data set through ``datasets``: a local CSV/TSV/JSON/parquet file or a Hub name.

Beside the NusaX / AmericasNLI / AmericasNLP readers (which read the authors' files), this
reader takes whatever ``datasets.load_dataset`` reads, with the columns named by the caller:

* a local ``.csv`` / ``.tsv`` / ``.json`` / ``.jsonl`` / ``.parquet`` file (one split: the whole file);
* a local folder of such files, or a Hub data set name (with ``split`` and ``config``),
  fetched through the ``datasets`` cache (offline once cached).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deftx.text import not_utf8, repeated

LOCAL_BUILDERS = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json", ".parquet": "parquet"}


class UnknownClassOrderError(ValueError):
    """Labels that are names, with no class-id order to map them by: which id each name has is the
    classifier's, and the labels a data file happens to hold do not tell it.

    Attributes:
        names: the distinct labels, sorted.
    """

    def __init__(self, names: Sequence[str]) -> None:
        self.names = tuple(names)
        super().__init__(f"the labels are names ({', '.join(self.names)}) and no class order is given: pass "
                         "label_names, the classifier's labels in class-id order (the class ids cannot be told "
                         "from the data's own labels)")


@dataclass(frozen=True)
class ClassificationData:
    """Texts (and second segments) with their labels; ``label_names``: the class names in class-id order
    where the data set declares them (given to :func:`load_classification`, or a ``ClassLabel`` column's
    names), else None."""

    texts: list[str]
    labels: list[str]
    label_names: tuple[str, ...] | None
    pairs: list[str] | None = None

    def label_ids(self, names: Sequence[str] | None = None) -> list[int]:
        """Each example's class id in ``names`` (default: this data's own ``label_names``).

        Labels that are all integers (in ``range(len(names))`` when there are names) but not names
        are taken as ids.

        Raises:
            UnknownClassOrderError: no names, and labels that are not integers.
            ValueError: a label is not among ``names`` (all unknown labels are listed).
        """
        order = names if names is not None else self.label_names
        if order is None:
            if all(_is_class_id(label) for label in self.labels):
                return [int(label) for label in self.labels]
            raise UnknownClassOrderError(sorted(set(self.labels)))
        order = list(order)
        unknown = sorted(set(self.labels) - set(order))
        if unknown and all(_is_class_id(label) and int(label) < len(order) for label in self.labels):
            return [int(label) for label in self.labels]
        if unknown:
            raise ValueError(f"labels {unknown} of the data are not among the classifier's labels {order}")
        index = {name: i for i, name in enumerate(order)}
        return [index[label] for label in self.labels]


def _is_class_id(label: str) -> bool:
    """Whether ``label`` is written as a class id (a non-negative integer in ASCII digits)."""
    return label.isascii() and label.isdigit()


def load_rows(source: str | os.PathLike, *, split: str = "train", config: str | None = None) -> Any:
    """A ``datasets.Dataset`` of ``source``: a local file (the whole file), a local folder or a Hub name.

    Raises:
        ValueError: an unsupported file type, or a file or folder that is empty, has no rows or
            cannot be parsed (naming it and the problem).
        FileNotFoundError: neither a local file or folder nor a Hub data set that could be loaded.
    """
    path = Path(source).expanduser()
    if path.is_file():
        builder = LOCAL_BUILDERS.get(path.suffix.lower())
        if builder is None:
            raise ValueError(f"{path}: unsupported file type {path.suffix!r}; expected one of {sorted(LOCAL_BUILDERS)}")
        if path.stat().st_size == 0:
            raise ValueError(f"{path}: empty file (no header, no rows)")
        return _loaded(str(path), builder, data_files=str(path), split="train", **_builder_options(path),
                       **_string_columns(path))
    if not path.is_dir() and path.suffix.lower() in LOCAL_BUILDERS:
        raise FileNotFoundError(f"data file {str(source)!r} does not exist (a {path.suffix} name is taken for a "
                                "local file, never looked up on the Hub)")
    try:
        if path.is_dir():
            return _loaded(str(path), str(path), config, split=split)
        return _loaded(repr(str(source)), str(source), config, split=split)
    except (FileNotFoundError, ConnectionError) as err:
        raise FileNotFoundError(
            f"data {str(source)!r} is not a local file or folder, and the Hub data set could not be loaded "
            f"({type(err).__name__}: {err}); offline, it must be in the datasets cache"
        ) from err


def _builder_options(path: Path) -> dict[str, Any]:
    """The reader options of a local file: a CSV/TSV cell is its text as written (pandas would read ``NA``,
    ``None``, ``null``, ``nan``, ``N/A`` as a missing value: a text left out, or refused as an empty cell);
    a ``.tsv`` is split at tabs and nothing else, a double quote in it an ordinary character (as in the
    AmericasNLI and XNLI files: CSV quoting would join the lines between two quotes into one cell)."""
    suffix = path.suffix.lower()
    if LOCAL_BUILDERS[suffix] != "csv":
        return {}
    return {"keep_default_na": False, **({"delimiter": "\t", "quoting": csv.QUOTE_NONE} if suffix == ".tsv" else {})}


def _string_columns(path: Path) -> dict[str, Any]:
    """For a CSV/TSV file, ``features`` typing every column of its header as text, so that a cell is read as
    written (pandas would type a column: the text ``007`` read as ``7.0``, the label ``true`` as ``True``).

    Raises:
        ValueError: a header that names a column twice, or bytes that are not UTF-8 (naming the file).
    """
    options = _builder_options(path)
    if LOCAL_BUILDERS[path.suffix.lower()] != "csv":
        return {}
    from datasets import Features, Value

    try:
        with path.open(encoding="utf-8-sig", newline="") as handle:
            header = next(csv.reader(handle, delimiter=options.get("delimiter", ","),
                                     quoting=options.get("quoting", csv.QUOTE_MINIMAL)), [])
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: {not_utf8(err)}") from None
    twice = repeated(header)
    if twice:
        raise ValueError(f"{path}: the header names column {twice[0]!r} twice")
    return {"features": Features({name: Value("string") for name in header})}


def _loaded(name: str, *args: Any, **kwargs: Any) -> Any:
    """``datasets.load_dataset(*args, **kwargs)``, refused when it has no rows; its parse errors
    (which name no file) as one ValueError naming the data, ``name``."""
    import datasets
    from datasets.exceptions import DatasetGenerationError

    try:
        rows = datasets.load_dataset(*args, **kwargs)
    except (DatasetGenerationError, ValueError, StopIteration) as err:
        raise ValueError(f"{name}: {_load_problem(err)}") from err
    if len(rows) == 0:
        raise ValueError(f"{name}: no rows")
    return rows


def _load_problem(err: BaseException) -> str:
    """What went wrong in a ``datasets.load_dataset`` call, in words, from its exception."""
    cause = err.__cause__ if err.__cause__ is not None else err
    if isinstance(err, StopIteration) or "corresponds to no data" in str(err):
        return "no rows (only a header, or blank lines)"
    if isinstance(cause, UnicodeDecodeError):
        return not_utf8(cause)
    detail = " ".join(str(cause).split()) or type(cause).__name__
    return f"cannot be read ({type(cause).__name__}: {detail})"


def _column(rows: Any, name: str, source: str) -> list[Any]:
    if name not in rows.column_names:
        raise KeyError(f"{source}: no column {name!r}; columns: {rows.column_names}")
    return list(rows[name])


def _filled(values: Sequence[Any], column: str, source: str) -> list[str]:
    """``values`` as strings, refusing an empty cell (None, or only white space), naming its row and the column."""
    for row, value in enumerate(values, start=1):
        if value is None or not str(value).strip():
            raise ValueError(f"{source}: row {row} (counting data rows from 1) has no {column!r} value (an empty cell)")
    return [str(value) for value in values]


def load_texts(source: str | os.PathLike, *, text_column: str = "text", split: str = "train",
               config: str | None = None) -> list[str]:
    """The non-empty texts of one column (unlabelled text for language SFTs): empty cells are left out.

    Raises:
        KeyError: no such column (the columns are listed).
        ValueError: the data cannot be loaded (:func:`load_rows`), or no cell of the column holds text.
    """
    rows = load_rows(source, split=split, config=config)
    texts = [str(t).strip() for t in _column(rows, text_column, str(source)) if t is not None and str(t).strip()]
    if not texts:
        raise ValueError(f"{source}: column {text_column!r} holds no text (every cell is empty)")
    return texts


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
    order is ``label_names`` when given, else the ``ClassLabel`` order, else unknown (None: never
    the order of the labels the data happens to hold, which would give a name another class's id).

    Raises:
        KeyError: a named column is missing (the columns are listed).
        ValueError: data that cannot be loaded (:func:`load_rows`), an empty text, label or pair
            cell (naming its row), a ``ClassLabel`` value outside its names, or labels outside
            ``label_names``.
    """
    rows = load_rows(source, split=split, config=config)
    texts = _filled(_column(rows, text_column, str(source)), text_column, str(source))
    raw = _column(rows, label_column, str(source))
    if not texts:
        raise ValueError(f"{source}: no examples")
    feature = rows.features.get(label_column)
    class_names = getattr(feature, "names", None)
    labels = (_class_names(raw, class_names, label_column, str(source)) if class_names
              else _filled(raw, label_column, str(source)))
    order = tuple(label_names) if label_names is not None else tuple(class_names) if class_names else None
    pairs = _filled(_column(rows, pair_column, str(source)), pair_column, str(source)) if pair_column else None
    data = ClassificationData(texts, labels, order, pairs)
    if order is not None:
        data.label_ids()
    return data


def _class_names(values: Sequence[Any], names: Sequence[str], column: str, source: str) -> list[str]:
    """A ``ClassLabel`` column's values as their names, refusing a missing one (None or -1) or one out of range."""
    for row, value in enumerate(values, start=1):
        if not isinstance(value, int) or not 0 <= value < len(names):
            raise ValueError(f"{source}: row {row} (counting data rows from 1) has no {column!r} value "
                             f"({value!r}; the class ids are 0..{len(names) - 1})")
    return [names[value] for value in values]
