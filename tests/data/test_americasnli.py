"""deftx.data.americasnli on the real AmericasNLI files and on small malformed copies."""

from __future__ import annotations

from collections import Counter

import pytest

from deftx.data import americasnli
from tests.data.conftest import write_file

# rows per file = `wc -l` minus the header line
ROWS = {
    "dev": {"aym": 743, "bzd": 743, "cni": 658, "gn": 743, "hch": 743,
            "nah": 585, "oto": 222, "quy": 743, "shp": 743, "tar": 743},
    "test": {"aym": 750, "bzd": 750, "cni": 750, "gn": 750, "hch": 750,
             "nah": 738, "oto": 748, "quy": 750, "shp": 750, "tar": 750},
}  # fmt: skip
HEADER = "id\tlanguage\tpremise\thypothesis\tlabel\n"


@pytest.mark.parametrize("split", americasnli.SPLITS)
@pytest.mark.parametrize("language", americasnli.LANGUAGES)
def test_rows_and_labels(data_dir, language, split):
    examples = americasnli.load_nli(data_dir, language, split)
    assert len(examples) == ROWS[split][language]
    assert {e.label for e in examples} == {0, 1, 2}
    assert all(e.language == language and e.hypothesis for e in examples)
    counts = Counter(e.label for e in examples)
    assert max(counts.values()) - min(counts.values()) <= 10


def test_label_balance_by_hand(data_dir):
    counts = Counter(americasnli.LABELS[e.label] for e in americasnli.load_nli(data_dir, "aym", "test"))
    assert counts == {"entailment": 250, "neutral": 250, "contradiction": 250}


def test_quotes_are_literal_characters(data_dir):
    by_id = {e.id: e for e in americasnli.load_nli(data_dir, "aym", "dev")}
    assert '"güis"' in by_id["12661"].premise
    assert americasnli.LABELS[by_id["12661"].label] == "neutral"
    nah = {e.id: e for e in americasnli.load_nli(data_dir, "nah", "test")}
    assert nah["25073"].hypothesis == 'Axquema nitequimachiltoc ica U"'


def test_published_blank_premises_are_kept(data_dir):
    blank = [e.id for e in americasnli.load_nli(data_dir, "nah", "test") if not e.premise]
    assert blank == ["25576", "25577", "25578"]


def _fake(root, body):
    return write_file(root, "americasnli/data/anli_final/dev/aym.tsv", HEADER + body)


def test_quote_at_field_start_does_not_swallow_lines(tmp_path):
    _fake(tmp_path, '1\taym\t"open quote\thyp one\tneutral\n2\taym\tp2\thyp "two"\tentailment\n')
    examples = americasnli.load_nli(tmp_path, "aym", "dev")
    assert [(e.premise, e.hypothesis, e.label) for e in examples] == [
        ('"open quote', "hyp one", 1),
        ("p2", 'hyp "two"', 0),
    ]


def test_errors_name_file_and_line(tmp_path):
    path = _fake(tmp_path, "1\taym\tp\th\tneutral\n2\taym\tp\th\tmaybe\n")
    with pytest.raises(ValueError) as info:
        americasnli.load_nli(tmp_path, "aym", "dev")
    assert f"{path}:3:" in str(info.value) and "'maybe'" in str(info.value)
    _fake(tmp_path, "1\tgn\tp\th\tneutral\n")
    with pytest.raises(ValueError, match=r"aym\.tsv:2: row language 'gn'"):
        americasnli.load_nli(tmp_path, "aym", "dev")
