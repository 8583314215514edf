"""AmericasNLP 2021 shared task: Spanish-indigenous parallel text (indigenous side only here).

Layout under the data root: ``americasnlp2021/data/<language>-spanish/{train,dev}.<code>``, one
sentence per line, where ``<code>`` is the AmericasNLI language code. The indigenous side is
the unlabelled text for the language SFTs of the AmericasNLI languages. There is no test
split in this corpus and ``"test"`` is refused. Quechua ships no ``train.quy`` (its JW300 part
is not distributed); its training text is ``dict.quy`` (MINEDU dictionary sentences and
miscellaneous dictionary entries, per the folder's README).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Iterable
from pathlib import Path

from deftx.data._io import check_split, normalize_splits, read_lines, require_dir
from deftx.data.americasnli import check_language

SPLITS = ("train", "dev")
FOLDERS = {
    "aym": "aymara-spanish",
    "bzd": "bribri-spanish",
    "cni": "ashaninka-spanish",
    "gn": "guarani-spanish",
    "hch": "wixarika-spanish",
    "nah": "nahuatl-spanish",
    "oto": "hñähñu-spanish",
    "quy": "quechua-spanish",
    "shp": "shipibo_konibo-spanish",
    "tar": "raramuri-spanish",
}
FILE_STEMS = {("quy", "train"): "dict"}
BYTE_ORDER_MARK = "\ufeff"


def _find_folder(root: Path, name: str) -> Path:
    """The entry of ``root`` whose name equals ``name`` up to Unicode normalisation (NFC)."""
    wanted = unicodedata.normalize("NFC", name)
    for entry in root.iterdir():
        if entry.is_dir() and unicodedata.normalize("NFC", entry.name) == wanted:
            return entry
    raise FileNotFoundError(f"AmericasNLP folder {name!r} not found in {root}")


def _clean_line(line: str) -> str:
    return line.replace(BYTE_ORDER_MARK, "").strip()


def text_file(data_dir: Path | str, nli_language_code: str, split: str) -> Path:
    """Path of the indigenous-side file of ``split`` for an AmericasNLI language code."""
    check_language(nli_language_code)
    check_split(split, SPLITS, refused=("test",))
    root = require_dir(Path(data_dir) / "americasnlp2021" / "data", "AmericasNLP 2021 data")
    folder = _find_folder(root, FOLDERS[nli_language_code])
    stem = FILE_STEMS.get((nli_language_code, split), split)
    path = folder / f"{stem}.{nli_language_code}"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist")
    return path


def load_text(data_dir: Path | str, nli_language_code: str, splits: str | Iterable[str] = SPLITS) -> list[str]:
    """Indigenous-side sentences of the requested splits, in file order.

    Lines are stripped and byte-order marks removed (files built by concatenation carry
    U+FEFF at some line starts, e.g. 20 lines of ``train.nah``); blank lines, which the
    parallel files use as placeholders for untranslated rows, are dropped.

    Raises:
        ValueError: an unknown language code, a refused (``test``) or unknown split, bytes that are not
            UTF-8 (naming the file and line), or a file with no text (every line blank): a split is never
            read as empty.
        FileNotFoundError: the data folder or file is missing.
    """
    texts: list[str] = []
    for split in normalize_splits(splits):
        path = text_file(data_dir, nli_language_code, split)
        lines = [clean for clean in (_clean_line(line) for line in read_lines(path)) if clean]
        if not lines:
            raise ValueError(f"{path}: no text, every line is blank")
        texts.extend(lines)
    return texts
