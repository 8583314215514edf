"""deftx.data.americasnlp on the real AmericasNLP 2021 text."""

from __future__ import annotations

import pytest

from deftx.data import americasnli, americasnlp
from tests.data.conftest import write_file

# `wc -l` of each file minus its blank lines (nahuatl train has 82; quechua train is dict.quy)
TRAIN_LINES = {"aym": 6531, "bzd": 7508, "cni": 3883, "gn": 26032, "hch": 8966,
               "nah": 16063, "oto": 4889, "quy": 9643, "shp": 14592, "tar": 14720}  # fmt: skip
DEV_LINES = {"aym": 996, "bzd": 996, "cni": 883, "gn": 995, "hch": 994,
             "nah": 672, "oto": 599, "quy": 996, "shp": 996, "tar": 995}  # fmt: skip


@pytest.mark.parametrize("code", americasnli.LANGUAGES)
def test_line_counts(data_dir, code):
    train = americasnlp.load_text(data_dir, code, "train")
    dev = americasnlp.load_text(data_dir, code, "dev")
    assert len(train) == TRAIN_LINES[code]
    assert len(dev) == DEV_LINES[code]
    assert americasnlp.load_text(data_dir, code) == train + dev
    assert all(t and t == t.strip() and not t.startswith("\ufeff") for t in train + dev)


def test_non_ascii_folder(data_dir):
    path = americasnlp.text_file(data_dir, "oto", "dev")
    assert path.parent.name == "hñähñu-spanish"


def test_quechua_train_is_the_dictionary_file(data_dir):
    assert americasnlp.text_file(data_dir, "quy", "train").name == "dict.quy"


@pytest.mark.parametrize("code", americasnli.LANGUAGES)
def test_no_test_premise_in_the_training_text(data_dir, code):
    # Premises are the test set's source sentences. Two short hypotheses do occur verbatim in
    # dictionary text ("Chaytaqa yacharuniñam." in quy, "Enra ninkati atipanyamake." in shp):
    # everyday phrases, not a leak of the test split.
    text = set(americasnlp.load_text(data_dir, code))
    premises = {e.premise for e in americasnli.load_nli(data_dir, code, "test")} - {""}
    assert not text & premises


@pytest.mark.parametrize("splits", ["test", ("train", "test")])
def test_refuses_test(data_dir, splits):
    with pytest.raises(ValueError, match="never be trained on"):
        americasnlp.load_text(data_dir, "aym", splits)


def test_bad_inputs(data_dir, tmp_path):
    with pytest.raises(ValueError, match="unknown split 'valid'"):
        americasnlp.load_text(data_dir, "aym", "valid")
    with pytest.raises(ValueError, match="unknown AmericasNLI language 'aymara'"):
        americasnlp.load_text(data_dir, "aymara")
    with pytest.raises(FileNotFoundError, match="AmericasNLP 2021 data not found"):
        americasnlp.load_text(tmp_path, "aym")
    write_file(tmp_path, "americasnlp2021/data/aymara-spanish/train.aym", "x\n")
    with pytest.raises(FileNotFoundError, match=r"dev\.aym does not exist"):
        americasnlp.load_text(tmp_path, "aym")


def test_decomposed_folder_name_is_found(tmp_path):
    import unicodedata

    decomposed = unicodedata.normalize("NFD", "hñähñu-spanish")
    write_file(tmp_path, f"americasnlp2021/data/{decomposed}/dev.oto", "\ufeffuno\n\n  dos \n")
    assert americasnlp.load_text(tmp_path, "oto", "dev") == ["uno", "dos"]
