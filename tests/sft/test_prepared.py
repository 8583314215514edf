"""prepare_composition: apply / revert bit-identical to apply_diffs and its exact revert, on the
model's applied stack, with the rounding loss counted once and no host work per apply."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch

from deftx.sft import (
    RoundingLossError,
    RoundingLossWarning,
    SparseDiff,
    applied,
    apply_diffs,
    count_rounding_loss,
    prepare_composition,
)
from tests.ops.conftest import cpu_backends
from tests.ops.test_host_work import counted
from tests.sft.helpers import assert_model_equals, random_sft, snapshot
from tests.sft.test_apply_semantics import QUERY, dense_pooler, small_steps

pytestmark = pytest.mark.filterwarnings("ignore:deftx. running the Triton kernel")

SCALES = [1.0, 1.0, -0.5]  # the dense pooler (second) replaces, so it takes scale 1
OPTIONS = dict(strict_dtype=False, check_base=False, on_rounding_loss="ignore")
DTYPES = {"fp32": (torch.float32,), "bf16": (torch.bfloat16,), "fp16": (torch.float16,),
          "mixed": (torch.bfloat16, torch.float16, torch.float32)}


def cast_layers(model, dtypes) -> None:
    """Layer ``i`` of the encoder (and the rest of the model, by the first) in ``dtypes[i % len]``."""
    model.to(dtypes[0])
    for i, layer in enumerate(model.bert.encoder.layer):
        layer.to(dtypes[i % len(dtypes)])


def three_diffs(model, head: bool = True) -> list[SparseDiff]:
    """A task SFT (with a head when ``head``), a dense pooler, a second SFT on the same weights."""
    return [random_sft(model, 200, head=head), dense_pooler(4), random_sft(model, 150, seed=3)]


@pytest.mark.filterwarnings("ignore::deftx.sft.OverwrittenByDenseWarning")  # three_diffs: two heads
@pytest.mark.parametrize("backend", cpu_backends("scatter"))
@pytest.mark.parametrize("dtypes", list(DTYPES))
def test_prepared_apply_is_bit_identical_to_apply_diffs_and_reverts_exactly(model, dtypes, backend):
    diffs = three_diffs(model)
    cast_layers(model, DTYPES[dtypes])
    original = snapshot(model)
    reference = copy.deepcopy(model)
    handle = apply_diffs(reference, diffs, SCALES, backend="torch", **OPTIONS)
    prepared = prepare_composition(model, diffs, SCALES, backend=backend, **OPTIONS)
    assert prepared.rounding_loss == handle.rounding_loss
    assert_model_equals(model, original, "prepare writes nothing")
    for _ in range(2):
        prepared.apply()
        assert_model_equals(model, snapshot(reference), "prepared apply vs apply_diffs")
        prepared.revert()
        assert_model_equals(model, original, "after revert")


@pytest.mark.filterwarnings("ignore::deftx.sft.OverwrittenByDenseWarning")  # three_diffs: two heads
def test_prepared_composition_is_on_the_stack_while_applied(model):
    diffs = three_diffs(model)
    original = snapshot(model)
    prepared = prepare_composition(model, diffs, check_base=False)
    with prepared:
        assert applied(model) == [prepared] and prepared.applied
    assert applied(model) == [] and not prepared.applied
    assert_model_equals(model, original, "after the with block")
    prepared.apply()
    assert diffs[1].revert(model).exact
    assert applied(model) == [] and not prepared.applied
    assert_model_equals(model, original, "reverted by one of its diffs")


def test_prepared_composition_applies_only_onto_the_stack_it_was_prepared_on(model):
    first, second = random_sft(model, 100), random_sft(model, 100, seed=5)
    original = snapshot(model)
    prepared = prepare_composition(model, [second])
    handle = first.apply(model)
    with pytest.raises(RuntimeError, match="differ from those applied when it was prepared"):
        prepared.apply()
    on_first = prepare_composition(model, [second])
    handle.revert()
    with pytest.raises(RuntimeError, match="differ from those applied when it was prepared"):
        on_first.apply()
    assert_model_equals(model, original, "refused applies write nothing")

    prepared.apply()
    with pytest.raises(RuntimeError, match="already applied"):
        prepared.apply()
    on_top = first.apply(model)
    with pytest.raises(RuntimeError, match="reverse order"):
        prepared.revert()
    on_top.revert()
    prepared.revert()
    with pytest.raises(RuntimeError, match="not applied"):
        prepared.revert()
    assert_model_equals(model, original, "after the reverts")


def test_prepared_rounding_loss_is_counted_once_when_prepared(model):
    model = model.to(torch.bfloat16)
    diff = small_steps(model, QUERY, 1e-4)
    original = snapshot(model)
    with pytest.raises(RoundingLossError, match="nothing was written"):
        prepare_composition(model, [diff], on_rounding_loss="error")
    with pytest.warns(RoundingLossWarning, match=r"diff 0 \(sparse\)"):
        prepared = prepare_composition(model, [diff])
    assert prepared.rounding_loss == count_rounding_loss(model, [diff]) and prepared.rounding_loss[0][QUERY] > 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        prepared.apply()
    prepared.revert()
    assert_model_equals(model, original, "after revert")


@pytest.mark.parametrize("backend", cpu_backends("scatter"))
def test_prepared_empty_compositions_do_nothing(model, backend):
    original = snapshot(model)
    for diffs in ([], [SparseDiff({}, {}, {})]):
        with prepare_composition(model, diffs, backend=backend) as prepared:
            assert applied(model) == [prepared]
            assert_model_equals(model, original, "empty composition applied")
    assert_model_equals(model, original, "after the empty compositions")


@pytest.mark.parametrize(("head", "copies"), [(False, {}), (True, {"aten::_foreach_copy_": 2})])
def test_prepared_apply_and_revert_are_one_launch_per_dtype_without_syncs(model, head, copies):
    diffs = three_diffs(model, head)[::2]  # the two SFTs (the first with its dense head when ``head``)
    cast_layers(model, DTYPES["mixed"])
    sparse_dtypes = {p.dtype for n, p in model.named_parameters() if not n.startswith("classifier")}
    prepared = prepare_composition(model, diffs, backend="triton", **OPTIONS)
    for _ in range(2):
        _, applied_work = counted(prepared.apply)
        assert applied_work.sync_count == 0, applied_work.summary()
        assert applied_work.triton_launches == {"_scatter_add_kernel": len(sparse_dtypes)}, applied_work.summary()
        assert applied_work.torch_ops == copies, applied_work.summary()
        _, reverted = counted(prepared.revert)
        assert reverted.sync_count == 0, reverted.summary()
        assert reverted.triton_launches == {"_scatter_restore_kernel": len(sparse_dtypes)}, reverted.summary()
        assert reverted.torch_ops == ({"aten::_foreach_copy_": 1} if head else {}), reverted.summary()
