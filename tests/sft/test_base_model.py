"""The base-model check of apply / revert: a diff fits a model recorded under the same name, a local
folder by its last path component wherever it lies, and a model saved with diffs applied keeps the
name of its base; a diff for another base is refused, naming both, with what skips the check."""

from __future__ import annotations

import warnings

import pytest
from transformers import BertForSequenceClassification

from deftx.sft import BaseModelMismatchError, InexactRevertWarning, SparseDiff, apply_diffs
from deftx.sft.apply import same_base_model
from tests.sft.helpers import assert_model_equals, random_sft, snapshot


@pytest.mark.parametrize(
    ("recorded", "model_id", "fits"),
    [
        ("tiny-bert", "tiny-bert", True),
        ("org/encoder", "org/encoder", True),
        ("org/encoder", "other-org/encoder", False),  # two Hub ids: the names must be equal
        ("encoder", "org/encoder", False),
        ("/root/.cache/deftx/models/multilingual-e5-small", "/home/u/.cache/deftx/models/multilingual-e5-small", True),
        ("/root/.cache/deftx/models/multilingual-e5-small", "/home/u/models/xlm-roberta-base", False),
        ("./my-classifier/", "/runs/eco4/my-classifier", True),
        ("~/models/a", "~/models/b", False),
    ],
)
def test_same_base_model(recorded, model_id, fits):
    assert same_base_model(recorded, model_id) is fits
    assert same_base_model(model_id, recorded) is fits


def test_a_folder_fits_from_another_working_directory(model, tmp_path, monkeypatch):
    """Recorded as ``my-classifier`` in its parent folder, loaded as ``eco4/my-classifier`` one level up."""
    folder = tmp_path / "eco4" / "my-classifier"
    folder.mkdir(parents=True)
    diff = random_sft(model, 50)
    diff.base_model = "my-classifier"
    monkeypatch.chdir(tmp_path)
    model.config.deftx_base_model = None
    model.config._name_or_path = "eco4/my-classifier"
    with apply_diffs(model, [diff]):
        pass


def test_another_base_is_refused_naming_both_and_the_way_round(model):
    diff = random_sft(model, 50)
    diff.base_model = "org/other-encoder"
    original = snapshot(model)
    with pytest.raises(BaseModelMismatchError, match=r"made for base model 'org/other-encoder', the model is "
                                                     r"'tiny-bert' \(pass check_base=False to apply anyway\)"):
        apply_diffs(model, [diff])
    assert_model_equals(model, original)
    with pytest.raises(BaseModelMismatchError, match=r"check_base=False to revert anyway"), warnings.catch_warnings():
        warnings.simplefilter("ignore", InexactRevertWarning)
        diff.revert(model, exact=False)
    assert_model_equals(model, original)
    with apply_diffs(model, [diff], check_base=False):
        pass
    assert_model_equals(model, original)


def test_a_model_saved_with_a_diff_applied_keeps_its_base_name(model, tmp_path):
    """The README's merged-and-saved model: loaded from its save folder, it is still checked as its base,
    so the task SFT subtracts from it and a second SFT of the same base applies."""
    model.config.deftx_base_model = None
    model.config._name_or_path = "org/tiny-bert"
    task = random_sft(model, 200, head=True)
    task.base_model = "org/tiny-bert"
    other = random_sft(model, 100, seed=1)
    other.base_model = "org/tiny-bert"
    apply_diffs(model, [task])
    assert model.config.deftx_base_model == "org/tiny-bert"
    model.save_pretrained(tmp_path / "merged")
    loaded = BertForSequenceClassification.from_pretrained(tmp_path / "merged")
    assert loaded.config._name_or_path.endswith("merged") and loaded.config.deftx_base_model == "org/tiny-bert"
    with apply_diffs(loaded, [other]):
        pass
    with pytest.warns(InexactRevertWarning):
        task.revert(loaded, exact=False)


def test_a_diff_without_a_recorded_base_fits_any_model(model):
    diff = random_sft(model, 50)
    bare = SparseDiff(diff.indices, diff.values, diff.params)
    with apply_diffs(model, [bare]):
        pass
