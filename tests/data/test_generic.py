"""deftx.data.generic on bad files: empty, header only, unparsable, not UTF-8, empty cells."""

from __future__ import annotations

from pathlib import Path

import pytest

from deftx.data import americasnli
from deftx.data.generic import load_classification, load_rows, load_texts
from tests.data.conftest import write_file


def test_a_good_csv_loads_its_texts_and_labels(tmp_path):
    path = write_file(tmp_path, "data.csv", "text,label\nbagus,positive\njelek,negative\n")
    data = load_classification(path)
    assert (data.texts, data.labels, data.label_names) == (["bagus", "jelek"], ["positive", "negative"], None)


@pytest.mark.parametrize("labels", [["neutral", "positive", "positive"], ["positive", "positive"],
                                    ["negative", "neutral", "positive"]])
def test_label_names_get_the_classifiers_ids_never_ones_from_the_labels_the_file_holds(tmp_path, labels):
    """Class ids come from the names given in class-id order, whatever subset of them a file holds; with
    none given, names are refused (their sorted order was taken, so 'positive' was 0 in a positive-only file)."""
    order = ("negative", "neutral", "positive")
    path = write_file(tmp_path, "data.csv", "text,label\n" + "".join(f"t{i},{label}\n" for i, label in
                                                                       enumerate(labels)))
    assert load_classification(path, label_names=order).label_ids() == [order.index(label) for label in labels]
    data = load_classification(path)
    assert data.label_ids(order) == [order.index(label) for label in labels]
    with pytest.raises(ValueError, match=r"the labels are names \(.*\) and no class order is given: "
                                                     r"pass label_names"):
        data.label_ids()


def test_integer_labels_are_class_ids_without_names(tmp_path):
    path = write_file(tmp_path, "data.csv", "text,label\na,2\nb,0\nc,2\n")
    assert load_classification(path).label_ids() == [2, 0, 2]


@pytest.mark.parametrize(("name", "text", "problem"), [
    ("empty.csv", "", "empty file"),
    ("empty.jsonl", "", "empty file"),
    ("header.csv", "text,label\n", "no rows"),
    ("header.tsv", "text\tlabel\n", "no rows"),
    ("blank.jsonl", "\n\n", "no rows"),
    ("broken.jsonl", '{"text": "a", "label": 1}\n{"text": oops}\n', "cannot be read"),
    ("quote.csv", 'text,label\n"a,1\n', "cannot be read"),
    ("broken.parquet", "junk", "cannot be read"),
])
def test_an_empty_headed_only_or_broken_file_is_one_error_naming_it(tmp_path, name, text, problem):
    path = write_file(tmp_path, name, text)
    with pytest.raises(ValueError, match=problem) as raised:
        load_rows(path)
    assert str(path) in str(raised.value)
    with pytest.raises(ValueError, match=problem):
        load_classification(path)
    with pytest.raises(ValueError, match=problem):
        load_texts(path)


def test_a_file_not_in_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.csv"
    path.write_bytes("text,label\ncaf\u00e9,1\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.csv: not UTF-8 text \(byte 0xe9"):
        load_classification(path)


@pytest.mark.parametrize(("text", "column", "row"), [
    ("text,label\na,1\n,2\nc,0\n", "text", 2),
    ("text,label\na,1\nb,\nc,0\n", "label", 2),
    ("text,label\na,1\nb,0\n   ,1\n", "text", 3),
])
def test_an_empty_text_or_label_cell_is_refused_naming_its_row_and_column(tmp_path, text, column, row):
    path = write_file(tmp_path, "cells.csv", text)
    with pytest.raises(ValueError, match=rf"cells\.csv: row {row} .* no '{column}' value"):
        load_classification(path)


def test_an_empty_pair_cell_is_refused(tmp_path):
    path = write_file(tmp_path, "nli.csv", "premise,hypothesis,label\na,b,0\nc,,1\n")
    with pytest.raises(ValueError, match=r"row 2 .* no 'hypothesis' value"):
        load_classification(path, text_column="premise", pair_column="hypothesis")


def test_a_class_label_column_with_a_missing_label_is_refused(tmp_path):
    import datasets

    features = datasets.Features({"text": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})
    path = Path(tmp_path / "data.parquet")
    datasets.Dataset.from_dict({"text": ["a", "b"], "label": [1, -1]}, features=features).to_parquet(path)
    with pytest.raises(ValueError, match=r"row 2 .* no 'label' value \(-1; the class ids are 0\.\.1\)"):
        load_classification(path)


def test_unlabelled_text_leaves_empty_cells_out_and_refuses_a_column_without_text(tmp_path):
    path = write_file(tmp_path, "text.csv", "text,other\na,1\n,2\n  b ,3\n")
    assert load_texts(path) == ["a", "b"]
    empty = write_file(tmp_path, "none.csv", "text,other\n,1\n  ,2\n")
    with pytest.raises(ValueError, match=r"none\.csv: column 'text' holds no text"):
        load_texts(empty)


@pytest.mark.parametrize("name", ["reviews.csv", "data/reviews.TSV", "x.jsonl", "sub/x.parquet"])
def test_a_missing_data_file_is_named_at_once_never_looked_up_on_the_hub(tmp_path, monkeypatch, name):
    """A typo in a file name was tried as a Hub data set name (about 30 s of retries online) before its error."""
    import datasets

    def no_hub(*args, **kwargs):
        raise AssertionError(f"load_dataset called with {args}")

    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    with pytest.raises(FileNotFoundError, match=r"data file .* does not exist .*never looked up on the Hub"):
        load_rows(tmp_path / name)


@pytest.mark.parametrize("name", ["words.csv", "words.tsv"])
def test_a_text_that_reads_like_a_missing_value_is_kept_as_written(tmp_path, name):
    """pandas reads NA, N/A, None, null and nan as missing: load_texts left 5 of these 6 texts out and
    load_classification refused the first as an empty cell."""
    texts = ["NA", "N/A", "None", "null", "nan", "ok"]
    delimiter = "\t" if name.endswith(".tsv") else ","
    body = "".join(f"{text}{delimiter}{label}\n" for text, label in zip(texts, "010101", strict=True))
    path = write_file(tmp_path, name, f"text{delimiter}label\n" + body)
    assert load_texts(path) == texts
    data = load_classification(path)
    assert (data.texts, data.label_ids()) == (texts, [0, 1, 0, 1, 0, 1])


def test_a_double_quote_in_a_tsv_is_an_ordinary_character(tmp_path):
    """A .tsv was read with CSV quoting: an open quote ran on to the next line's quote and two examples became
    one ('Hello there\\t1\\nsecond row said he', labelled 0), and a quoted word lost its quotes."""
    rows = [('"Hello there', "1"), ('second row" said he', "0"), ('"Quoted" word', "1"), ("plain", "0")]
    path = write_file(tmp_path, "quotes.tsv", "text\tlabel\n" + "".join(f"{t}\t{label}\n" for t, label in rows))
    data = load_classification(path)
    assert list(zip(data.texts, data.labels, strict=True)) == rows
    assert load_texts(path) == [t for t, _ in rows]


def test_an_americasnli_tsv_reads_as_the_americasnli_reader_reads_it(data_dir):
    path = data_dir / "americasnli" / "data" / "anli_final" / "dev" / "gn.tsv"
    expected = americasnli.load_nli(data_dir, "gn", "dev")
    assert any('"' in e.premise + e.hypothesis for e in expected)
    data = load_classification(path, text_column="premise", pair_column="hypothesis", label_names=americasnli.LABELS)
    assert [text.strip() for text in data.texts] == [e.premise for e in expected]
    assert [text.strip() for text in data.pairs] == [e.hypothesis for e in expected]
    assert data.label_ids() == [e.label for e in expected]


@pytest.mark.parametrize("name", ["numbers.csv", "numbers.tsv"])
def test_a_cell_that_reads_like_a_number_or_a_boolean_is_kept_as_written(tmp_path, name):
    """pandas typed the columns: the texts 007 and 1.50 came back as '7.0' and '1.5', labels true/false as
    'True'/'False' (then refused against the classifier's own names)."""
    texts, labels = ["007", "1.50", "1e3"], ["true", "false", "true"]
    delimiter = "\t" if name.endswith(".tsv") else ","
    body = "".join(f"{text}{delimiter}{label}\n" for text, label in zip(texts, labels, strict=True))
    path = write_file(tmp_path, name, f"text{delimiter}label\n" + body)
    assert load_texts(path) == texts
    data = load_classification(path, label_names=["false", "true"])
    assert (data.texts, data.labels, data.label_ids()) == (texts, labels, [1, 0, 1])


def test_a_header_naming_a_column_twice_is_refused(tmp_path):
    path = write_file(tmp_path, "twice.csv", "text,label,text\na,1,b\n")
    with pytest.raises(ValueError, match=r"twice\.csv: the header names column 'text' twice"):
        load_texts(path)
