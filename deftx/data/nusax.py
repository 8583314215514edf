"""NusaX (Winata et al., 2022): sentiment classification and parallel MT text.

Layout under the data root: ``nusax/datasets/sentiment/<language>/{train,valid,test}.csv``
(columns ``id,text,label``) and ``nusax/datasets/mt/{train,valid}.csv`` (an index column and
one column per language, named like the sentiment folders). The MT text is the sentiment
train/valid sentences translated; it is what a language SFT is trained on. Some languages
have no sentiment test split on purpose (held out): check ``has_split`` before evaluating.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from deftx.data._io import (
    check_field_count,
    check_split,
    label_index,
    normalize_splits,
    read_delimited,
    read_header,
    read_table,
    require_dir,
)

LABELS = ("negative", "neutral", "positive")
SPLITS = ("train", "valid", "test")
MT_SPLITS = ("train", "valid")
SENTIMENT_COLUMNS = ["id", "text", "label"]
LANGUAGE_CODES = {
    "acehnese": "ace",
    "balinese": "ban",
    "banjarese": "bjn",
    "buginese": "bug",
    "english": "eng",
    "indonesian": "ind",
    "javanese": "jav",
    "madurese": "mad",
    "minangkabau": "min",
    "ngaju": "nij",
    "sundanese": "sun",
    "toba_batak": "bbc",
}


@dataclass(frozen=True)
class SentimentExample:
    """One labelled sentence; ``label`` indexes ``LABELS``; equal ``id`` = parallel sentence."""

    text: str
    label: int
    id: str


def _datasets_dir(data_dir: Path | str) -> Path:
    return require_dir(Path(data_dir) / "nusax" / "datasets", "NusaX data")


def _sentiment_dir(data_dir: Path | str) -> Path:
    return require_dir(_datasets_dir(data_dir) / "sentiment", "NusaX sentiment data")


def sentiment_languages(data_dir: Path | str) -> list[str]:
    """Sorted names of the languages that have a sentiment folder (e.g. ``"acehnese"``)."""
    return sorted(p.name for p in _sentiment_dir(data_dir).iterdir() if p.is_dir())


def _language_dir(data_dir: Path | str, language: str) -> Path:
    root = _sentiment_dir(data_dir)
    folder = root / language
    if not language or not folder.is_dir():
        known = ", ".join(sentiment_languages(data_dir))
        raise ValueError(f"unknown NusaX language {language!r} (no folder in {root}); known: {known}")
    return folder


def has_split(data_dir: Path | str, language: str, split: str) -> bool:
    """Whether ``language`` has a sentiment file for ``split`` (held-out test splits are absent)."""
    check_split(split, SPLITS)
    return (_language_dir(data_dir, language) / f"{split}.csv").is_file()


def load_sentiment(data_dir: Path | str, language: str, split: str) -> list[SentimentExample]:
    """All rows of ``sentiment/<language>/<split>.csv`` in file order.

    Text has surrounding whitespace stripped (some rows end in a newline inside the quotes).

    Raises:
        ValueError: unknown language or split, a malformed header or row, a file with no rows, an
            empty text or a label outside ``LABELS`` (the message names the file and line).
        FileNotFoundError: the split does not exist for this language (held out).
    """
    check_split(split, SPLITS)
    path = _language_dir(data_dir, language) / f"{split}.csv"
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} does not exist: NusaX {language} has no {split} split here "
            "(some test splits are held out on purpose; use has_split to skip them)"
        )
    examples = []
    for line, fields in read_table(path, SENTIMENT_COLUMNS, delimiter=","):
        example_id, text, label = fields
        text = text.strip()
        if not text:
            raise ValueError(f"{path}:{line}: empty text")
        examples.append(SentimentExample(text, label_index(path, line, label, LABELS), example_id))
    return examples


def load_mt_text(data_dir: Path | str, language: str, splits: str | Iterable[str] = MT_SPLITS) -> list[str]:
    """The ``language`` column of ``mt/<split>.csv`` for each split, in order (unlabelled text).

    Only ``train`` and ``valid`` exist and are accepted: the MT test split holds the sentiment
    test sentences, whose text must never be trained on, so ``"test"`` is refused.

    Raises:
        ValueError: a refused or unknown split, a language without a column, a split file with no
            rows, a malformed row or an empty cell (the message names the file and line).
    """
    chosen = [check_split(s, MT_SPLITS, refused=("test",)) for s in normalize_splits(splits)]
    mt_dir = require_dir(_datasets_dir(data_dir) / "mt", "NusaX MT data")
    texts: list[str] = []
    for split in chosen:
        path = mt_dir / f"{split}.csv"
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        records = read_delimited(path, delimiter=",")
        header = read_header(path, records)
        if language not in header[1:]:
            known = ", ".join(sorted(h for h in header[1:] if h))
            raise ValueError(f"{path}: no column for language {language!r}; columns: {known}")
        column = header.index(language)
        before = len(texts)
        for line, fields in records:
            check_field_count(path, line, fields, len(header))
            text = fields[column].strip()
            if not text:
                raise ValueError(f"{path}:{line}: empty {language} text")
            texts.append(text)
        if len(texts) == before:
            raise ValueError(f"{path}: no rows, only a header")
    return texts
