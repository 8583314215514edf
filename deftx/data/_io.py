"""Shared file helpers for the data readers: existence checks, split checks, delimited reading."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from deftx.text import not_utf8


def require_dir(path: Path, what: str) -> Path:
    """Return ``path`` if it is a directory, else raise FileNotFoundError naming ``what``."""
    if not path.is_dir():
        raise FileNotFoundError(f"{what} not found: {path} is not a directory")
    return path


def check_split(split: str, allowed: Sequence[str], *, refused: Sequence[str] = ()) -> str:
    """Validate one split name; ``refused`` splits get a message saying why they are refused."""
    if split in refused:
        raise ValueError(
            f"split {split!r} is refused here: text of a test split must never be trained on "
            f"(allowed: {', '.join(allowed)})"
        )
    if split not in allowed:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(allowed)}")
    return split


def normalize_splits(splits: str | Iterable[str]) -> tuple[str, ...]:
    """Accept one split name or an iterable of them; reject an empty selection."""
    result = (splits,) if isinstance(splits, str) else tuple(splits)
    if not result:
        raise ValueError("no split requested")
    return result


def read_utf8(path: Path) -> str:
    """The text of a UTF-8 file, its line ends as written.

    Raises:
        ValueError: bytes that are not UTF-8, naming the file, the line and the byte's offset in the file.
    """
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise ValueError(f"{path}:{line}: {not_utf8(err)}") from None


def read_lines(path: Path) -> Iterator[str]:
    """The lines of a UTF-8 file, split at ``\\n``, ``\\r\\n`` or ``\\r`` (each line end given as ``\\n``);
    bytes that are not UTF-8 raise ValueError as in :func:`read_utf8`."""
    return iter(io.StringIO(read_utf8(path), newline=None))


def read_delimited(path: Path, *, delimiter: str, quoting: int = csv.QUOTE_MINIMAL) -> Iterator[tuple[int, list[str]]]:
    """Yield ``(line_number, fields)`` for every record of a UTF-8 delimited file.

    ``line_number`` is the 1-based line on which the record starts (records may span lines
    when a quoted field holds a newline). The header is yielded too, as line 1.

    Raises:
        ValueError: bytes that are not UTF-8 (:func:`read_utf8`), or a malformed record (a quote left open
            to the end of the file, a character after a closing quote), naming the file and the line the
            record starts on.
    """
    reader = csv.reader(io.StringIO(read_utf8(path), newline=""), delimiter=delimiter, quoting=quoting, strict=True)
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            return
        except csv.Error as err:
            raise ValueError(f"{path}:{start}: malformed CSV record ({err})") from None
        yield start, fields
        start = reader.line_num + 1


def read_header(path: Path, records: Iterator[tuple[int, list[str]]]) -> list[str]:
    """Consume and return the header record; an empty file is an error naming the file."""
    try:
        return next(records)[1]
    except StopIteration:
        raise ValueError(f"{path}: empty file, expected a header line") from None


def read_table(path: Path, columns: Sequence[str], *, delimiter: str,
               quoting: int = csv.QUOTE_MINIMAL) -> list[tuple[int, list[str]]]:
    """``(line_number, fields)`` of every record of a delimited file whose header must be ``columns``.

    Raises:
        ValueError: an empty file, another header, a header and no record (a split with no rows is never
            read as an empty split), or a record without one field per column (the message names the file
            and line).
    """
    records = read_delimited(path, delimiter=delimiter, quoting=quoting)
    header = read_header(path, records)
    if header != list(columns):
        shown = " " if delimiter == "\t" else delimiter
        raise ValueError(f"{path}:1: expected header {shown.join(columns)}, found {header}")
    rows = []
    for line, fields in records:
        check_field_count(path, line, fields, len(columns))
        rows.append((line, fields))
    if not rows:
        raise ValueError(f"{path}: no rows, only a header")
    return rows


def check_field_count(path: Path, line: int, fields: list[str], expected: int) -> None:
    """Raise ValueError naming file and line when a record does not have ``expected`` fields."""
    if len(fields) != expected:
        raise ValueError(f"{path}:{line}: expected {expected} fields, found {len(fields)}")


def label_index(path: Path, line: int, value: str, labels: Sequence[str]) -> int:
    """Index of ``value`` in ``labels``; a bad value raises ValueError naming file and line."""
    try:
        return labels.index(value)
    except ValueError:
        raise ValueError(f"{path}:{line}: label {value!r} is not one of {', '.join(labels)}") from None
