"""Parameter names with and without the body's base_model_prefix mean one parameter at every entry point:
apply_diffs, prepare_composition, compose (between diffs) and the held-out scorer; a name the model lacks is
an error naming it, the model untouched."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForSequenceClassification, BertModel

from deftx.sft import ParamInfo, SparseDiff, apply_diffs, compose, prepare_composition
from tests.sft.helpers import assert_model_equals, snapshot, tiny_config

QUERY = "encoder.layer.0.attention.self.query.weight"
POOLER = "pooler.dense.weight"


def one_entry_diff(name: str, indices: list[int], values: list[float]) -> SparseDiff:
    return SparseDiff({name: torch.tensor(indices)}, {name: torch.tensor(values)},
                      {name: ParamInfo((16, 16), torch.float32)})


def with_prefix() -> SparseDiff:
    return one_entry_diff(f"bert.{QUERY}", [0, 5], [0.25, 0.5])


def without_prefix() -> SparseDiff:
    return one_entry_diff(QUERY, [5, 7], [1.0, -2.0])


def query_of(model) -> torch.Tensor:
    return model.get_parameter(f"bert.{QUERY}" if hasattr(model, "bert") else QUERY).detach()


def added(weight: torch.Tensor, steps: list[tuple[int, float]]) -> torch.Tensor:
    """Plain torch: ``weight`` (float32) with each (flat index, value) added in turn, one rounding per add."""
    flat = weight.clone().reshape(-1)
    for index, value in steps:
        flat[index] += value
    return flat.view(weight.shape)


@pytest.fixture(params=["classifier", "body"])
def bert(request):
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config()) if request.param == "classifier" else BertModel(tiny_config())
    return model.eval()


def test_compose_sums_a_parameter_named_with_and_without_the_prefix_into_one_entry():
    """compose kept both names, so its result named the query twice and every apply refused it."""
    both = compose(with_prefix(), without_prefix())
    assert list(both.indices) == [f"bert.{QUERY}"]
    assert both.indices[f"bert.{QUERY}"].tolist() == [0, 5, 7]
    assert both.values[f"bert.{QUERY}"].tolist() == [0.25, 1.5, -2.0]
    assert compose(without_prefix(), with_prefix(), scales=[2.0, 1.0]).values[f"bert.{QUERY}"].tolist() == [
        0.25, 2.5, -4.0]


@pytest.mark.parametrize("entry", ["apply_diffs", "prepare_composition", "compose"])
def test_every_entry_point_adds_both_forms_onto_the_one_parameter(bert, entry):
    before = snapshot(bert)
    steps = [(0, 0.25), (5, 1.5), (7, -2.0)] if entry == "compose" else [(0, 0.25), (5, 0.5), (5, 1.0), (7, -2.0)]
    expected = added(query_of(bert), steps)
    diffs = [with_prefix(), without_prefix()]
    if entry == "apply_diffs":
        handle = apply_diffs(bert, diffs)
    elif entry == "prepare_composition":
        handle = prepare_composition(bert, diffs).apply()
    else:
        handle = apply_diffs(bert, [compose(*diffs)])
    torch.testing.assert_close(query_of(bert), expected, rtol=0, atol=0)
    handle.revert()
    assert_model_equals(bert, before)


def test_one_diff_naming_a_parameter_both_ways_is_refused_by_compose_as_by_apply(bert):
    twice = SparseDiff({QUERY: torch.tensor([1]), f"bert.{QUERY}": torch.tensor([2])},
                       {QUERY: torch.ones(1), f"bert.{QUERY}": torch.ones(1)},
                       {QUERY: ParamInfo((16, 16), torch.float32), f"bert.{QUERY}": ParamInfo((16, 16), torch.float32)})
    with pytest.raises(ValueError, match=f"SparseDiff 0 names parameter 'bert.{QUERY}' twice"):
        compose(twice)
    with pytest.raises(ValueError, match=r"names parameter .* twice"):
        apply_diffs(bert, [twice])


def test_compose_refuses_a_dense_tensor_shipped_under_both_forms():
    gen = torch.Generator().manual_seed(0)
    a = SparseDiff({}, {}, {}, dense={POOLER: torch.randn(16, 16, generator=gen)})
    b = SparseDiff({}, {}, {}, dense={f"bert.{POOLER}": torch.randn(16, 16, generator=gen)})
    with pytest.raises(ValueError, match=f"dense tensor 'bert.{POOLER}' is shipped by more than one diff"):
        compose(a, b)
    sparse = one_entry_diff(f"bert.{POOLER}", [3], [1.0])
    with pytest.raises(ValueError, match=f"'bert.{POOLER}' is dense in one diff and sparse in another"):
        compose(a, sparse)


def test_compose_refuses_shapes_that_disagree_under_both_forms():
    small = SparseDiff({QUERY: torch.tensor([1])}, {QUERY: torch.ones(1)}, {QUERY: ParamInfo((4, 4), torch.float32)})
    with pytest.raises(ValueError, match=f"parameter 'bert.{QUERY}' is ParamInfo"):
        compose(with_prefix(), small)


def test_compose_refuses_names_given_both_ways_under_several_prefixes():
    other = one_entry_diff("cls.pooler.dense.weight", [0], [1.0])
    with pytest.raises(ValueError, match="with and without several prefixes \\(bert, cls\\)"):
        compose(with_prefix(), without_prefix(), other, one_entry_diff(POOLER, [0], [1.0]))


@pytest.mark.parametrize("name", [f"bert.{QUERY}".replace("layer.0", "layer.9"), "roberta." + QUERY])
def test_a_name_the_model_lacks_is_an_error_naming_it_and_nothing_is_written(bert, name):
    before = snapshot(bert)
    with pytest.raises(KeyError, match=name.replace(".", r"\.")):
        apply_diffs(bert, [with_prefix(), one_entry_diff(name, [0], [1.0])])
    with pytest.raises(KeyError, match=name.replace(".", r"\.")):
        prepare_composition(bert, [one_entry_diff(name, [0], [1.0])])
    assert_model_equals(bert, before)
