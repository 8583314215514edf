"""Roofline: time = max(bytes / bandwidth, FLOPs / peak), and the wiring of the kernel models."""

from __future__ import annotations

import json

import pytest
import torch

from deftx.ops.cost import masked_step, rsvd, scatter, topk
from deftx.perf.roofline import OPS, Cost, predict, spread_entries
from deftx.perf.targets import A100_80GB_SXM, H100_SXM
from deftx.perf.workload import load_workload


def test_cost_time_is_the_larger_term():
    memory = Cost(3.35e9, 1e9, "fp32")
    assert memory.time(H100_SXM) == pytest.approx(1e-3) and memory.bound(H100_SXM) == "memory"
    compute = Cost(1e6, 67e12, "fp32")
    assert compute.time(H100_SXM) == pytest.approx(1.0) and compute.bound(H100_SXM) == "compute"
    tensor = Cost(1e6, 312e12, "bf16")
    assert tensor.time(A100_80GB_SXM) == pytest.approx(1.0)
    no_flops = Cost(2039e9)
    assert no_flops.time(A100_80GB_SXM) == pytest.approx(1.0) and no_flops.compute_time(A100_80GB_SXM) == 0
    row = memory.as_dict(H100_SXM)
    assert row == {"bytes": 3_350_000_000, "flops": 1_000_000_000, "flop_precision": "fp32",
                   "time_s": pytest.approx(1e-3), "bound": "memory"}


@pytest.mark.parametrize(
    ("numels", "k", "expected"),
    [([10, 10], 5, [3, 2]), ([1, 3], 2, [1, 1]), ([100, 1, 1], 3, [3, 0, 0]), ([5, 5], 0, [0, 0]),
     ([7, 3, 5], 15, [7, 3, 5])],
)
def test_spread_entries(numels, k, expected):
    counts = spread_entries(numels, k)
    assert counts == expected and sum(counts) == k
    assert all(0 <= c <= n for c, n in zip(counts, numels, strict=True))


@pytest.fixture
def small_set(tmp_path):
    path = tmp_path / "small.json"
    path.write_text(json.dumps({
        "name": "small", "dtype": "bf16", "parameters": {"w": [8, 4], "v": [2, 40], "b": [4], "ln": [4]},
        "frozen": ["ln"], "settings": {"k_fraction": 0.25, "rank": 2, "oversample": 1, "n_iter": 1},
    }))
    return load_workload(str(path))


def test_predictions_use_the_kernel_models(small_set):
    predictions, skipped = predict(small_set)
    assert skipped == {} and [p.op for p in predictions] == list(OPS)
    by_op = {p.op: p for p in predictions}
    shapes, k, bf16 = [(8, 4), (2, 40), (4,)], 29, torch.bfloat16
    assert small_set.k == k
    assert by_op["topk"].deftx == Cost(topk.bytes_moved(shapes, k, bf16))
    assert by_op["topk"].baseline == Cost(topk.baseline_bytes_moved(shapes, k, bf16))
    # q = rank + oversample = 3, clipped to min(m, n) = 2 for the 2 x 40 matrix
    expected_bytes = (rsvd.bytes_moved(8, 4, 3, 1, weight_bytes=2, has_base=True)
                      + rsvd.bytes_moved(2, 40, 2, 1, weight_bytes=2, has_base=True))
    expected_flops = rsvd.flops(8, 4, 3, 1, has_base=True) + rsvd.flops(2, 40, 2, 1, has_base=True)
    assert by_op["rsvd"].deftx == Cost(expected_bytes, expected_flops, "fp32")
    assert by_op["reconstruct_abs"].deftx.bytes == rsvd.reconstruct_bytes_moved(8, 4, 2) + rsvd.reconstruct_bytes_moved(
        2, 40, 2)
    nnz = [8, 20, 1]  # 29 entries over 32, 80, 4 elements in proportion
    assert spread_entries([32, 80, 4], 29) == nnz
    assert by_op["scatter"].deftx == Cost(scatter.bytes_moved(shapes, nnz, bf16, num_diffs=2, save=True))
    assert by_op["masked_step"].deftx == Cost(masked_step.bytes_moved(29, 116, param_bytes=2), masked_step.flops(29),
                                              "fp32")
    assert by_op["masked_step"].baseline.bytes == masked_step.baseline_bytes_moved(116, param_bytes=2)


def test_prediction_rows_are_consistent(small_set):
    for p in predict(small_set)[0]:
        row = p.as_dict(H100_SXM)
        peak = H100_SXM.peak_flops[p.deftx.precision] if p.deftx.precision else float("inf")
        assert row["deftx"]["time_s"] == pytest.approx(max(p.deftx.bytes / 3.35e12, p.deftx.flops / peak))
        assert row["predicted_speedup"] == pytest.approx(row["baseline"]["time_s"] / row["deftx"]["time_s"])
        assert row["deftx"]["bytes"] > 0 and row["baseline"]["bytes"] > 0


def test_unknown_op_raises(small_set):
    with pytest.raises(ValueError, match="unknown op"):
        predict(small_set, ("fft",))
