"""What a SparseDiff refuses, at construction and at load: every malformed file is a SparseDiffFormatError."""

from __future__ import annotations

import json
import math

import pytest
import torch

from deftx.sft import (
    ParamInfo,
    SparseDiff,
    SparseDiffFormatError,
    applied,
    apply_diffs,
    compose,
    count_rounding_loss,
    prepare_composition,
)
from tests.sft.helpers import assert_model_equals, assert_rewrite_refused, random_sft, rewrite, snapshot

POOLER = "bert.pooler.dense.weight"
INFO = {"w": ParamInfo((3,), torch.float32)}


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_values_are_refused_at_construction(bad):
    with pytest.raises(ValueError, match=r"values\['w'\] \(shape \(2,\)\) contains 1 NaN/Inf"):
        SparseDiff({"w": torch.tensor([0, 2])}, {"w": torch.tensor([1.0, bad])}, INFO)
    with pytest.raises(ValueError, match=r"dense\['head'\] \(shape \(2, 2\)\) contains 1 NaN/Inf"):
        SparseDiff({}, {}, {}, dense={"head": torch.tensor([[0.0, bad], [1.0, 2.0]])})


@pytest.mark.parametrize("where", ["values", "dense"])
def test_non_finite_values_are_refused_at_load(tmp_path, model, where):
    path = tmp_path / "sft.safetensors"
    random_sft(model, 100, head=True).save(path)

    def poison(tensors, meta):
        key = f"values/{POOLER}" if where == "values" else "dense/classifier.bias"
        tensors[key] = tensors[key].clone()
        tensors[key][0] = math.nan

    rewrite(path, poison)
    name = POOLER if where == "values" else "classifier.bias"
    with pytest.raises(SparseDiffFormatError, match=rf"{where}\['{name}'\] \(shape .*\) contains 1 NaN/Inf"):
        SparseDiff.load(path)


def test_a_parameter_cannot_be_sparse_and_dense_in_one_diff(tmp_path, model):
    with pytest.raises(ValueError, match="'w' is both sparse"):
        SparseDiff({"w": torch.tensor([0])}, {"w": torch.ones(1)}, INFO, dense={"w": torch.zeros(3)})
    path = tmp_path / "sft.safetensors"
    random_sft(model, 100).save(path)
    rewrite(path, lambda t, m: t.update({f"dense/{POOLER}": torch.zeros(16, 16)}))
    with pytest.raises(SparseDiffFormatError, match="both sparse"):
        SparseDiff.load(path)


def test_meta_tensors_are_refused_before_any_item_call():
    with pytest.raises(ValueError, match=r"values\['w'\] is a meta tensor"):
        SparseDiff({"w": torch.tensor([0])}, {"w": torch.ones(1, device="meta")}, INFO)
    with pytest.raises(ValueError, match=r"indices\['w'\] is a meta tensor"):
        SparseDiff({"w": torch.tensor([0], device="meta")}, {"w": torch.ones(1)}, INFO)


def test_meta_model_parameters_are_refused_before_any_write(model):
    diff = random_sft(model, 50)
    meta_model = type(model)(model.config).to("meta")
    with pytest.raises(ValueError, match="is a meta tensor"):
        apply_diffs(meta_model, [diff])


@pytest.mark.parametrize(
    ("indices", "values", "error", "match"),
    [
        (torch.tensor([0.0, 1.0]), torch.ones(2), TypeError, "indices.*dtype torch.float32"),
        (torch.tensor([0, 1]), torch.tensor([1, 2]), TypeError, "values.*dtype torch.int64"),
        ([0, 1], torch.ones(2), TypeError, "not a torch.Tensor"),
    ],
)
def test_constructor_refuses_wrong_types_instead_of_converting(indices, values, error, match):
    with pytest.raises(error, match=match):
        SparseDiff({"w": indices}, {"w": values}, INFO)


@pytest.mark.parametrize("info", [ParamInfo((3.0,), torch.float32), ParamInfo((3,), torch.int64), (3,)])
def test_constructor_refuses_bad_param_records(info):
    with pytest.raises((TypeError, ValueError), match="params"):
        SparseDiff({"w": torch.tensor([0])}, {"w": torch.ones(1)}, {"w": info})


def _nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def _set_params(meta, name, record):
    params = json.loads(meta["params"])
    params[name] = record
    meta["params"] = json.dumps(params)


METADATA_MUTATIONS = [
    ("format_version superscript two", lambda m: m.update(format_version="²"), "format version"),
    ("format_version 0", lambda m: m.update(format_version="0"), "format version"),
    ("format_version with spaces", lambda m: m.update(format_version=" 1"), "format version"),
    ("k superscript two", lambda m: m.update(k="²"), "'k'"),
    ("k with 5000 digits", lambda m: m.update(k="9" * 5000), "'k'"),
    ("k negative", lambda m: m.update(k="-1"), "'k'"),
    ("deeply nested settings", lambda m: m.update(settings=_nested(100_000)), "nested too deeply"),
    ("deeply nested params", lambda m: m.update(params=_nested(100_000)), "nested too deeply"),
    ("settings not an object", lambda m: m.update(settings="[1, 2]"), "'settings' must be"),
    ("params not an object", lambda m: m.update(params="[]"), "'params' must be"),
    ("duplicate JSON keys", lambda m: m.update(params=m["params"][:-1] + ', "a": 1, "a": 2}'), "duplicate key"),
    ("shape 1e400", lambda m: _set_params(m, POOLER, {"shape": [1e400], "dtype": "float32"}), "shape/dtype"),
    ("shape 16.9 x 16.9", lambda m: _set_params(m, POOLER, {"shape": [16.9, 16.9], "dtype": "float32"}),
     "shape/dtype"),
    ("shape of booleans", lambda m: _set_params(m, POOLER, {"shape": [True, 16], "dtype": "float32"}), "shape/dtype"),
    ("negative size", lambda m: _set_params(m, POOLER, {"shape": [-16, -16], "dtype": "float32"}), "shape/dtype"),
    ("shape a string", lambda m: _set_params(m, POOLER, {"shape": "16,16", "dtype": "float32"}), "shape/dtype"),
    ("unknown dtype", lambda m: _set_params(m, POOLER, {"shape": [16, 16], "dtype": "int8"}), "shape/dtype"),
    ("record a list", lambda m: _set_params(m, POOLER, [16, 16]), "shape/dtype"),
    ("2**64 entries", lambda m: _set_params(m, POOLER, {"shape": [2**32, 2**32], "dtype": "float32"}),
     "more than 2\\*\\*63"),
    ("empty parameter name", lambda m: _set_params(m, "", {"shape": [1], "dtype": "float32"}), "empty parameter"),
    ("format missing", lambda m: m.pop("format"), "not a SparseDiff"),
]


@pytest.mark.parametrize(("mutate", "match"), [pytest.param(f, m, id=i) for i, f, m in METADATA_MUTATIONS])
def test_malformed_metadata_is_a_format_error(tmp_path, model, mutate, match):
    path = tmp_path / "sft.safetensors"
    random_sft(model, 100).save(path)
    rewrite(path, lambda tensors, meta: mutate(meta))
    with pytest.raises(SparseDiffFormatError, match=match):
        SparseDiff.load(path)


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda t, m: t.update({"indices/": torch.zeros(1, dtype=torch.int32), "values/": torch.ones(1)}),
         "unexpected tensor"),
        (lambda t, m: t.update({"dense/classifier.weight": torch.zeros(3, 16, dtype=torch.int32)}), "dtype"),
        (lambda t, m: t.update({f"indices/{POOLER}": torch.zeros(1, 1, dtype=torch.int32),
                                f"values/{POOLER}": torch.ones(1)}), "1-D"),
        (lambda t, m: t.update({f"values/{POOLER}": torch.ones(())}), "values for"),
    ],
)
def test_malformed_tensors_are_a_format_error(tmp_path, model, mutate, match):
    assert_rewrite_refused(tmp_path, model, mutate, match)


def test_a_changed_byte_is_refused_by_the_digest(tmp_path, model):
    path = tmp_path / "sft.safetensors"
    diff = random_sft(model, 100)
    diff.save(path)
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x01  # one bit of the last value
    path.write_bytes(bytes(data))
    with pytest.raises(SparseDiffFormatError, match="does not match its sha256"):
        SparseDiff.load(path)
    rewrite(path, lambda t, m: m.update(base_model="another-model"), sign=False)
    with pytest.raises(SparseDiffFormatError, match="does not match its sha256"):
        SparseDiff.load(path)


def test_a_renamed_digest_field_is_refused_not_taken_for_a_file_without_one(tmp_path, model):
    """One changed byte of the key ``sha256`` must not turn the digest check off for the rest of the file."""
    path = tmp_path / "sft.safetensors"
    random_sft(model, 100).save(path)
    data = bytearray(path.read_bytes())
    data[data.index(b'"sha256"') + 6] = ord("7")  # "sha257"
    data[-3] ^= 0x01  # and one bit of the last value
    path.write_bytes(bytes(data))
    with pytest.raises(SparseDiffFormatError, match="metadata field 'sha257' is not one a SparseDiff holds"):
        SparseDiff.load(path)


def test_files_without_a_digest_still_load(tmp_path, model):
    path = tmp_path / "sft.safetensors"
    diff = random_sft(model, 100)
    diff.save(path)
    rewrite(path, lambda t, m: m.pop("sha256"), sign=False)
    assert SparseDiff.load(path).nnz == diff.nnz


@pytest.mark.parametrize("bad", [math.nan, math.inf, "1.0", True, 1e39, -3.5e38])
def test_non_finite_or_non_numeric_scales_are_refused(model, bad):
    diff = random_sft(model, 50)
    original = snapshot(model)
    with pytest.raises(ValueError, match="scales must be finite numbers"):
        diff.apply(model, scale=bad)
    with pytest.raises(ValueError, match="scales must be finite numbers"):
        apply_diffs(model, [diff, diff], [1.0, bad])
    with pytest.raises(ValueError, match="scales must be finite numbers"):
        compose(diff, diff, scales=[bad, 1.0])
    assert_model_equals(model, original)


def test_compose_refuses_a_parameter_dense_in_one_diff_and_sparse_in_another(model):
    sparse = random_sft(model, 50)
    dense = SparseDiff({}, {}, {}, dense={POOLER: torch.zeros(16, 16)})
    with pytest.raises(ValueError, match="dense in one diff and sparse in another"):
        compose(sparse, dense)


@pytest.mark.parametrize("field", ["info", "settings"])
@pytest.mark.parametrize("value, where", [
    ({1: "positive"}, "1"),
    ({"id2label": {0: "no", 1: "yes"}}, "'id2label'"),
    ({"scores": [{"f1": 0.5, 2: 0.1}]}, "'scores'"),
    ({"scores": torch.tensor(0.5)}, "'scores'"),
])
def test_metadata_that_json_would_change_or_cannot_hold_is_refused_at_construction(field, value, where):
    """JSON turns the key 1 into "1": such an info or settings dict used to come back from save/load with other
    keys than it was made with (and a tensor in it failed only at save, after training)."""
    with pytest.raises(TypeError, match=f"SparseDiff {field}.*{where}"):
        SparseDiff({}, {}, {}, **{field: value})


def test_metadata_round_trips_equal(tmp_path):
    info = {"labels": ["no", "yes"], "num_labels": 2, "scores": {"f1": 0.25, "ok": True, "note": None}}
    settings = {"lr": 1e-4, "layers": [0, 1], "nested": {"a": {"b": -3}}}
    path = tmp_path / "sft.safetensors"
    SparseDiff({}, {}, {}, info=info, settings=settings).save(path)
    loaded = SparseDiff.load(path)
    assert (loaded.info, loaded.settings) == (info, settings)


def test_metadata_changed_after_construction_is_refused_at_save(tmp_path):
    diff = SparseDiff({}, {}, {})
    diff.info[0] = "first"
    with pytest.raises(TypeError, match="SparseDiff info: key 0 is int"):
        diff.save(tmp_path / "sft.safetensors")
    assert not (tmp_path / "sft.safetensors").exists()


def _two_linears(weight: torch.Tensor) -> torch.nn.Module:
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    model[0].weight = torch.nn.Parameter(weight)
    return model


@pytest.mark.parametrize("weight, error, match", [
    (torch.arange(12.0).reshape(4, 3).t(), ValueError, "'0.weight'.*not contiguous"),
    (torch.arange(12.0, dtype=torch.float64).reshape(3, 4), TypeError, "'0.weight'.*float64"),
])
def test_a_sparse_target_the_scatter_cannot_write_is_refused_before_any_write(weight, error, match):
    """The dense tensors used to be written before the scatter refused the parameter (as 'dense tensor 0'): the
    model was left changed, with no handle to revert it."""
    model = _two_linears(weight)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    diff = SparseDiff({"0.weight": torch.tensor([1])}, {"0.weight": torch.tensor([100.0])},
                      {"0.weight": ParamInfo((3, 4), weight.dtype)}, dense={"1.bias": torch.tensor([5.0, 6.0])})
    for attempt in (apply_diffs, count_rounding_loss, prepare_composition):
        with pytest.raises(error, match=match):
            attempt(model, [diff], strict_dtype=False)
    for name, p in model.named_parameters():
        assert torch.equal(p.detach(), before[name]), name
    assert applied(model) == []
