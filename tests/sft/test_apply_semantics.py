"""apply_diffs: one call equals applying the diffs one after another, revert is exact whatever they
touch, entries lost to the target dtype's rounding are reported, and threads cannot interleave."""

from __future__ import annotations

import threading
import warnings

import pytest
import torch
from transformers import BertForSequenceClassification

from deftx.sft import (
    OverwrittenByDenseWarning,
    ParamInfo,
    RoundingLossError,
    RoundingLossWarning,
    SparseDiff,
    applied,
    apply_diffs,
    count_rounding_loss,
    prepare_composition,
)
from tests.sft.helpers import assert_model_equals, random_sft, snapshot, tiny_config

POOLER = "bert.pooler.dense.weight"
QUERY = "bert.encoder.layer.0.attention.self.query.weight"


def copy_of(model):
    other = BertForSequenceClassification(tiny_config())
    other.load_state_dict(model.state_dict())
    other.config.deftx_base_model = "tiny-bert"
    return other.to(next(model.parameters()).dtype)


def head_diff(seed: int) -> SparseDiff:
    gen = torch.Generator().manual_seed(seed)
    return SparseDiff({}, {}, {}, dense={"classifier.weight": torch.randn(3, 16, generator=gen),
                                         "classifier.bias": torch.randn(3, generator=gen)})


def dense_pooler(seed: int) -> SparseDiff:
    gen = torch.Generator().manual_seed(seed)
    return SparseDiff({}, {}, {}, dense={POOLER: torch.randn(16, 16, generator=gen)})


def apply_one_by_one(model, diffs):
    for diff in diffs:
        diff.apply(model, check_base=False)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda m: [head_diff(1), head_diff(2)], id="two diffs ship the same head"),
        pytest.param(lambda m: [random_sft(m, 200, head=True), random_sft(m, 200, seed=3, head=True)],
                     id="two task SFTs"),
        pytest.param(lambda m: [random_sft(m, 200), dense_pooler(4)], id="sparse then dense on one parameter"),
        pytest.param(lambda m: [dense_pooler(4), random_sft(m, 200)], id="dense then sparse on one parameter"),
        pytest.param(lambda m: [dense_pooler(4), random_sft(m, 200), dense_pooler(5), random_sft(m, 100, seed=6)],
                     id="interleaved"),
    ],
)
@pytest.mark.filterwarnings("ignore::deftx.sft.OverwrittenByDenseWarning")
def test_one_call_equals_one_after_another_and_reverts_exactly(model, make):
    diffs = make(model)
    original = snapshot(model)
    sequential = copy_of(model)
    apply_one_by_one(sequential, diffs)
    handle = apply_diffs(model, diffs, check_base=False)
    assert_model_equals(model, snapshot(sequential), "one call vs one after another")
    handle.revert()
    assert_model_equals(model, original, "after revert")


def test_a_diff_naming_a_parameter_twice_is_refused(model):
    short = POOLER.removeprefix("bert.")
    info = ParamInfo((16, 16), torch.float32)
    twice = SparseDiff({POOLER: torch.tensor([0, 1]), short: torch.tensor([2])},
                       {POOLER: torch.ones(2), short: torch.ones(1)}, {POOLER: info, short: info})
    original = snapshot(model)
    with pytest.raises(ValueError, match=f"names parameter '{POOLER}' twice"):
        apply_diffs(model, [twice])
    assert_model_equals(model, original)
    dense_twice = SparseDiff({}, {}, {}, dense={"classifier.bias": torch.ones(3),
                                                "bert.classifier.bias": torch.zeros(3)})
    with pytest.raises(ValueError, match="twice"):
        apply_diffs(model, [dense_twice], check_base=False)


def small_steps(model, name: str, size: float, seed: int = 0) -> SparseDiff:
    """Every entry of ``name`` moved by ±``size`` (a fine-tuning step smaller than a bf16 ulp for most)."""
    gen = torch.Generator().manual_seed(seed)
    param = dict(model.named_parameters())[name]
    values = size * torch.randn(param.numel(), generator=gen).sign()
    return SparseDiff({name: torch.arange(param.numel())}, {name: values},
                      {name: ParamInfo(tuple(param.shape), param.dtype)}, base_model="tiny-bert")


def unchanged_entries(before: torch.Tensor, after: torch.Tensor) -> int:
    """Independent count: entries whose value the apply did not change (every value here is non-zero)."""
    return int((before.reshape(-1) == after.reshape(-1)).sum())


@pytest.mark.parametrize(("dtype", "step"), [(torch.bfloat16, 1e-4), (torch.float16, 4e-6)])
def test_rounding_loss_is_counted_warned_and_can_be_refused(model, dtype, step):
    model = model.to(dtype)
    diff = small_steps(model, QUERY, step)
    original = snapshot(model)
    expected = count_rounding_loss(model, [diff])
    assert_model_equals(model, original, "count_rounding_loss writes nothing")

    with pytest.raises(RoundingLossError, match="nothing was written"):
        diff.apply(model, on_rounding_loss="error")
    assert_model_equals(model, original, "refused apply")

    with pytest.warns(RoundingLossWarning, match=rf"diff 0 \(sparse\): \d+ of 256 entries \(\d+ in {str(dtype)[6:]}\)"):
        handle = diff.apply(model)
    lost = unchanged_entries(original[QUERY], dict(model.named_parameters())[QUERY].detach())
    assert 0 < lost < 256
    assert handle.rounding_loss == [{QUERY: lost}] == expected and handle.lost_entries == lost
    handle.revert()
    assert_model_equals(model, original)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        diff.apply(model, on_rounding_loss="ignore").revert()


def test_no_rounding_loss_in_float32(model):
    diff = small_steps(model, QUERY, 1e-4)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        handle = diff.apply(model)
    assert handle.rounding_loss == [{}] and handle.lost_entries == 0


def test_unknown_rounding_policy_is_refused(model):
    with pytest.raises(ValueError, match="on_rounding_loss"):
        random_sft(model, 10).apply(model, on_rounding_loss="warning")


class Wide(torch.nn.Module):
    """One 4M-entry parameter: a native scatter over it takes long enough for threads to overlap."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(2048, 2048))


def every_entry(seed: int, numel: int) -> SparseDiff:
    gen = torch.Generator().manual_seed(seed)
    return SparseDiff({"weight": torch.arange(numel)}, {"weight": torch.randn(numel, generator=gen)},
                      {"weight": ParamInfo((2048, 2048), torch.float32)})


def test_threads_applying_to_one_model_are_serialised():
    torch.manual_seed(0)
    model = Wide()
    original = snapshot(model)
    diffs = [every_entry(seed, model.weight.numel()) for seed in range(4)]
    start_together = threading.Barrier(len(diffs))

    def work(diff):
        start_together.wait()
        apply_diffs(model, [diff], on_rounding_loss="ignore")

    for _ in range(3):
        threads = [threading.Thread(target=work, args=(d,)) for d in diffs]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        stack = applied(model)
        assert sorted(id(h.diffs[0]) for h in stack) == sorted(id(d) for d in diffs)
        reference = Wide()
        reference.load_state_dict(original)
        for handle in stack:
            apply_diffs(reference, handle.diffs, on_rounding_loss="ignore")
        assert_model_equals(model, snapshot(reference), "concurrent applies vs the same applies in stack order")
        for handle in reversed(stack):
            handle.revert()
        assert_model_equals(model, original, "after reverting every apply")
        assert applied(model) == []


@pytest.mark.filterwarnings("ignore::deftx.sft.OverwrittenByDenseWarning")
def test_a_with_block_reverts_exactly_on_leaving_it_even_on_an_error(model):
    diffs = [random_sft(model, 200), dense_pooler(4)]
    original = snapshot(model)
    applied_copy = copy_of(model)
    apply_diffs(applied_copy, diffs, check_base=False)
    with apply_diffs(model, diffs, check_base=False) as handle:
        assert_model_equals(model, snapshot(applied_copy), "inside the block")
        assert applied(model) == [handle]
    assert_model_equals(model, original, "after the block")
    assert handle.reverted and applied(model) == []
    with pytest.raises(KeyError, match="inside"), apply_diffs(model, diffs, check_base=False):
        raise KeyError("inside")
    assert_model_equals(model, original, "after a block left by an error")
    with apply_diffs(model, diffs, check_base=False) as handle:
        handle.revert()
    assert_model_equals(model, original, "reverted inside the block: leaving it reverts nothing more")


def test_a_dense_tensor_that_discards_an_earlier_diffs_writes_is_warned_not_silent(model):
    """A task SFT exported with whole modules (peft's modules_to_save) composed after a language SFT
    replaces the language SFT's entries there: the result is one-after-another's, and it is said."""
    sparse = random_sft(model, 400)
    on_pooler = sum(idx.numel() for name, idx in sparse.indices.items() if name.endswith(POOLER.removeprefix("bert.")))
    assert on_pooler > 0
    with pytest.warns(OverwrittenByDenseWarning) as caught:
        apply_diffs(model, [sparse, dense_pooler(4)], check_base=False).revert()
    message = str(caught[0].message)
    assert f"{POOLER!r}: SparseDiff 1's dense tensor replaces {on_pooler} entries of SparseDiff 0" in message
    with pytest.warns(OverwrittenByDenseWarning, match="replaces the dense tensor of SparseDiff 0"):
        apply_diffs(model, [head_diff(1), head_diff(2)], check_base=False).revert()
    with warnings.catch_warnings():
        warnings.simplefilter("error", OverwrittenByDenseWarning)
        apply_diffs(model, [dense_pooler(4), sparse], check_base=False).revert()
        apply_diffs(model, [sparse, head_diff(1)], check_base=False).revert()


WORDS = "bert.embeddings.word_embeddings.weight"


def one_entry(name: str, value: float) -> SparseDiff:
    return SparseDiff({name: torch.tensor([3])}, {name: torch.tensor([value])},
                      {name: ParamInfo((64, 16), torch.float32)})


def apply_handle(module, diff):
    return apply_diffs(module, [diff])


def apply_prepared(module, diff):
    return prepare_composition(module, [diff]).apply()


@pytest.mark.parametrize("apply_first", [apply_handle, apply_prepared])
@pytest.mark.parametrize("by_content", [False, True], ids=["handle", "by content"])
def test_a_diff_applied_to_the_body_cannot_be_reverted_under_a_later_one_applied_to_the_whole_model(
        model, apply_first, by_content):
    """The stack was per module object: a diff applied to ``model.bert`` reverted after another applied to ``model``
    on the same tensor wrote back its originals under the later diff, and the two reverts left base + the first
    diff (word embedding entry 3 stayed 1.0 off the base)."""
    base = snapshot(model)
    first_diff = one_entry("embeddings.word_embeddings.weight", 1.0)
    first = apply_first(model.bert, first_diff)
    later = apply_diffs(model, [one_entry(WORDS, 2.0)])
    with pytest.raises(RuntimeError, match="revert the diffs applied after these first"):
        first_diff.revert(model.bert) if by_content else first.revert()
    later.revert()
    first.revert()
    assert_model_equals(model, base)
    assert applied(model) == [] and applied(model.bert) == []


def test_applications_on_disjoint_parameters_of_a_model_and_its_body_revert_in_any_order(model):
    base = snapshot(model)
    body = apply_diffs(model.bert, [one_entry("embeddings.word_embeddings.weight", 1.0)])
    head = apply_diffs(model, [head_diff(1)])
    body.revert()
    head.revert()
    assert_model_equals(model, base)
