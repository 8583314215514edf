"""Revert by content (issue #19): a diff is found among a model's applications by what it changes, not by object.

* The same file loaded twice — one copy applied, the other reverted — reverts bit-exactly.
* A model the diff was merged into and saved elsewhere has no saved originals:
  ``revert(model, exact=False)`` subtracts the diff, warns that this is inexact, and counts
  the entries that differ from the original when the original is given (checked against an
  independent bitwise comparison); dense tensors come back from the original, or are named
  as kept.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from deftx.sft import InexactRevertWarning, SparseDiff, applied, apply_diffs
from tests.sft.helpers import assert_model_equals, random_sft, snapshot


def saved_and_loaded(diff: SparseDiff, path) -> SparseDiff:
    diff.save(path)
    return SparseDiff.load(path)


def differing_entries(model, state) -> int:
    """Entries of every parameter whose bits differ from ``state`` (an independent count)."""
    total = 0
    for name, param in model.named_parameters():
        a = param.detach().reshape(-1).view(torch.int32)
        b = state[name].reshape(-1).view(torch.int32)
        total += int((a != b).sum())
    return total


def test_content_hash_is_what_the_diff_changes(model, tmp_path):
    diff = random_sft(model, 300, head=True)
    loaded = saved_and_loaded(diff, tmp_path / "d.safetensors")
    assert loaded is not diff and loaded.content_hash == diff.content_hash
    relabelled = SparseDiff(diff.indices, diff.values, diff.params, diff.dense, method="other", k=5,
                            info={"task": "x"})
    assert relabelled.content_hash == diff.content_hash, "metadata is not content"
    values = {name: v.clone() for name, v in diff.values.items()}
    first = sorted(values)[0]
    values[first][0] = torch.nextafter(values[first][0], torch.tensor(1.0))
    assert SparseDiff(diff.indices, values, diff.params, diff.dense).content_hash != diff.content_hash


def test_a_diff_loaded_again_from_the_same_file_reverts_exactly(model, tmp_path):
    """The issue's case: SparseDiff.load(p).apply(m); SparseDiff.load(p).revert(m) raised "not applied"."""
    path = tmp_path / "task.safetensors"
    random_sft(model, 300, head=True).save(path)
    theta0 = snapshot(model)
    SparseDiff.load(path).apply(model)
    report = SparseDiff.load(path).revert(model)
    assert report.exact and report.mismatched == 0
    assert_model_equals(model, theta0, "reverted by a second load of the file")
    assert applied(model) == []


def test_revert_by_content_still_goes_in_reverse_order(model, tmp_path):
    first, second = random_sft(model, 200, seed=1), random_sft(model, 200, seed=2)
    first.save(tmp_path / "first.safetensors")
    first.apply(model)
    second.apply(model)
    with pytest.raises(RuntimeError, match="reverse order"):
        SparseDiff.load(tmp_path / "first.safetensors").revert(model)
    second.revert(model)
    SparseDiff.load(tmp_path / "first.safetensors").revert(model)
    assert applied(model) == []


def test_a_diff_applied_with_others_reverts_their_whole_application(model, tmp_path):
    theta0 = snapshot(model)
    lang, task = random_sft(model, 200, seed=1), random_sft(model, 100, seed=2, head=True)
    apply_diffs(model, [lang, task])
    assert saved_and_loaded(task, tmp_path / "t.safetensors").revert(model).entries == lang.nnz + task.nnz
    assert_model_equals(model, theta0)


def merged_elsewhere(model, diff: SparseDiff):
    """What another process would load: the model with the diff merged in (no handle, a new object)."""
    merged = copy.deepcopy(model)
    diff.apply(merged)
    return type(model)(model.config).eval(), merged.state_dict()


def test_exact_revert_of_a_merged_model_is_refused_pointing_to_exact_false(model, tmp_path):
    diff = random_sft(model, 300)
    fresh, state = merged_elsewhere(model, diff)
    fresh.load_state_dict(state)
    with pytest.raises(RuntimeError, match=r"not applied to this model.*exact=False"):
        diff.revert(fresh)


def test_inexact_revert_subtracts_and_counts_the_mismatches_against_the_original(model, tmp_path):
    theta0 = snapshot(model)
    diff = saved_and_loaded(random_sft(model, 2_000, scale=0.3, head=True), tmp_path / "d.safetensors")
    fresh, state = merged_elsewhere(model, diff)
    fresh.load_state_dict(state)
    with pytest.warns(InexactRevertWarning, match=r"reverted by subtraction, not bit-exactly: (\d+) of 2000 entries"):
        report = diff.revert(fresh, exact=False, original=model)
    assert not report.exact and report.entries == 2_000 and report.dense_kept == ()
    assert report.mismatched == differing_entries(fresh, theta0), "the count equals a bitwise comparison"
    assert 0 < report.mismatched < 2_000, "fp32 (w + d) - d differs from w for some entries, not all"
    for name in diff.dense:
        assert torch.equal(fresh.state_dict()[name], theta0[name]), f"dense {name} restored from the original"
    for name, param in fresh.named_parameters():
        torch.testing.assert_close(param.detach(), theta0[name], rtol=0, atol=1e-6)


def test_inexact_revert_without_the_original_says_what_it_cannot_know(model):
    diff = random_sft(model, 300, head=True)
    fresh, state = merged_elsewhere(model, diff)
    fresh.load_state_dict(state)
    with pytest.warns(InexactRevertWarning, match=r"original is unknown.*dense tensors \['classifier.bias'"):
        report = diff.revert(fresh, exact=False)
    assert report.mismatched is None and report.dense_kept == ("classifier.bias", "classifier.weight")
    assert torch.equal(fresh.classifier.weight, state["classifier.weight"]), "kept as merged"


def test_exact_false_reverts_exactly_when_the_originals_are_saved(model):
    theta0 = snapshot(model)
    diff = random_sft(model, 300)
    diff.apply(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error", InexactRevertWarning)
        report = diff.revert(model, exact=False)
    assert report.exact
    assert_model_equals(model, theta0)


@pytest.mark.parametrize("form", ["bare body", "bare body's state dict", "own state dict"])
def test_inexact_revert_takes_the_original_with_or_without_the_body_prefix(model, form):
    """The original as a BertModel (names without ``bert.``) was a KeyError; a diff with no entry in some parameter
    (an empty index tensor) crashed the mismatch count (reshape of 0 elements)."""
    from transformers import BertModel

    theta0 = snapshot(model)
    diff = random_sft(model, 200, scale=0.3)
    assert any(idx.numel() == 0 for idx in diff.indices.values())
    body = BertModel(model.config, add_pooling_layer=True).eval()
    body.load_state_dict(model.bert.state_dict())
    original = {"bare body": body, "bare body's state dict": body.state_dict(),
                "own state dict": model.state_dict()}[form]
    fresh, state = merged_elsewhere(model, diff)
    fresh.load_state_dict(state)
    with pytest.warns(InexactRevertWarning):
        report = diff.revert(fresh, exact=False, original=original)
    assert report.mismatched == differing_entries(fresh, theta0)
    assert 0 < report.mismatched < 200
