"""deftx.text: the shared readers of user text, checked against what Python's own parsers see."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from deftx.text import DuplicateKeyError, not_utf8, repeated, short_repr, strict_json_loads


def test_not_utf8_names_the_byte_and_its_offset() -> None:
    data = "caf\u00e9 au lait".encode("latin-1")
    with pytest.raises(UnicodeDecodeError) as caught:
        data.decode("utf-8")
    assert not_utf8(caught.value) == f"not UTF-8 text (byte 0xe9 at offset {data.index(0xE9)})"


@pytest.mark.parametrize("text", ['{"a": 1, "a": 2}', '{"x": [{"b": 1, "b": 1}]}', '[{"k": 0}, {"k": 1, "k": 2}]'])
def test_a_key_given_twice_in_one_object_is_refused(text: str) -> None:
    with pytest.raises(DuplicateKeyError, match=r"duplicate key '[abk]': JSON would keep only the last"):
        strict_json_loads(text)


@pytest.mark.parametrize("text", ['{"a": 1, "b": {"a": 2}}', '[{"k": 1}, {"k": 2}]', "[]", '"a"', "3"])
def test_json_without_repeats_reads_as_json_loads_does(text: str) -> None:
    assert strict_json_loads(text) == json.loads(text)


def test_repeated_keeps_first_appearance_order() -> None:
    assert repeated(["b", "a", "b", "c", "a", "b"]) == ["b", "a"]
    assert repeated([0, 1, 2]) == []


def test_short_repr_is_bounded() -> None:
    assert len(short_repr("x" * 10_000)) < 80
    assert short_repr(list(range(100))) == "[0, 1, 2, 3, ...]"


def test_importing_it_loads_no_torch() -> None:
    code = "import sys, deftx.text, deftx.eval.paired; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout == "False\n"
