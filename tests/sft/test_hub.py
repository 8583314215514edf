"""Hub-style SFT folders: save_pretrained / from_pretrained (folder, cached repo id offline), card, push_to_hub."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deftx.sft import SparseDiff, SparseDiffFormatError
from deftx.sft.hub import CARD_FILE, CONFIG_FILE, SFT_FILE, HubFolderError
from deftx.sft.sources import open_sft
from tests.helpers import assert_same_entries
from tests.hub_cache import place_in_hub_cache
from tests.sft.tiny import random_diff, tiny_bert

ROOT = Path(__file__).resolve().parents[2]
INFO = {"architecture": "BertForSequenceClassification", "pooling": "cls", "num_labels": 3,
        "labels": ["negative", "neutral", "positive"], "task": "sentiment", "data": "made-up sentences",
        "scores": {"madurese": {"macro_f1": 0.61, "accuracy": 0.7}}}


@pytest.fixture
def diff() -> SparseDiff:
    return random_diff(tiny_bert(), 150, head=True, base_model="org/tiny-bert", method="deft-x", info=INFO)


def assert_same_diff(actual: SparseDiff, expected: SparseDiff) -> None:
    assert (actual.method, actual.k, actual.base_model, actual.info) == (
        expected.method, expected.k, expected.base_model, expected.info)
    assert_same_entries(actual, expected)


def test_folder_holds_the_file_a_config_and_a_card(tmp_path, diff):
    diff.save_pretrained(tmp_path / "sft")
    assert sorted(p.name for p in (tmp_path / "sft").iterdir()) == sorted([SFT_FILE, CONFIG_FILE, CARD_FILE])
    config = json.loads((tmp_path / "sft" / CONFIG_FILE).read_text())
    assert config["base_model"] == "org/tiny-bert" and config["method"] == "deft-x" and config["k"] == 150
    assert config["nnz"] == 150 and config["num_labels"] == 3 and config["labels"] == INFO["labels"]
    assert config["architecture"] == "BertForSequenceClassification" and config["pooling"] == "cls"
    assert config["dense"] == ["classifier.bias", "classifier.weight"]
    card = (tmp_path / "sft" / CARD_FILE).read_text()
    assert card.startswith("---\nlibrary_name: deftx\n") and 'base_model: "org/tiny-bert"' in card
    assert "method: **deft-x**" in card and "**150**" in card and "made-up sentences" in card
    assert "| madurese | 0.61 | 0.7 |" in card and "negative, neutral, positive" in card


def test_folder_round_trip_is_exact(tmp_path, diff):
    diff.save_pretrained(tmp_path / "sft")
    assert_same_diff(SparseDiff.from_pretrained(tmp_path / "sft"), diff)
    assert_same_diff(open_sft(tmp_path / "sft" / SFT_FILE), diff)
    assert_same_diff(open_sft(tmp_path / "sft"), diff)


def test_a_config_that_disagrees_with_the_file_is_refused(tmp_path, diff):
    diff.save_pretrained(tmp_path / "sft")
    config_path = tmp_path / "sft" / CONFIG_FILE
    config = json.loads(config_path.read_text())
    config["k"] = 7
    config_path.write_text(json.dumps(config))
    with pytest.raises(SparseDiffFormatError, match=r"says k = 7, but sft\.safetensors holds 150"):
        SparseDiff.from_pretrained(tmp_path / "sft")


@pytest.mark.parametrize(("key", "value"), [
    ("pooling", "mean"), ("labels", ["positive", "neutral", "negative"]), ("num_labels", 2),
    ("architecture", "BertForMaskedLM"), ("dense", []), ("parameters", 1), ("format", "other"),
])
def test_a_config_that_disagrees_with_the_file_in_any_field_is_refused(tmp_path, diff, key, value):
    diff.save_pretrained(tmp_path / "sft")
    config_path = tmp_path / "sft" / CONFIG_FILE
    config = json.loads(config_path.read_text())
    config[key] = value
    config_path.write_text(json.dumps(config))
    with pytest.raises(SparseDiffFormatError, match=rf"says {key} = "):
        SparseDiff.from_pretrained(tmp_path / "sft")


def test_a_config_that_is_not_utf8_json_is_a_format_error(tmp_path, diff):
    diff.save_pretrained(tmp_path / "sft")
    (tmp_path / "sft" / CONFIG_FILE).write_bytes(b"\xff\xfe{}")
    with pytest.raises(SparseDiffFormatError, match=r"sft_config\.json: not valid JSON .*can't decode byte 0xff"):
        SparseDiff.from_pretrained(tmp_path / "sft")


def test_a_folder_without_the_file_says_what_it_holds(tmp_path):
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    with pytest.raises(SparseDiffFormatError, match="peft adapter folder"):
        SparseDiff.from_pretrained(tmp_path / "adapter")


def test_repo_id_loads_from_the_hub_cache_without_a_network(tmp_path, diff):
    """Offline path only: the files are placed in a Hub cache layout, no request is made."""
    diff.save_pretrained(tmp_path / "sft")
    place_in_hub_cache(tmp_path / "cache", "org/tiny-sft", tmp_path / "sft")
    loaded = SparseDiff.from_pretrained("org/tiny-sft", cache_dir=tmp_path / "cache", local_files_only=True)
    assert_same_diff(loaded, diff)


def test_repo_id_loads_with_hf_hub_offline(tmp_path, diff):
    """As a user would after one download: HF_HUB_OFFLINE=1 and the default cache variable."""
    diff.save_pretrained(tmp_path / "sft")
    place_in_hub_cache(tmp_path / "cache", "org/tiny-sft", tmp_path / "sft")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")}
    code = ("from deftx.sft import SparseDiff; s = SparseDiff.from_pretrained('org/tiny-sft'); "
            "print(s.method, s.nnz, s.base_model)")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["deft-x", "150", "org/tiny-bert"]


def test_an_uncached_repo_id_offline_is_a_clear_error(tmp_path):
    with pytest.raises(HubFolderError, match="not a local folder, and the Hub repository could not be reached"):
        SparseDiff.from_pretrained("org/never-downloaded", cache_dir=tmp_path / "cache", local_files_only=True)


def test_push_to_hub_creates_the_repo_and_uploads_the_folder(monkeypatch, diff):
    """No network here: HfApi is replaced by a recorder; what it is handed is checked."""
    import huggingface_hub

    calls = []

    class RecordingApi:
        def __init__(self, token=None):
            calls.append(("init", token))

        def create_repo(self, repo_id, **options):
            calls.append(("create_repo", repo_id, options))

        def upload_folder(self, *, repo_id, folder_path, **options):
            folder = Path(folder_path)
            uploaded = SparseDiff.from_pretrained(folder)
            calls.append(("upload_folder", repo_id, sorted(p.name for p in folder.iterdir()), uploaded.nnz,
                          f"from_pretrained('{repo_id}')" in (folder / CARD_FILE).read_text()))
            return type("Commit", (), {"commit_url": "https://hub.example/commit/1"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", RecordingApi)
    url = diff.push_to_hub("org/tiny-sft", token="secret", private=True)
    assert url == "https://hub.example/commit/1"
    assert calls[0] == ("init", "secret")
    assert calls[1][:2] == ("create_repo", "org/tiny-sft") and calls[1][2]["private"] is True
    assert calls[2] == ("upload_folder", "org/tiny-sft", sorted([SFT_FILE, CONFIG_FILE, CARD_FILE]), 150, True)


@pytest.mark.parametrize(("base_model", "card_base_model"), [
    ("org/tiny-bert", "org/tiny-bert"),
    ("/root/.cache/deftx/models/multilingual-e5-small", None),
    ("./runs/plain-bert", None),
    ("~/models/xlmr", None),
])
def test_the_card_names_a_base_model_only_by_its_hub_id(base_model, card_base_model):
    """The pipeline records its base as a local folder; the card's front matter gave it as ``base_model``, which
    the Hub refuses (not a model id), so push_to_hub failed after creating the repository, and the card showed
    the machine's path. The front matter is read back with huggingface_hub's own ModelCard."""
    from huggingface_hub import ModelCard
    from huggingface_hub.utils import validate_repo_id

    from deftx.sft.hub import model_card

    card = ModelCard(model_card(random_diff(tiny_bert(), 20, base_model=base_model)))
    assert card.data.base_model == card_base_model
    if card.data.base_model is not None:
        validate_repo_id(card.data.base_model)


def test_info_survives_save_load_and_compose(tmp_path, diff):
    lang = random_diff(tiny_bert(), 50, seed=5, base_model="org/tiny-bert", info={"architecture": "BertForMaskedLM"})
    diff.save(tmp_path / "a.safetensors")
    assert SparseDiff.load(tmp_path / "a.safetensors").info == INFO
    from deftx.sft import compose

    assert compose(lang, diff).info == INFO
    assert compose(lang).info == {"architecture": "BertForMaskedLM"}


def test_files_written_before_info_existed_load_with_empty_info(tmp_path, diff):
    from safetensors import safe_open
    from safetensors.torch import save_file

    diff.save(tmp_path / "new.safetensors")
    with safe_open(str(tmp_path / "new.safetensors"), framework="pt") as handle:
        # files of that time had neither "info" nor the content digest
        metadata = {k: v for k, v in handle.metadata().items() if k not in ("info", "sha256")}
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}  # noqa: SIM118
    save_file(tensors, str(tmp_path / "old.safetensors"), metadata=metadata)
    old = SparseDiff.load(tmp_path / "old.safetensors")
    assert old.info == {} and old.nnz == diff.nnz and torch.equal(old.values[diff.names[0]], diff.values[diff.names[0]])
