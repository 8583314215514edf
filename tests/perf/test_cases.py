"""The benchmark cases compare like with like: every implementation computes the same thing.

Tiny shape sets (ragged, non-power-of-2) on CPU; each deftx backend and each baseline
of an op is checked against the others or against an independent torch computation.
"""

from __future__ import annotations

import math
import weakref

import pytest
import torch

from deftx.ops.dispatch import unavailable_reason
from deftx.ops.registry import OPS
from deftx.perf.cases import OPS as CASES
from deftx.perf.cases import CaseSpec, dispatch_op, display_name, implementations, op_module, runs_deftx_code
from deftx.perf.shapes import ShapeSet, TensorShape
from tests.helpers import assert_bitwise_equal, assert_close, tolerance

CPU = torch.device("cpu")
TINY = ShapeSet(
    "tiny",
    (TensorShape("embed", (301, 72), vocab=True), TensorShape("norm", (72,))),
    num_layers=2,
    layer_tensors=(TensorShape("q", (72, 72)), TensorShape("ffn", (130, 72)), TensorShape("bias", (130,))),
)


def _spec(op: str, k: float | None = 0.05, dtype: str = "fp32") -> CaseSpec:
    return CaseSpec(op, TINY, dtype=dtype, k_fraction=None if op in ("rsvd", "scores") else k)


def test_cpu_implementations_never_time_the_triton_interpreter() -> None:
    for op in ("topk", "rsvd", "scatter", "step"):
        impls = implementations(op, CPU)
        assert "deftx:triton" not in impls
        assert "deftx:torch" in impls
        native = unavailable_reason(dispatch_op(op), "native", "cpu") is None
        assert ("deftx:native" in impls) == native
        assert set(op_module(op).BASELINES) <= set(impls)
    assert implementations("topk", CPU, backends=("torch",))[0] == "deftx:torch"
    assert display_name("topk", "deftx:native") == "deftx[native]"
    assert display_name("topk", "cat_topk") == "torch.cat+topk"


def test_the_case_table_is_the_registry_s_bench_cases() -> None:
    assert set(CASES) == {case for entry in OPS.values() for case in entry.bench_cases}
    assert [dispatch_op(case) for case in ("step", "compose", "scores")] == ["masked_step", "scatter", "rsvd"]


def test_inputs_are_deterministic_and_chunking_invariant() -> None:
    whole = op_module("topk").make_inputs(_spec("topk"))
    first_chunk = TINY.chunks(301 * 72 + 72)[0]
    part = op_module("topk").make_inputs(CaseSpec("topk", first_chunk, k_fraction=0.05))
    assert_bitwise_equal(part.tensors[0], whole.tensors[0], what="embed scores")
    again = op_module("topk").make_inputs(_spec("topk"))
    assert_bitwise_equal(again.tensors[3], whole.tensors[3], what="layer scores")


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("k", [0.001, 0.1])
def test_topk_implementations_select_the_same_magnitudes(dtype: str, k: float) -> None:
    module = op_module("topk")
    inputs = module.make_inputs(_spec("topk", k, dtype))
    total = sum(t.numel() for t in inputs.tensors)
    assert inputs.k == max(1, round(k * total))
    flat = torch.cat([t.reshape(-1).float().abs() for t in inputs.tensors])
    expected = flat.sort(descending=True).values[: inputs.k]
    for impl in implementations("topk", CPU):
        out = module.bind(impl, inputs)()
        if impl == "cat_kthvalue":
            assert float(out.values) == float(expected[-1]), impl
            continue
        if impl == "cat_topk":
            chosen = flat[out.indices]
        else:
            offsets = [0, *torch.tensor([t.numel() for t in inputs.tensors]).cumsum(0).tolist()]
            chosen = torch.cat([flat[o + idx] for o, idx in zip(offsets, out, strict=False)])
        assert_bitwise_equal(chosen.sort(descending=True).values, expected, what=impl)


def test_rsvd_implementations_reach_the_same_error_near_the_optimum() -> None:
    module = op_module("rsvd")
    inputs = module.make_inputs(_spec("rsvd"))
    # 32 + 8 sketch columns: the 72-wide matrices qualify, the 1-D tensors do not.
    assert len(inputs.pairs) == 1 + 2 * 2
    errors = {}
    for impl in implementations("rsvd", CPU):
        factors = module.bind(impl, inputs)()
        assert all(u.shape[1] == s.numel() == vh.shape[0] == 32 for u, s, vh in factors)
        errors[impl] = module.quality(impl, inputs, factors)["relative_error"]
    optimum = errors.pop("linalg_svd")
    assert 0.0 < optimum < 0.2
    for impl, err in errors.items():
        assert optimum <= err * (1 + 1e-5) and err <= 1.02 * optimum, (impl, err, optimum)


def test_rsvd_without_qualifying_matrices_raises() -> None:
    small = ShapeSet("small", (TensorShape("w", (40, 30)),))
    with pytest.raises(ValueError, match="no matrix"):
        op_module("rsvd").make_inputs(CaseSpec("rsvd", small))


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_scatter_implementations_produce_the_same_weights(dtype: str) -> None:
    module = op_module("scatter")
    results = {}
    for impl in implementations("scatter", CPU):
        inputs = module.make_inputs(_spec("scatter", 0.1, dtype))
        before = [w.clone() for w in inputs.weights]
        module.bind(impl, inputs)()
        results[impl] = inputs.weights
    reference = [
        (w.float().view(-1).index_add(0, idx, val)).to(w.dtype)
        for w, idx, val in zip(before, inputs.indices, inputs.values, strict=True)
    ]
    for impl, dense in results.items():
        for t, (got, want) in enumerate(zip(dense, reference, strict=True)):
            if impl == "index_add" and dtype != "fp32":
                # the baseline rounds the values to the weight dtype first: one more rounding
                u = tolerance(got.dtype, 1, factor=1.0)
                atol = 2 * u * float(inputs.values[t].abs().max())
                assert_close(got.view(-1), want, rtol=2 * u, atol=atol, what=f"{impl} tensor {t}")
            else:
                assert_bitwise_equal(got.view(-1), want, what=f"{impl} tensor {t}")
    assert module.selected(inputs) == sum(i.numel() for i in inputs.indices) > 0


def test_masked_step_matches_dense_adamw_on_the_selected_entries() -> None:
    module = op_module("step")
    results = {}
    for impl in implementations("step", CPU):
        inputs = module.make_inputs(_spec("step", 0.05))
        step = module.bind(impl, inputs)
        for _ in range(3):
            step()
        results[impl] = inputs
    reference = results["adamw"]
    for impl, got in results.items():
        for t, idx in enumerate(reference.indices):
            want = reference.weights[t].view(-1)[idx]
            rtol = tolerance(torch.float32, 16)
            atol = rtol * float(want.abs().max())  # entries near zero: the update's rounding is absolute
            assert_close(got.weights[t].view(-1)[idx], want, rtol=rtol, atol=atol, what=f"{impl} tensor {t}")


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_compose_prepared_writes_what_the_public_path_writes_and_reverts(dtype: str) -> None:
    module = op_module("compose")
    assert module.PREPARED in implementations("compose", CPU)
    inputs = module.make_inputs(_spec("compose", 0.1, dtype))
    original = [w.clone() for w in inputs.dense]
    module.bind(module.PREPARED, inputs)()
    for t, (got, want) in enumerate(zip(inputs.dense, original, strict=True)):
        assert_bitwise_equal(got, want, what=f"after apply + revert, tensor {t}")
    _model, prepared = module.prepared_composition(inputs)
    prepared.apply()
    applied = [w.clone() for w in inputs.dense]
    prepared.revert()
    module.bind("deftx:torch", inputs)()
    for t, (got, want) in enumerate(zip(applied, inputs.dense, strict=True)):
        assert_bitwise_equal(got, want, what=f"prepared vs public apply, tensor {t}")


@pytest.mark.parametrize("op", ["topk", "rsvd", "scatter", "step", "compose"])
def test_cost_models_are_positive_and_finite(op: str) -> None:
    module = op_module(op)
    inputs = module.make_inputs(_spec(op))
    for impl in implementations(op, CPU):
        cost = module.traffic(impl, inputs)
        assert math.isfinite(cost.bytes) and cost.bytes > 0, (impl, cost)
        assert math.isfinite(cost.flops) and cost.flops >= 0, (impl, cost)
        assert cost.model


def test_topk_cost_model_by_hand() -> None:
    """1000 fp32 scores, k = 100 (one 16384-element block; the candidate list takes all 1000)."""
    module = op_module("topk")
    spec = CaseSpec("topk", ShapeSet("one", (TensorShape("w", (100, 10)),)), k_fraction=0.1)
    inputs = module.make_inputs(spec)
    assert inputs.k == 100
    # deftx: 2 full reads + the list (8 B per entry, written once, read by 4 radix passes, the
    # classification and the compaction) + 8 B per index + 128 B of block counters
    assert module.traffic("deftx:torch", inputs).bytes == 2 * 1000 * 4 + 8 * 1000 * (1 + 4 + 2) + 100 * 8 + 128
    # cat (read, write) + abs_ (read, write) + topk (4 digit reads + a gathering read) + values and indices
    assert module.traffic("cat_topk", inputs).bytes == 4 * 1000 * 4 + 5 * 1000 * 4 + 100 * (4 + 8)
    assert module.traffic("cat_kthvalue", inputs).bytes == 5 * 1000 * 4


@pytest.mark.parametrize(("dtype", "radix_passes"), [("bf16", 2), ("fp16", 3)])
def test_topk_cost_model_of_16_bit_scores_by_hand(dtype: str, radix_passes: int) -> None:
    """torch.cat and abs_ keep the scores' 2-byte dtype, and topk returns values in it."""
    module = op_module("topk")
    spec = CaseSpec("topk", ShapeSet("one", (TensorShape("w", (100, 10)),)), dtype=dtype, k_fraction=0.1)
    inputs = module.make_inputs(spec)
    values, indices = torch.topk(torch.cat([t.reshape(-1) for t in inputs.tensors]).abs_(), inputs.k)
    assert values.element_size() == 2 and indices.element_size() == 8
    deftx = 2 * 1000 * 2 + 8 * 1000 * (1 + radix_passes + 2) + 100 * 8 + 128
    assert module.traffic("deftx:torch", inputs).bytes == deftx
    # cat and abs_ read and write 1000 x 2 B each, topk reads them per 8-bit digit (2) and once more
    assert module.traffic("cat_topk", inputs).bytes == 4 * 1000 * 2 + 3 * 1000 * 2 + 100 * (2 + 8)
    assert module.traffic("cat_kthvalue", inputs).bytes == 5 * 1000 * 2


def test_chunked_topk_past_the_limit_selects_what_one_topk_selects():
    from deftx.perf.cases.topk import chunked_topk

    flat = torch.randn(1000, generator=torch.Generator().manual_seed(3)).abs_()
    for k in (0, 1, 31, 37):  # 8 chunks of 128: up to 37 each stays under 300 candidates
        values, indices = chunked_topk(flat, k, limit=300, chunk=128)
        expected = torch.topk(flat, k).values
        assert torch.equal(values.sort(descending=True).values, expected), f"k={k}"
        assert torch.equal(flat[indices], values), f"k={k}: indices do not point at the values"
        assert indices.unique().numel() == k


def test_chunked_topk_refuses_too_many_candidates():
    from deftx.perf.cases.topk import chunked_topk

    with pytest.raises(ValueError, match="cannot take 320 candidates"):
        chunked_topk(torch.rand(1000), 40, limit=300, chunk=128)


def _deftx_impls(op: str) -> list[str]:
    return [i for i in implementations(op, CPU) if runs_deftx_code(op, i)]


@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
@pytest.mark.parametrize("op", ["topk", "rsvd", "scatter", "step", "compose", "scores"])
def test_every_deftx_implementation_matches_its_reference_and_leaves_the_inputs(op: str, dtype: str) -> None:
    module = op_module(op)
    inputs = module.make_inputs(_spec(op, 0.05, dtype))
    weights = getattr(inputs, "weights", None) or getattr(inputs, "dense", None) or []
    before = [w.clone() for w in weights]
    for impl in _deftx_impls(op):
        assert module.mismatch(impl, inputs) is None, impl
    for t, (got, want) in enumerate(zip(weights, before, strict=True)):
        assert_bitwise_equal(got, want, what=f"shared weights of tensor {t}")


def _shift_entry(tensor: torch.Tensor, index: int, by: float) -> None:
    tensor.view(-1)[index] += by


@pytest.mark.parametrize(
    ("fault", "message"),
    [
        ("lr", "differ from torch.optim.AdamW's step"),
        ("weight_decay", "differ from torch.optim.AdamW's step"),
        ("outside", "outside the selection changed"),
    ],
)
def test_the_step_check_catches_a_wrong_step(monkeypatch: pytest.MonkeyPatch, fault: str, message: str) -> None:
    module = op_module("step")
    inputs = module.make_inputs(_spec("step", 0.05))
    real_step = module.masked_adamw_step_

    def wrong_step(params, grads, indices, *state, **settings):
        if fault == "lr":
            settings["lr"] *= 1.01
        if fault == "weight_decay":
            settings["weight_decay"] = 0.0
        real_step(params, grads, indices, *state, **settings)
        if fault == "outside":
            left_out = torch.ones(params[0].numel(), dtype=torch.bool).index_fill_(0, indices[0], False)
            _shift_entry(params[0], int(left_out.nonzero()[0]), 1e-3)

    monkeypatch.setattr(module, "masked_adamw_step_", wrong_step)
    assert message in module.mismatch("deftx:torch", inputs)


def test_the_rsvd_check_catches_wrong_factors(monkeypatch: pytest.MonkeyPatch) -> None:
    module = op_module("rsvd")
    inputs = module.make_inputs(_spec("rsvd"))
    real = module.lowrank_factors_batched

    def rank_one_short(*args, **kwargs):
        factors = real(*args, **kwargs)
        for f in factors:
            f.s[-1] = 0.0  # the last component dropped: a slightly worse, still well-shaped answer
            f.s[: f.s.numel() // 2] *= 1.1
        return factors

    monkeypatch.setattr(module, "lowrank_factors_batched", rank_one_short)
    assert "relative reconstruction error" in module.mismatch("deftx:torch", inputs)


def _added_at_once(dense, indices, values, scales, *, save=False, backend=None):
    """A compose that sums the two scaled diffs in fp32 and rounds once (not once per diff)."""
    saved = [[w.reshape(-1)[idx[t]].clone() for t, w in enumerate(dense)] for idx in indices]
    for t, w in enumerate(dense):
        delta = torch.zeros(w.numel(), dtype=torch.float32)
        for idx, val, scale in zip(indices, values, scales, strict=True):
            delta.index_add_(0, idx[t], scale * val[t])
        touched = delta != 0
        w.view(-1)[touched] = (w.view(-1)[touched].float() + delta[touched]).to(w.dtype)
    return saved if save else None


def test_the_compose_check_catches_a_composition_rounded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    module = op_module("compose")
    inputs = module.make_inputs(_spec("compose", 0.3, "bf16"))
    monkeypatch.setattr(module, "scatter_add_", _added_at_once)
    assert "differ from the two diffs added one after another" in module.mismatch("deftx:torch", inputs)


def test_the_compose_check_catches_wrong_saved_originals(monkeypatch: pytest.MonkeyPatch) -> None:
    module = op_module("compose")
    inputs = module.make_inputs(_spec("compose", 0.3))
    real = module.scatter_add_

    def saves_after_adding(dense, indices, values, scales, *, save=False, backend=None):
        real(dense, indices, values, scales, backend=backend)
        return [[w.reshape(-1)[idx[t]].clone() for t, w in enumerate(dense)] for idx in indices]

    monkeypatch.setattr(module, "scatter_add_", saves_after_adding)
    assert "saved originals" in module.mismatch("deftx:torch", inputs)


def test_the_compose_check_catches_a_revert_that_leaves_the_diffs(monkeypatch: pytest.MonkeyPatch) -> None:
    module = op_module("compose")
    inputs = module.make_inputs(_spec("compose", 0.3))
    real = module.prepare_composition

    class NoRevert:
        def __init__(self, prepared):
            self.prepared = prepared

        def apply(self):
            self.prepared.apply()
            return self

        def revert(self):
            return self

    monkeypatch.setattr(module, "prepare_composition", lambda *a, **kw: NoRevert(real(*a, **kw)))
    assert "the original weights after revert()" in module.mismatch(module.PREPARED, inputs)


def test_the_scores_check_catches_scores_far_from_the_reconstruction(monkeypatch: pytest.MonkeyPatch) -> None:
    module = op_module("scores")
    inputs = module.make_inputs(_spec("scores"))
    real = module.denoised_magnitudes_batched

    def halved(*args, **kwargs):
        return [s.mul_(0.5) for s in real(*args, **kwargs)]

    monkeypatch.setattr(module, "denoised_magnitudes_batched", halved)
    assert "score error" in module.mismatch("deftx:torch", inputs)
    monkeypatch.setattr(module, "denoised_magnitudes_batched", lambda *a, **kw: [s.neg() for s in real(*a, **kw)])
    assert "negative, inf or nan" in module.mismatch("deftx:torch", inputs)


class LiveScores:
    """Bytes of the score matrices alive (made by ``track`` and not yet freed), and their peak."""

    def __init__(self) -> None:
        self.live = 0
        self.peak = 0

    def track(self, matrix: torch.Tensor) -> torch.Tensor:
        size = matrix.numel() * matrix.element_size()
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(matrix, self.free, size)
        return matrix

    def free(self, size: int) -> None:
        self.live -= size


def test_the_scores_check_holds_one_model_s_scores_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """deftx's scores are freed before the reference's are made, and those one matrix at a time: at
    Llama-2-7B bf16 each model's fp32 scores are 25 GiB, and two beside the 25 GiB of inputs overran an H100."""
    module = op_module("scores")
    inputs = module.make_inputs(_spec("scores", dtype="bf16"))
    one_model = sum(4 * w1.numel() for w1, _ in inputs.pairs)
    scores = LiveScores()
    real_deftx, real_baseline = module.denoised_magnitudes_batched, module._baseline_scores
    monkeypatch.setattr(module, "denoised_magnitudes_batched",
                        lambda *a, **kw: [scores.track(s) for s in real_deftx(*a, **kw)])
    monkeypatch.setattr(module, "_baseline_scores", lambda *a: scores.track(real_baseline(*a)))
    assert module.mismatch("deftx:torch", inputs) is None
    assert scores.peak == one_model, f"{scores.peak / one_model:.2f} models' scores alive at once"


def test_the_tensor_core_scores_are_checked_before_they_are_timed() -> None:
    """``deftx_tensor_cores`` runs deftx's rSVD with tensor-core products: its rows were timed and read for the
    scores goal with no output check, as if it were a baseline."""
    scores = op_module("scores")
    assert runs_deftx_code("scores", scores.TENSOR_CORES)
    assert [impl for impl in scores.BASELINES if runs_deftx_code("scores", impl)] == [scores.TENSOR_CORES]
