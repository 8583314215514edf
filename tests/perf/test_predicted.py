"""Predicted vs measured: the profile roofline mapped onto bench documents (no GPU needed)."""

from __future__ import annotations

import math

import pytest
import torch

from deftx.ops.cost import masked_step, rsvd
from deftx.perf.predicted import (
    bench_workload,
    choose_target,
    detect_target,
    doc_shape_set,
    op_costs,
    predict_suite,
)
from deftx.perf.report import PREDICTED_COLUMNS, predicted_lines, predicted_markdown, predicted_table
from deftx.perf.shapes import BUILTIN_SHAPE_SETS, ShapeSet, TensorShape
from deftx.perf.targets import A100_80GB_SXM, H100_SXM, H200_SXM

K = 0.25
RANK, OVERSAMPLE, N_ITER = 4, 2, 1
SHAPES = ShapeSet(
    "hand",
    tensors=(
        TensorShape("embed", (48, 16), vocab=True),
        TensorShape("types", (2, 16)),
        TensorShape("norm", (16,)),
        TensorShape("empty", (0, 16)),
    ),
    num_layers=2,
    layer_tensors=(TensorShape("q", (16, 16)), TensorShape("ffn", (40, 16)), TensorShape("b", (40,))),
)
"""Every numel is a multiple of 4, so K = 25% puts exactly numel / 4 entries on each tensor."""

NUMELS = [768, 32, 16, 0, 256, 640, 40, 256, 640, 40]
ELEMENT_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
RADIX_PASSES = {"fp32": 4, "fp16": 3, "bf16": 2}
"""Radix passes of deftx's top-k (deftx.kernels.topk docstring): they read the candidate list."""


def _result(op, impl, name, role, k, seconds, auto=False):
    return {"op": op, "impl": impl, "name": name, "role": role, "k_fraction": k, "time_s": seconds, "auto": auto}


def _doc(dtype="fp32", device="cpu", gpu=None):
    """A synthetic suite document on SHAPES: every op, all implementations, one failed row."""
    results = [
        _result("topk", "deftx:native", "deftx[native]", "deftx", K, 2e-3, auto=True),
        _result("topk", "deftx:torch", "deftx[torch]", "deftx", K, 8e-3),
        _result("topk", "cat_topk", "torch.cat+topk", "baseline", K, 5e-3),
        _result("topk", "cat_kthvalue", "torch.cat+kthvalue", "baseline", K, 6e-3),
        _result("rsvd", "deftx:torch", "deftx[torch]", "deftx", None, 0.1, auto=True),
        _result("rsvd", "svd_lowrank", "torch.svd_lowrank", "baseline", None, 0.2),
        _result("rsvd", "linalg_svd", "torch.linalg.svd", "baseline", None, 3.0),
        _result("scatter", "deftx:native", "deftx[native]", "deftx", K, 1e-4, auto=True),
        _result("scatter", "index_add", "index_add_ loop", "baseline", K, 3e-4),
        _result("scatter", "dense_add", "densify + add", "baseline", K, 9e-4),
        _result("step", "deftx:torch", "deftx[torch]", "deftx", K, 4e-4, auto=True),
        _result("step", "adamw", "torch.optim.AdamW", "baseline", K, 2e-3),
        {**_result("step", "adamw_fused", "AdamW(fused=True)", "baseline", K, 0.0), "error": "RuntimeError: no"},
    ]
    machine = {"cpu": "test cpu", **({"gpu": gpu} if gpu else {})}
    return {
        "device": device,
        "machine": machine,
        "config": {"dtype": dtype, "rank": RANK, "oversample": OVERSAMPLE, "n_iter": N_ITER},
        "shape_set": {"name": SHAPES.name, "parameters": SHAPES.numel, "tensors": len(SHAPES.flat())},
        "results": results,
    }


def _rows(section, op):
    return {r["impl"]: r for r in section["rows"] if r["op"] == op}


def _sectors(numel: int, entries: int, element_bytes: int) -> float:
    """Expected 32-byte sectors holding at least one of ``entries`` uniform positions."""
    if numel == 0 or entries == 0:
        return 0.0
    per_sector = 32 // element_bytes
    return math.ceil(numel / per_sector) * (1 - (1 - entries / numel) ** per_sector)


def _hand_topk_bytes(dtype: str) -> tuple[float, float]:
    """deftx: 2 full passes + the list (every entry: these tensors are below the list's minimum
    slack) written once and read P + 2 times, 8 B per entry + 8 B per index + 128 B per
    16384-element block; baseline as the bench runs it: cat (read, write) + abs_ (read, write) +
    (digits + 1) reads + values and indices, no sort."""
    n, e = sum(NUMELS), ELEMENT_BYTES[dtype]
    k = round(K * n)
    blocks = sum(math.ceil(x / 16384) for x in NUMELS)
    deftx = 2 * n * e + 8 * n * (1 + RADIX_PASSES[dtype] + 2) + 8 * k + blocks * 128
    baseline = 4 * n * e + (e + 1) * n * e + k * (e + 8)
    return deftx, baseline


def _hand_scatter_bytes(dtype: str) -> dict[str, float]:
    """One diff of numel / 4 fp32 values per tensor: sectors read and written + 12 B payload per entry
    (index_add: + the scaled values written and read, + their cast to a 16-bit dtype written and read)."""
    e = ELEMENT_BYTES[dtype]
    out = {"deftx": 0.0, "dense_add": 0.0, "index_add": 0.0}
    for n in NUMELS:
        nnz = n // 4
        out["deftx"] += 64 * _sectors(n, nnz, e) + 12 * nnz
        out["dense_add"] += 4 * n + 12 * nnz + 64 * _sectors(n, nnz, 4) + 12 * n + 2 * e * n
        cast = 0 if dtype == "fp32" else e
        out["index_add"] += 12 * nnz + 2 * nnz * (4 + cast) + 64 * _sectors(n, nnz, e)
    return out


@pytest.mark.parametrize("target", [H100_SXM, A100_80GB_SXM], ids=lambda t: t.arch)
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_topk_prediction_is_bytes_over_the_datasheet_bandwidth(dtype, target) -> None:
    section = predict_suite(_doc(dtype), target, SHAPES)
    rows = _rows(section, "topk")
    deftx, baseline = _hand_topk_bytes(dtype)
    for impl in ("deftx:native", "deftx:torch"):
        assert rows[impl]["predicted_bytes"] == deftx
        assert rows[impl]["predicted_time_s"] == pytest.approx(deftx / target.hbm_bytes_per_s, rel=1e-12)
        assert rows[impl]["bound"] == "memory"
    assert rows["cat_topk"]["predicted_time_s"] == pytest.approx(baseline / target.hbm_bytes_per_s, rel=1e-12)
    assert rows["cat_topk"]["predicted_speedup"] == pytest.approx(baseline / deftx, rel=1e-12)
    assert rows["cat_topk"]["measured_speedup"] == pytest.approx(5e-3 / 2e-3)
    assert rows["cat_topk"]["deftx_reference"] == "deftx[native]"


@pytest.mark.parametrize("target", [H100_SXM, A100_80GB_SXM], ids=lambda t: t.arch)
@pytest.mark.parametrize("dtype", ["fp32", "bf16", "fp16"])
def test_scatter_prediction_is_bytes_over_the_datasheet_bandwidth(dtype, target) -> None:
    rows = _rows(predict_suite(_doc(dtype), target, SHAPES), "scatter")
    expected = {key: round(nbytes) for key, nbytes in _hand_scatter_bytes(dtype).items()}  # the model rounds
    for impl, key in (("deftx:native", "deftx"), ("dense_add", "dense_add"), ("index_add", "index_add")):
        assert rows[impl]["predicted_bytes"] == expected[key], impl
        assert rows[impl]["predicted_time_s"] == pytest.approx(expected[key] / target.hbm_bytes_per_s, rel=1e-12)
    assert rows["dense_add"]["predicted_speedup"] == pytest.approx(expected["dense_add"] / expected["deftx"], rel=1e-12)
    assert rows["index_add"]["measured_speedup"] == pytest.approx(3e-4 / 1e-4)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_rsvd_and_step_use_the_kernel_models_on_the_benched_tensors(dtype) -> None:
    section = predict_suite(_doc(dtype), H100_SXM, SHAPES)
    e, q = ELEMENT_BYTES[dtype], RANK + OVERSAMPLE
    factored = [(48, 16), (16, 16), (40, 16), (16, 16), (40, 16)]  # types (2 x 16) and empty: min <= q
    rsvd_bytes = sum(rsvd.bytes_moved(m, n, q, N_ITER, weight_bytes=e, has_base=True) for m, n in factored)
    rsvd_flops = sum(rsvd.flops(m, n, q, N_ITER, has_base=True) for m, n in factored)
    row = _rows(section, "rsvd")["deftx:torch"]
    assert row["predicted_bytes"] == rsvd_bytes and row["predicted_flops"] == round(rsvd_flops)
    assert row["predicted_time_s"] == pytest.approx(max(rsvd_bytes / 3.35e12, rsvd_flops / 67e12))
    n, k = sum(NUMELS), round(K * sum(NUMELS))
    step = _rows(section, "step")
    assert step["deftx:torch"]["predicted_bytes"] == round(masked_step.bytes_moved(k, n, param_bytes=e))
    assert step["adamw"]["predicted_bytes"] == n * 7 * e
    assert "adamw_fused" not in step  # its measurement failed: no row


def test_ratios_are_positive_finite_and_unmodelled_baselines_have_none() -> None:
    section = predict_suite(_doc(), H100_SXM, SHAPES)
    assert len(section["rows"]) == 12
    for row in section["rows"]:
        if row["impl"] in ("cat_kthvalue", "linalg_svd"):
            assert row["predicted_time_s"] is None and row["measured_over_predicted"] is None
            assert "no roofline model" in row["note"]
            continue
        ratio = row["measured_over_predicted"]
        assert math.isfinite(ratio) and ratio > 0
        assert ratio == pytest.approx(row["measured_time_s"] / row["predicted_time_s"])
    pairs = {(c["op"], c["deftx"], c["baseline"]): c for c in section["comparisons"]}
    assert len(pairs) == 9  # topk 2 deftx x 2 baselines, rsvd 2, scatter 2, step 1
    slow = pairs[("topk", "deftx[torch]", "torch.cat+topk")]
    assert slow["measured_speedup"] == pytest.approx(5e-3 / 8e-3)
    assert pairs[("rsvd", "deftx[torch]", "torch.linalg.svd")]["predicted_speedup"] is None
    assert section["target"]["arch"] == "sm_90" and section["measured_on"] == "cpu (test cpu)"


@pytest.mark.parametrize(
    ("name", "arch"),
    [
        ("NVIDIA H100 80GB HBM3", "sm_90"),
        ("NVIDIA H100 PCIe", "sm_90"),
        ("NVIDIA A100-SXM4-80GB", "sm_80"),
        ("NVIDIA A100-PCIE-40GB", "sm_80"),
        ("NVIDIA H200", "sm_90"),
        ("NVIDIA L40S", None),
        ("", None),
        (None, None),
    ],
)
def test_detect_target_from_the_cuda_device_name(name, arch) -> None:
    target = detect_target(name)
    assert (target.arch if target else None) == arch


def test_choose_target_explicit_detected_and_none() -> None:
    target, choice = choose_target(_doc(), "90")
    assert target is H100_SXM and "--predict-target 90" in choice
    target, choice = choose_target(_doc(device="cuda", gpu="NVIDIA A100-SXM4-80GB"))
    assert target is A100_80GB_SXM and "detected" in choice and "differs" not in choice
    target, choice = choose_target(_doc(device="cuda:1", gpu="NVIDIA H100 PCIe"))
    assert target is H100_SXM and "bandwidth differs" in choice
    target, choice = choose_target(_doc(device="cuda", gpu="NVIDIA H200"))
    assert target is H200_SXM and "detected" in choice and "H200 SXM" in choice and "differs" not in choice
    target, choice = choose_target(_doc(device="cuda", gpu="NVIDIA GH200 480GB"))
    assert target is H200_SXM and "bandwidth differs" in choice
    target, choice = choose_target(_doc(device="cuda", gpu="NVIDIA L40S"))
    assert target is None and "no roofline target for GPU 'NVIDIA L40S'" in choice and "h200" in choice
    target, choice = choose_target(_doc())
    assert target is None and "measured on cpu" in choice


@pytest.mark.parametrize("name", ["sm_70", "l40s", ""])
def test_unknown_target_names_raise(name) -> None:
    with pytest.raises(ValueError, match="unknown target"):
        choose_target(_doc(), name)


def test_no_target_gives_an_empty_section_that_says_why() -> None:
    _, choice = choose_target(_doc(device="cuda", gpu="NVIDIA L40S"))
    doc = {**_doc(device="cuda", gpu="NVIDIA L40S")}
    doc["predicted"] = predict_suite(doc, None, SHAPES, choice)
    assert doc["predicted"]["rows"] == [] and doc["predicted"]["target"] is None
    assert predicted_table(doc) == []
    assert predicted_lines(doc) == [f"predicted vs measured: no target ({choice})"]
    assert "|" not in predicted_markdown(doc)


def test_report_table_and_markdown() -> None:
    doc = _doc()
    doc["predicted"] = predict_suite(doc, H100_SXM, SHAPES, "--predict-target sm_90")
    rows = predicted_table(doc)
    assert len(rows) == 12 and all(len(r) == len(PREDICTED_COLUMNS) for r in rows)
    kth = next(r for r in rows if r[3] == "torch.cat+kthvalue")
    assert kth[:4] == ["topk", "hand", "25%", "torch.cat+kthvalue"] and kth[5:8] == ["-", "-", "-"]
    assert kth[8] == "3.00x" and kth[9] == "-"
    # topk fp32: 2 passes over 2,688 scores + the list (all 2,688 entries, 8 B, 7 times) + 8 B x 672
    # indices + 9 blocks x 128 B = 178,560 B in 53 ns
    assert rows[0][3:8] == ["deftx[native]", "2.0 ms", "53 ns", "37,522x", "memory"]
    assert predicted_lines(doc)[0] == (
        "predicted for NVIDIA H100 SXM (sm_90: 3.35 TB/s HBM, fp32 67 TFLOP/s), measured on cpu (test cpu)"
    )
    markdown = predicted_markdown(doc)
    assert markdown.startswith("## Predicted vs measured\n")
    assert "| op | shapes | K | impl | measured time | predicted time |" in markdown


def test_doc_shape_set_rebuilds_built_ins_and_rejects_the_rest() -> None:
    scaled = BUILTIN_SHAPE_SETS["mbert"].scaled(0.25)
    doc = {"shape_set": {"name": "mbert", "scale": 0.25, "parameters": scaled.numel}}
    assert doc_shape_set(doc) == scaled
    with pytest.raises(ValueError, match="pass the shape set"):
        doc_shape_set({"shape_set": {"name": "mbert", "scale": 0.5, "parameters": scaled.numel}})
    with pytest.raises(ValueError, match="unknown shape set"):
        doc_shape_set({"shape_set": {"name": "hand", "scale": 1.0, "parameters": SHAPES.numel}})
    with pytest.raises(ValueError, match="the document"):
        predict_suite(_doc(), H100_SXM, SHAPES.scaled(0.5))


def test_bench_workload_maps_the_workload_and_rejects_bad_input() -> None:
    mapped = bench_workload(SHAPES, "scatter", dtype="bf16", k_fraction=K, rank=8, oversample=0, n_iter=0)
    assert [p.shape for p in mapped.eligible] == [t.shape for t in SHAPES.flat()]
    assert mapped.k == round(K * SHAPES.numel) and mapped.torch_dtype == torch.bfloat16
    assert mapped.settings.num_diffs == 1 and not mapped.settings.l1
    assert set(op_costs(mapped, "scatter")) == {"deftx", "dense_add", "index_add"}
    with pytest.raises(ValueError, match="unknown bench op"):
        bench_workload(SHAPES, "sort", dtype="fp32", k_fraction=K, rank=8, oversample=0, n_iter=0)
    with pytest.raises(ValueError, match="needs a K"):
        bench_workload(SHAPES, "topk", dtype="fp32", k_fraction=None, rank=8, oversample=0, n_iter=0)
    with pytest.raises(ValueError, match="dtype must be"):
        bench_workload(SHAPES, "topk", dtype="fp64", k_fraction=K, rank=8, oversample=0, n_iter=0)
    with pytest.raises(ValueError, match="unknown bench op"):
        op_costs(mapped, "masked_step")


def test_the_prepared_step_is_predicted_with_the_masked_step_model() -> None:
    # deftx_prepared runs the same masked AdamW step (checked once): K entries, not a dense step.
    doc = _doc()
    doc["results"].append(_result("step", "deftx_prepared", "deftx checked once", "baseline", K, 3e-4))
    step = _rows(predict_suite(doc, H100_SXM, SHAPES), "step")
    n, k = sum(NUMELS), round(K * sum(NUMELS))
    prepared = step["deftx_prepared"]
    assert prepared["predicted_bytes"] == round(masked_step.bytes_moved(k, n, param_bytes=4))
    assert prepared["measured_over_predicted"] == pytest.approx(3e-4 / step["deftx:torch"]["predicted_time_s"])
    assert prepared["predicted_speedup"] == pytest.approx(1.0)
