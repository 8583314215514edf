"""Text that users write or hand over: values shown short, lists checked for repeats, UTF-8 and JSON
read strictly, each problem said in words that name where it is.

A leaf module (standard library only, no torch): the commands that read results files or logs use it
without loading the training stack.
"""

from __future__ import annotations

import json
import os
import reprlib
from collections import Counter
from collections.abc import Hashable, Iterable
from pathlib import Path
from typing import Any

_SHORT = reprlib.Repr()
_SHORT.maxlevel = 2
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = _SHORT.maxset = 4
_SHORT.maxstring = _SHORT.maxother = 60


def short_repr(value: object) -> str:
    """``repr(value)`` cut short with bounded work (a YAML alias bomb prints in microseconds)."""
    try:
        return _SHORT.repr(value)
    except (ValueError, RecursionError):
        return f"<{type(value).__name__}>"


def repeated(values: Iterable[Hashable]) -> list[Hashable]:
    """The values that ``values`` holds more than once, each once, in the order they first appear."""
    items = list(values)
    counts = Counter(items)
    return [value for value in dict.fromkeys(items) if counts[value] > 1]


def not_utf8(err: UnicodeDecodeError) -> str:
    """Why bytes are not UTF-8 text, saying where: ``not UTF-8 text (byte 0xff at offset 12)``."""
    return f"not UTF-8 text (byte {err.object[err.start]:#04x} at offset {err.start})"


class DuplicateKeyError(ValueError):
    """A JSON object or YAML mapping holds one key twice (the message names it, and where it can)."""


def unique_json_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json.loads``' ``object_pairs_hook``: the object as a dict, refusing a key given twice.

    Raises:
        DuplicateKeyError: naming the key.
    """
    seen: dict[str, Any] = {}
    for key, value in pairs:
        if key in seen:
            raise DuplicateKeyError(f"duplicate key {short_repr(key)}: JSON would keep only the last; write it once")
        seen[key] = value
    return seen


def strict_json_loads(text: str | bytes) -> Any:
    """``json.loads`` refusing an object that holds a key twice.

    Raises:
        DuplicateKeyError: a key given twice in one object.
        json.JSONDecodeError: the text is not JSON.
        RecursionError: nested too deeply for the parser.
    """
    return json.loads(text, object_pairs_hook=unique_json_keys)


def strict_json_file(path: str | os.PathLike) -> Any:
    """The UTF-8 JSON of the file ``path`` (:func:`strict_json_loads`), every problem a ValueError naming it.

    Raises:
        ValueError: the bytes are not UTF-8, an object holds a key twice, or the text is not JSON.
        OSError: the file cannot be read.
    """
    try:
        return strict_json_loads(Path(path).read_bytes().decode("utf-8"))
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: {not_utf8(err)}") from err
    except DuplicateKeyError as err:
        raise ValueError(f"{path}: {err}") from err
    except (ValueError, RecursionError) as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from err
