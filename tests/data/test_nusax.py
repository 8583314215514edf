"""deftx.data.nusax on the real NusaX files and on small malformed copies."""

from __future__ import annotations

from collections import Counter

import pytest

from deftx.data import nusax
from tests.data.conftest import write_file

ALL_LANGUAGES = [
    "acehnese", "balinese", "banjarese", "buginese", "english", "indonesian",
    "javanese", "madurese", "minangkabau", "ngaju", "sundanese", "toba_batak",
]  # fmt: skip
HELD_OUT = ("buginese", "ngaju", "toba_batak")
ROWS = {"train": 500, "valid": 100, "test": 400}
# label counts per split, read off the files by hand (identical across the parallel languages)
LABEL_COUNTS = {
    "train": {"negative": 192, "neutral": 119, "positive": 189},
    "valid": {"negative": 38, "neutral": 24, "positive": 38},
    "test": {"negative": 153, "neutral": 96, "positive": 151},
}


def test_languages(data_dir):
    assert nusax.sentiment_languages(data_dir) == ALL_LANGUAGES
    assert set(nusax.LANGUAGE_CODES) == set(ALL_LANGUAGES)


@pytest.mark.parametrize("language", ALL_LANGUAGES)
@pytest.mark.parametrize("split", nusax.SPLITS)
def test_sentiment_rows_and_labels(data_dir, language, split):
    if split == "test" and language in HELD_OUT:
        assert not nusax.has_split(data_dir, language, split)
        return
    assert nusax.has_split(data_dir, language, split)
    examples = nusax.load_sentiment(data_dir, language, split)
    assert len(examples) == ROWS[split]
    counts = Counter(nusax.LABELS[e.label] for e in examples)
    assert counts == LABEL_COUNTS[split]
    assert all(e.text and e.text == e.text.strip() for e in examples)
    assert len({e.id for e in examples}) == len(examples)


@pytest.mark.parametrize("language", HELD_OUT)
def test_held_out_test_split_is_refused_clearly(data_dir, language):
    with pytest.raises(FileNotFoundError, match="held out"):
        nusax.load_sentiment(data_dir, language, "test")


def test_ids_are_parallel_across_languages(data_dir):
    english = nusax.load_sentiment(data_dir, "english", "valid")
    javanese = nusax.load_sentiment(data_dir, "javanese", "valid")
    assert [e.id for e in english] == [e.id for e in javanese]
    assert [e.label for e in english] == [e.label for e in javanese]
    assert english[0].text != javanese[0].text


def test_quoted_multiline_text_is_one_stripped_record(data_dir):
    by_id = {e.id: e for e in nusax.load_sentiment(data_dir, "toba_batak", "train")}
    text = by_id["329"].text
    assert text.startswith("Pandapot parjolo") and text.endswith("hulean punten 5 da!")
    assert by_id["329"].label == nusax.LABELS.index("positive")


@pytest.mark.parametrize("language", ALL_LANGUAGES)
def test_mt_text_is_the_sentiment_train_then_valid_text(data_dir, language):
    texts = nusax.load_mt_text(data_dir, language)
    sentiment = [e.text for split in ("train", "valid") for e in nusax.load_sentiment(data_dir, language, split)]
    assert texts == sentiment


def test_mt_single_split_as_string_or_tuple(data_dir):
    assert len(nusax.load_mt_text(data_dir, "madurese", "train")) == 500
    assert len(nusax.load_mt_text(data_dir, "madurese", ("valid",))) == 100


@pytest.mark.parametrize("splits", ["test", ("train", "test"), ["test"]])
def test_mt_refuses_test(data_dir, splits):
    with pytest.raises(ValueError, match="never be trained on"):
        nusax.load_mt_text(data_dir, "acehnese", splits)


def test_mt_bad_inputs(data_dir):
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        nusax.load_mt_text(data_dir, "acehnese", "dev")
    with pytest.raises(ValueError, match="no split requested"):
        nusax.load_mt_text(data_dir, "acehnese", ())
    with pytest.raises(ValueError, match="no column for language 'klingon'"):
        nusax.load_mt_text(data_dir, "klingon")


def _fake_sentiment(root, body):
    return write_file(root, "nusax/datasets/sentiment/xx/train.csv", body)


def test_bad_label_names_file_and_line(tmp_path):
    # the record on lines 2-3 spans two lines, so the bad label is on line 4
    path = _fake_sentiment(tmp_path, 'id,text,label\n1,"two\nlines",positive\n2,fine,angry\n')
    with pytest.raises(ValueError) as info:
        nusax.load_sentiment(tmp_path, "xx", "train")
    assert f"{path}:4:" in str(info.value) and "'angry'" in str(info.value)


def test_an_empty_text_names_file_and_line(tmp_path):
    _fake_sentiment(tmp_path, "id,text,label\n1,  ,positive\n")
    with pytest.raises(ValueError, match=r"train\.csv:2: empty text"):
        nusax.load_sentiment(tmp_path, "xx", "train")


def test_mt_empty_cell_names_file_and_line(tmp_path):
    write_file(tmp_path, "nusax/datasets/mt/train.csv", ",english,xx\n0,hello,halo\n1,bye,\n")
    assert nusax.load_mt_text(tmp_path, "english", "train") == ["hello", "bye"]
    with pytest.raises(ValueError, match=r"mt/train\.csv:3: empty xx text"):
        nusax.load_mt_text(tmp_path, "xx", "train")
