"""What every data reader shares: unknown languages and splits, a missing root, and the table checks."""

from __future__ import annotations

import csv
import re

import pytest

from deftx.data import americasnli, americasnlp, nusax
from deftx.data._io import read_table
from tests.data.conftest import write_file

READERS = {
    "americasnli": (americasnli.load_nli, ("aym", "dev"), "quz", "train", "AmericasNLI data not found"),
    "nusax": (nusax.load_sentiment, ("english", "train"), "klingon", "dev", "NusaX data not found"),
}


@pytest.mark.parametrize("reader", READERS)
def test_unknown_language_split_and_missing_root(reader, data_dir, tmp_path):
    load, (language, split), bad_language, bad_split, missing = READERS[reader]
    with pytest.raises(ValueError, match=rf"unknown \w+ language '{bad_language}'.*{language}"):
        load(data_dir, bad_language, split)
    with pytest.raises(ValueError, match=f"unknown split '{bad_split}'"):
        load(data_dir, language, bad_split)
    with pytest.raises(FileNotFoundError, match=missing):
        load(tmp_path, language, split)


def test_other_reader_entry_points_check_the_same():
    with pytest.raises(ValueError, match="unknown split"):
        nusax.has_split("/nonexistent", "acehnese", "validation")
    with pytest.raises(FileNotFoundError, match="NusaX data not found"):
        nusax.sentiment_languages("/nonexistent")


@pytest.mark.parametrize(("delimiter", "quoting", "shown"), [(",", csv.QUOTE_MINIMAL, "a,b,c"),
                                                            ("\t", csv.QUOTE_NONE, "a b c")])
def test_read_table_checks_header_and_fields_naming_file_and_line(tmp_path, delimiter, quoting, shown):
    def table(text: str):
        path = write_file(tmp_path, "t.txt", text.replace(",", delimiter))
        return read_table(path, ["a", "b", "c"], delimiter=delimiter, quoting=quoting)

    assert table("a,b,c\n1,2,3\n4,5,6\n") == [(2, ["1", "2", "3"]), (3, ["4", "5", "6"])]
    with pytest.raises(ValueError, match=rf"t\.txt:1: expected header {shown}, found \['a', 'x', 'c'\]"):
        table("a,x,c\n1,2,3\n")
    with pytest.raises(ValueError, match=r"t\.txt:3: expected 3 fields, found 2"):
        table("a,b,c\n1,2,3\n4,5\n")
    with pytest.raises(ValueError, match=r"t\.txt: empty file, expected a header line"):
        table("")


def test_read_table_numbers_a_record_by_the_line_it_starts_on(tmp_path):
    path = write_file(tmp_path, "t.csv", 'a,b\n1,"two\nlines"\n3,4\n')
    assert read_table(path, ["a", "b"], delimiter=",") == [(2, ["1", "two\nlines"]), (4, ["3", "4"])]


EMPTY_SPLITS = {
    "nusax sentiment": ("nusax/datasets/sentiment/xx/train.csv", "id,text,label\n",
                        lambda root: nusax.load_sentiment(root, "xx", "train")),
    "nusax mt": ("nusax/datasets/mt/valid.csv", ",xx\n", lambda root: nusax.load_mt_text(root, "xx")),
    "americasnli": ("americasnli/data/anli_final/dev/aym.tsv", "id\tlanguage\tpremise\thypothesis\tlabel\r\n",
                    lambda root: americasnli.load_nli(root, "aym", "dev")),
    "americasnlp": ("americasnlp2021/data/aymara-spanish/dev.aym", "\n \n\ufeff\n",
                    lambda root: americasnlp.load_text(root, "aym")),
}


@pytest.mark.parametrize("reader", EMPTY_SPLITS)
def test_a_split_with_no_rows_is_refused_naming_its_file(reader, tmp_path):
    # an empty split read as [] dropped out of what it was joined with: the MT valid text of a
    # language SFT, a language of the pooled AmericasNLI dev set the task trains on
    relative, body, load = EMPTY_SPLITS[reader]
    write_file(tmp_path, "nusax/datasets/mt/train.csv", ",xx\n0,halo\n")
    write_file(tmp_path, "americasnlp2021/data/aymara-spanish/train.aym", "kuna\n")
    write_file(tmp_path, relative, body)
    with pytest.raises(ValueError, match=rf"{re.escape(relative)}: no (rows|text)"):
        load(tmp_path)


UNREADABLE = {
    "nusax sentiment": ("nusax/datasets/sentiment/xx/train.csv", b"id,text,label\n1,ok,positive\n2,caf\xe9,neutral\n",
                        lambda root: nusax.load_sentiment(root, "xx", "train")),
    "nusax mt": ("nusax/datasets/mt/train.csv", b",xx\n0,halo\n1,caf\xe9\n",
                 lambda root: nusax.load_mt_text(root, "xx")),
    "americasnli": ("americasnli/data/anli_final/dev/aym.tsv",
                    b"id\tlanguage\tpremise\thypothesis\tlabel\n1\taym\tp\th\tneutral\n2\taym\tcaf\xe9\th\tneutral\n",
                    lambda root: americasnli.load_nli(root, "aym", "dev")),
    "americasnlp": ("americasnlp2021/data/aymara-spanish/train.aym", b"kuna\njani\ncaf\xe9\n",
                    lambda root: americasnlp.load_text(root, "aym", "train")),
}


@pytest.mark.parametrize("reader", UNREADABLE)
def test_bytes_that_are_not_utf8_are_refused_naming_the_file_line_and_file_offset(reader, tmp_path):
    relative, body, load = UNREADABLE[reader]
    path = tmp_path / relative
    path.parent.mkdir(parents=True)
    path.write_bytes(body)
    line, offset = body.count(b"\n", 0, body.index(b"\xe9")) + 1, body.index(b"\xe9")
    with pytest.raises(ValueError, match=rf"{re.escape(relative)}:{line}: not UTF-8 text \(byte 0xe9 at offset "
                                         rf"{offset}\)"):
        load(tmp_path)


@pytest.mark.parametrize("body", ['a,b\n1,2\n3,"open\n5,6\n', 'a,b\n1,2\n3,"four"x\n'])
def test_a_broken_quote_is_refused_naming_the_file_and_the_line_its_record_starts_on(tmp_path, body):
    path = write_file(tmp_path, "t.csv", body)
    with pytest.raises(ValueError, match=r"t\.csv:3: malformed CSV record \("):
        read_table(path, ["a", "b"], delimiter=",")
