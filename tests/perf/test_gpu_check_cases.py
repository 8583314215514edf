"""The cases and suite features the GPU check relies on, on CPU at toy size.

compose (2 SFTs, originals saved) and DeFT-X scores against their baselines; a failing
implementation or unbuildable inputs become rows; the baseline filter, per-op K, the time
cap per case, the deadline and the partial documents.
"""

from __future__ import annotations

import math
import time

import pytest
import torch

from deftx.ops import scatter_restore_
from deftx.perf.cases import CaseSpec, implementations, op_module
from deftx.perf.predicted import bench_workload, op_costs
from deftx.perf.roofline import Roofline
from deftx.perf.shapes import ShapeSet, TensorShape
from deftx.perf.suite import SuiteConfig, run_case, run_suite
from deftx.perf.timing import TimingSettings, time_interleaved_isolating_errors
from tests.helpers import assert_bitwise_equal
from tests.perf.test_cases import TINY, LiveScores

CPU = torch.device("cpu")
ONE_CALL = TimingSettings(warmup=1, min_repeats=1, max_repeats=1, min_time_s=0.0)
ROOF = Roofline(copy_gbps=10.0, matmul_gflops=10.0, copy_bytes=1, matmul_n=1)


def reference_compose(dense, indices, values, scales):
    """Per diff in order: w = cast(f32(w) + f32(scale * v)) at the diff's positions."""
    out = []
    for t, w in enumerate(dense):
        flat = w.reshape(-1).clone()
        for idx, val, scale in zip(indices, values, scales, strict=True):
            wide = flat.float()
            wide[idx[t]] = wide[idx[t]] + val[t] * scale
            flat = wide.to(w.dtype)
        out.append(flat)
    return out


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_compose_implementations_equal_the_two_roundings_reference_and_deftx_restores(dtype):
    module = op_module("compose")
    spec = CaseSpec("compose", TINY, dtype=dtype, k_fraction=0.1)
    for impl in implementations("compose", CPU):
        inputs = module.make_inputs(spec)
        before = [w.clone() for w in inputs.dense]
        want = reference_compose(before, inputs.indices, inputs.values, module.SCALES)
        if impl == module.PREPARED:  # applies and reverts (its apply is checked in tests/perf/test_cases.py)
            want = [w.reshape(-1) for w in before]
        saved = module.bind(impl, inputs)()
        for t, (got, expected) in enumerate(zip(inputs.dense, want, strict=True)):
            assert_bitwise_equal(got.reshape(-1), expected, what=f"{impl} tensor {t}")
        if impl.startswith("deftx:"):
            scatter_restore_(inputs.dense, inputs.indices, saved)
            for t, (got, original) in enumerate(zip(inputs.dense, before, strict=True)):
                assert_bitwise_equal(got, original, what=f"{impl} restored tensor {t}")
    overlap = sum(int(torch.isin(a, b).sum()) for a, b in zip(*inputs.indices, strict=True))
    assert 0 < overlap < module.selected(inputs), "the two diffs share some positions, not all"


def test_scores_of_deftx_and_svd_lowrank_land_at_the_same_error():
    module = op_module("scores")
    inputs = module.make_inputs(CaseSpec("scores", TINY, k_fraction=None, rank=8, oversample=4))
    errors = {}
    for impl in implementations("scores", CPU):
        scores = module.bind(impl, inputs)()
        assert [s.shape for s in scores] == [w1.shape for w1, _ in inputs.pairs]
        assert all(s.dtype == torch.float32 and bool((s >= 0).all()) for s in scores)
        errors[impl] = module.quality(impl, inputs, scores)["score_error"]
    deftx, baseline = errors["deftx:torch"], errors["svd_lowrank_abs"]
    assert 0.0 < deftx < 0.5 and deftx == pytest.approx(baseline, rel=0.05)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_tensor_core_scores_land_at_the_baselines_error_and_are_listed_on_cuda_only(dtype):
    """The variant runs the Triton kernels (interpreted here) with tf32x3 (fp32) or bf16
    products; on CPU it is not listed, since the backends there multiply in fp32."""
    module = op_module("scores")
    assert module.TENSOR_CORES in implementations("scores", torch.device("cuda"))
    assert module.TENSOR_CORES not in implementations("scores", CPU)
    inputs = module.make_inputs(CaseSpec("scores", TINY, dtype=dtype, k_fraction=None, rank=8, oversample=4))
    assert module.tensor_core_precision(inputs.pairs[0][0].dtype) == ("tf32x3" if dtype == "fp32" else "bf16")
    errors = {impl: module.quality(impl, inputs, module.bind(impl, inputs)())["score_error"]
              for impl in (module.TENSOR_CORES, "svd_lowrank_abs")}
    assert 0.0 < errors[module.TENSOR_CORES] <= 1.05 * errors["svd_lowrank_abs"], errors
    assert module.roofline_of(module.TENSOR_CORES) == "memory" and module.roofline_of("svd_lowrank_abs") == "compute"


@pytest.mark.parametrize("op", ["compose", "scores"])
def test_new_cases_have_cost_models_and_predictions_for_every_implementation(op):
    module = op_module(op)
    spec = CaseSpec(op, TINY, k_fraction=None if op == "scores" else 0.05, rank=8, oversample=4)
    inputs = module.make_inputs(spec)
    for impl in implementations(op, CPU):
        cost = module.traffic(impl, inputs)
        assert math.isfinite(cost.bytes) and cost.bytes > 0 and cost.model
    workload = bench_workload(TINY, op, dtype="fp32", k_fraction=spec.k_fraction, rank=8, oversample=4, n_iter=2)
    costs = op_costs(workload, op)
    unmodelled = {getattr(module, "PREPARED", None)}  # compose's prepared variant: no profile prediction
    assert set(costs) == {"deftx", *module.BASELINES} - unmodelled
    if op == "compose":
        assert workload.settings.num_diffs == 2
    else:  # the tensor-core variant: the same bytes, its FLOPs at the TF32 peak (three products each)
        fast, fp32 = costs[module.TENSOR_CORES][0], costs["deftx"][0]
        assert (fast.bytes, fast.flops, fast.precision) == (fp32.bytes, 3 * fp32.flops, "tf32")


def test_a_failing_implementation_is_dropped_and_the_others_are_timed():
    calls = {"ok": 0}

    def ok():
        calls["ok"] += 1

    def broken():
        raise RuntimeError("CUDA out of memory (simulated)")

    settings = TimingSettings(warmup=1, min_repeats=3, max_repeats=3, min_time_s=0.0)
    measured, errors = time_interleaved_isolating_errors({"ok": ok, "broken": broken}, CPU, settings)
    assert set(measured) == {"ok"} and len(measured["ok"][0].samples) == 3
    assert isinstance(errors["broken"], RuntimeError) and calls["ok"] == 4


def test_the_time_cap_stops_further_rounds():
    """No round starts once the budget is spent, and none is skipped before: each call sleeps at
    least 10 ms, so a 50 ms budget allows at most 6 rounds; a second round is missing only if the
    first overran the budget (a loaded machine), which the first sample then shows."""
    settings = TimingSettings(warmup=0, min_repeats=1, max_repeats=1000, min_time_s=100.0, budget_s=0.05)
    measured, _ = time_interleaved_isolating_errors({"a": lambda: time.sleep(0.01)}, CPU, settings)
    samples = measured["a"][0].samples
    assert 1 <= len(samples) <= 7 and sum(samples[:-1]) <= settings.budget_s, samples
    assert len(samples) >= 2 or samples[0] > settings.budget_s, samples


def test_inputs_that_cannot_be_built_make_every_row_an_error():
    small = ShapeSet("small", (TensorShape("w", (8, 8)),))
    spec = CaseSpec("rsvd", small)
    rows = run_case(spec, ["deftx:torch", "svd_lowrank"], ONE_CALL, ROOF, None)
    assert [r["impl"] for r in rows] == ["deftx:torch", "svd_lowrank"]
    assert all(r["error"].startswith("inputs: ValueError: rsvd: no matrix") for r in rows)


def test_the_baseline_filter_and_per_op_k_select_what_runs():
    config = SuiteConfig(shapes=TINY, baselines={"topk": ("cat_topk",), "step": ()}, op_k_fractions={"step": (0.05,)})
    assert config.implementations("topk", CPU)[-1:] == ["cat_topk"]
    assert "cat_kthvalue" not in config.implementations("topk", CPU)
    assert all(i.startswith("deftx:") for i in config.implementations("step", CPU))
    assert set(config.implementations("compose", CPU)) >= {"dense_compose"}
    assert config.k_values("step") == [0.05]
    assert config.k_values("scores") == [None] and config.k_values("topk") == [0.001, 0.01, 0.1]


def test_suite_reports_partial_documents_and_skips_cases_past_its_deadline():
    seen = []
    config = SuiteConfig(shapes=TINY, ops=("topk", "compose"), k_fractions=(0.01,), backends=("torch",),
                         timing=ONE_CALL, memory=False, roofline_copy_bytes=1 << 20, roofline_matmul_n=64)
    doc = run_suite(config, progress=False, on_case=lambda d: seen.append(len(d["results"])))
    assert seen == [3, 6]
    assert {c["op"] for c in doc["comparisons"]} == {"topk", "compose"}
    late = SuiteConfig(shapes=TINY, ops=("topk",), k_fractions=(0.01,), backends=("torch",), timing=ONE_CALL,
                       memory=False, deadline=time.monotonic() - 1, roofline_copy_bytes=1 << 20,
                       roofline_matmul_n=64)
    skipped = run_suite(late, progress=False)
    assert [r["skipped"] for r in skipped["results"]] == ["not run: the suite's time budget was spent"] * 3
    assert skipped["comparisons"] == []


def test_a_case_holds_one_implementation_s_scores_at_a_time_and_reports_each_one_s_error(monkeypatch):
    """Only the quality figures of each implementation's first result are kept while the others are timed:
    at Llama-2-7B bf16 every implementation's 25 GiB of scores were held (125 GiB with the inputs)."""
    module = op_module("scores")
    spec = CaseSpec("scores", TINY, dtype="bf16")
    scores = LiveScores()
    real_deftx, real_baseline = module.denoised_magnitudes_batched, module._baseline_scores
    monkeypatch.setattr(module, "denoised_magnitudes_batched",
                        lambda *a, **kw: [scores.track(s) for s in real_deftx(*a, **kw)])
    monkeypatch.setattr(module, "_baseline_scores", lambda *a: scores.track(real_baseline(*a)))
    timing = TimingSettings(warmup=1, min_repeats=2, max_repeats=2, min_time_s=0.0)
    rows = run_case(spec, ["deftx:torch", "svd_lowrank_abs"], timing, ROOF, None)
    inputs = module.make_inputs(spec)
    one_model = sum(4 * w1.numel() for w1, _ in inputs.pairs)
    assert scores.peak == one_model, f"{scores.peak / one_model:.2f} models' scores alive at once"
    assert rows[0]["output_check"] == "ok"
    for row in rows:
        expected = module.quality(row["impl"], inputs, module.bind(row["impl"], inputs)())["score_error"]
        assert math.isclose(row["score_error"], expected, rel_tol=0.05), row


def test_a_quality_that_fails_makes_its_row_an_error_and_the_case_goes_on(monkeypatch):
    module = op_module("scores")
    real_quality = module.quality

    def out_of_memory_for_the_baseline(impl, inputs, output):
        if impl == "svd_lowrank_abs":
            raise torch.OutOfMemoryError("CUDA out of memory (planted)")
        return real_quality(impl, inputs, output)

    monkeypatch.setattr(module, "quality", out_of_memory_for_the_baseline)
    rows = run_case(CaseSpec("scores", TINY), ["deftx:torch", "svd_lowrank_abs"], ONE_CALL, ROOF, None)
    assert "error" not in rows[0] and rows[0]["score_error"] > 0
    assert rows[1]["error"] == "result: OutOfMemoryError: CUDA out of memory (planted)"
