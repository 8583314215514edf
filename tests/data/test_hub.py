"""deftx.data.hub: importable, clear offline errors, and row conversion (Hub mocked, no network)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from deftx.data import hub
from deftx.data.americasnli import NLIExample
from deftx.data.nusax import SentimentExample


class FakeSplit(list):
    """A list of rows with a ``features`` mapping, like a ``datasets.Dataset``."""

    def __init__(self, rows, label_names):
        super().__init__(rows)
        self.features = {"label": SimpleNamespace(names=label_names)}


@pytest.fixture(autouse=True)
def online(monkeypatch):
    for name in hub.OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize("variable", hub.OFFLINE_VARIABLES)
def test_offline_a_copy_in_the_datasets_cache_is_read(monkeypatch, variable):
    """An offline variable was refused before datasets was asked, so a Hub copy already in the datasets cache
    (which datasets reads offline) could not be loaded."""
    monkeypatch.setenv(variable, "1")
    monkeypatch.setattr(hub, "_load_dataset", lambda *a: FakeSplit([{"id": "3", "text": "ok", "label": 1}],
                                                                   ["negative", "neutral", "positive"]))
    assert hub.load_sentiment_hub("acehnese", "train") == [SentimentExample("ok", 1, "3")]


@pytest.mark.parametrize("variable", hub.OFFLINE_VARIABLES)
def test_offline_without_a_cached_copy_gives_a_clear_error(monkeypatch, variable):
    def not_cached(repo, config, split):
        raise ConnectionError(f"Couldn't reach '{repo}' on the Hub (offline mode is enabled)")

    monkeypatch.setenv(variable, "1")
    monkeypatch.setattr(hub, "_load_dataset", not_cached)
    with pytest.raises(hub.HubUnavailableError) as info:
        hub.load_sentiment_hub("acehnese", "train")
    message = str(info.value)
    assert "indonlp/NusaX-senti" in message and "'ace'" in message
    assert f"${variable} is set and the datasets cache holds no copy" in message
    assert "deftx.data.nusax.load_sentiment" in message
    with pytest.raises(hub.HubUnavailableError, match=r"deftx\.data\.americasnli\.load_nli"):
        hub.load_nli_hub("aym", "dev")


def test_network_failure_is_wrapped(monkeypatch):
    def unreachable(repo, config, split):
        raise ConnectionError(f"Couldn't reach '{repo}' on the Hub")

    monkeypatch.setattr(hub, "_load_dataset", unreachable)
    with pytest.raises(hub.HubUnavailableError, match="ConnectionError: Couldn't reach 'americas_nli'") as info:
        hub.load_nli_hub("gn", "test")
    assert isinstance(info.value.__cause__, ConnectionError)


def test_sentiment_rows_convert_through_label_names(monkeypatch):
    calls = []

    def fake(repo, config, split):
        calls.append((repo, config, split))
        # the Hub's label order may differ from deftx's: names, not integers, are mapped
        return FakeSplit(
            [{"id": "7", "text": " good \n", "label": 0}, {"id": "8", "text": "meh", "label": 2}],
            ["positive", "negative", "neutral"],
        )

    monkeypatch.setattr(hub, "_load_dataset", fake)
    examples = hub.load_sentiment_hub("toba_batak", "valid")
    assert calls == [("indonlp/NusaX-senti", "bbc", "validation")]
    assert examples == [SentimentExample("good", 2, "7"), SentimentExample("meh", 1, "8")]


def test_nli_rows_convert(monkeypatch):
    monkeypatch.setattr(
        hub,
        "_load_dataset",
        lambda repo, config, split: FakeSplit(
            [{"premise": "p", "hypothesis": "h", "label": 2}], ["entailment", "neutral", "contradiction"]
        ),
    )
    assert hub.load_nli_hub("oto", "dev") == [NLIExample("p", "h", 2, "0", "oto")]


def test_unknown_label_is_an_error(monkeypatch):
    monkeypatch.setattr(
        hub, "_load_dataset", lambda *a: FakeSplit([{"text": "x", "label": 0}], ["mixed", "neutral", "positive"])
    )
    with pytest.raises(ValueError, match="row 0: label 0 is not one of"):
        hub.load_sentiment_hub("english", "test")


@pytest.mark.parametrize("raw", [-1, 3])
def test_a_class_id_outside_the_class_label_is_an_error_not_a_class(monkeypatch, raw):
    """datasets marks an unlabelled row -1: Python indexing made it the last class (positive, contradiction)."""
    sentiment = FakeSplit([{"text": "x", "label": raw}], ["negative", "neutral", "positive"])
    monkeypatch.setattr(hub, "_load_dataset", lambda *a: sentiment)
    with pytest.raises(ValueError, match=f"row 0: label {raw} is not one of negative, neutral, positive"):
        hub.load_sentiment_hub("english", "test")
    nli = FakeSplit([{"premise": "p", "hypothesis": "h", "label": raw}], ["entailment", "neutral", "contradiction"])
    monkeypatch.setattr(hub, "_load_dataset", lambda *a: nli)
    with pytest.raises(ValueError, match=f"row 0: label {raw} is not one of entailment"):
        hub.load_nli_hub("aym", "test")


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown NusaX language"):
        hub.load_sentiment_hub("ace", "train")
    with pytest.raises(ValueError, match="unknown split 'dev2'"):
        hub.load_sentiment_hub("english", "dev2")
    with pytest.raises(ValueError, match="unknown split 'train'"):
        hub.load_nli_hub("aym", "train")
    with pytest.raises(ValueError, match="unknown AmericasNLI language"):
        hub.load_nli_hub("xx", "dev")


@pytest.mark.parametrize("text", [None, "   ", 7])
def test_a_row_without_text_is_an_error_not_the_text_none(monkeypatch, text):
    """A missing text came back as the sentence "None" (str(None)); the local readers refuse empty text."""
    rows = [{"text": "fine", "label": 0}, {"text": text, "label": 0}]
    sentiment = FakeSplit(rows, ["negative", "neutral", "positive"])
    monkeypatch.setattr(hub, "_load_dataset", lambda *a: sentiment)
    with pytest.raises(ValueError, match=f"row 1: text {text!r} is no text"):
        hub.load_sentiment_hub("english", "train")
    nli = FakeSplit([{"premise": "p", "hypothesis": text, "label": 0}], ["entailment", "neutral", "contradiction"])
    monkeypatch.setattr(hub, "_load_dataset", lambda *a: nli)
    with pytest.raises(ValueError, match=f"row 0: hypothesis {text!r} is no text"):
        hub.load_nli_hub("aym", "dev")
