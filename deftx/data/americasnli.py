"""AmericasNLI (Ebrahimi et al., ACL 2022): NLI in 10 indigenous languages of the Americas.

Layout under the data root: ``americasnli/data/anli_final/{dev,test}/<code>.tsv`` with the
header ``id language premise hypothesis label``. The files are plain tab-separated text in
which a double quote is an ordinary character (never a field delimiter), so they are read
with ``csv.QUOTE_NONE``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from deftx.data._io import check_split, label_index, read_table, require_dir

LABELS = ("entailment", "neutral", "contradiction")
LANGUAGES = ("aym", "bzd", "cni", "gn", "hch", "nah", "oto", "quy", "shp", "tar")
SPLITS = ("dev", "test")
COLUMNS = ["id", "language", "premise", "hypothesis", "label"]


@dataclass(frozen=True)
class NLIExample:
    """One premise/hypothesis pair; ``label`` indexes ``LABELS``."""

    premise: str
    hypothesis: str
    label: int
    id: str
    language: str


def check_language(language: str) -> str:
    """Validate an AmericasNLI language code (one of ``LANGUAGES``)."""
    if language not in LANGUAGES:
        raise ValueError(f"unknown AmericasNLI language {language!r}; expected one of {', '.join(LANGUAGES)}")
    return language


def load_nli(data_dir: Path | str, language: str, split: str) -> list[NLIExample]:
    """All rows of ``anli_final/<split>/<language>.tsv`` in file order.

    Fields are stripped of surrounding whitespace. Rows are kept as published, including the
    three ``nah`` test rows whose premise is blank, so that counts match the published sets.

    Raises:
        ValueError: unknown language or split, a malformed header or row, a file with no rows, a
            row of another language or a bad label (the message names the file and line).
        FileNotFoundError: the data folder or file is missing.
    """
    check_language(language)
    check_split(split, SPLITS)
    root = require_dir(Path(data_dir) / "americasnli" / "data" / "anli_final", "AmericasNLI data")
    path = root / split / f"{language}.tsv"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    examples = []
    for line, fields in read_table(path, COLUMNS, delimiter="\t", quoting=csv.QUOTE_NONE):
        example_id, row_language, premise, hypothesis, label = fields
        if row_language != language:
            raise ValueError(f"{path}:{line}: row language {row_language!r} != {language!r}")
        label_id = label_index(path, line, label, LABELS)
        examples.append(NLIExample(premise.strip(), hypothesis.strip(), label_id, example_id, language))
    return examples
