"""Predicted vs measured: the static roofline of ``deftx profile --static`` next to ``deftx bench``.

For every measured row of a suite document (op, K, implementation) this module gives the
time :mod:`deftx.perf.roofline` predicts for the same shapes, K and dtype on a datasheet
target (:mod:`deftx.perf.targets`)::

    predicted = max(bytes / HBM bandwidth, FLOPs / peak FLOP/s)

and ``measured / predicted``: how many times slower than that lower bound the
implementation ran (1 = at the roofline; a CPU run compared with a GPU target is labelled
as such). For each baseline row it also gives deftx's speedup over it, measured and
predicted.

The bench runs on every tensor of its :class:`~deftx.perf.shapes.ShapeSet`, so the
prediction's :class:`~deftx.perf.workload.Workload` is mapped explicitly:

* bench ``topk`` / ``scatter`` / ``step`` run over every tensor, so every tensor is eligible
  (norms included) and K = ``round(k_fraction * N)`` (the bench draws K uniform positions with
  replacement for scatter / step, :func:`~deftx.perf.synthetic.sparse_indices`: a share of about
  ``k_fraction / 2`` fewer after deduplication);
* bench ``rsvd`` factors the matrices with ``min(m, n) > rank + oversample``: only those
  are in the workload (q = rank + oversample, the suite's ``n_iter``, Δ = W1 − W0);
* op names: ``step`` is the profile's ``masked_step``; bench ``scatter`` applies one diff
  without saving originals, so its costs come from ``deftx.ops.cost.scatter`` with
  ``num_diffs=1, save=False`` (the profile's scatter composes two diffs and saves).

Which baselines have a model: ``torch.cat+topk`` (cat + abs_ + topk, no sort, as the bench runs
it: ``deftx.ops.cost.topk.cat_abs_topk_bytes_moved``; the profile's baseline also sorts),
``torch.svd_lowrank``, ``densify + add`` and ``index_add_ loop``, and both AdamW steps
(fused or not, the same HBM traffic). The step's ``deftx_prepared`` row (the same masked
step, checked once) has deftx's model. ``torch.cat+kthvalue`` and ``torch.linalg.svd``
have none: their rows carry no prediction.

The target is chosen by :func:`choose_target`: explicitly (``deftx bench --predict-target
sm_90``, ``h200``), else from the CUDA device name recorded in the document (H200 -> H200 SXM,
H100 -> H100 SXM, A100 -> A100 80GB SXM); any other GPU, and a CPU run, get no target and a note.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from deftx.ops.registry import op_entry
from deftx.perf.cases.scores import TENSOR_CORES, tensor_core_precision
from deftx.perf.roofline import PREDICTORS, Cost, spread_entries
from deftx.perf.shapes import ShapeSet, load_shape_set
from deftx.perf.targets import A100_80GB_SXM, H100_SXM, H200_SXM, PRODUCTS, TARGETS, Target, get_target
from deftx.perf.workload import DTYPES, OpSettings, Workload

PROFILE_OPS: dict[str, str] = {
    "topk": "topk",
    "rsvd": "rsvd",
    "scatter": "scatter",
    "step": "masked_step",
    "compose": "scatter",
    "scores": "rsvd+reconstruct_abs",
}
"""bench op -> the :mod:`deftx.perf.roofline` op it is modelled by (``scores``: the sum of two)."""

MATRIX_OPS = frozenset({"rsvd", "scores"})
"""bench ops that run on the matrices with ``min(m, n) > rank + oversample`` only, with no K."""

NUM_DIFFS: dict[str, int] = {"compose": 2}
"""SFTs composed per call where it is not one (bench ``compose``: the profile's 2, originals saved)."""

PROFILE_BASELINES: dict[str, tuple[str, ...]] = {
    "rsvd": ("svd_lowrank",),
    "step": ("adamw", "adamw_fused"),
}
"""bench baselines modelled by the profile prediction's single baseline (topk, scatter: see module doc)."""

PROFILE_DEFTX_VARIANTS: dict[str, tuple[str, ...]] = {"step": ("deftx_prepared",)}
"""bench implementations listed with the baselines that run deftx's op itself, modelled as deftx."""

GPU_TARGETS: tuple[tuple[str, Target], ...] = (("H200", H200_SXM), ("H100", H100_SXM), ("A100", A100_80GB_SXM))
"""Substring of a CUDA device name -> its datasheet target."""

VARIANT_MARKERS: tuple[str, ...] = ("PCIE", "NVL", "40GB", "GH200")
"""Name parts of product variants whose bandwidth differs from the target's SXM datasheet (a GH200's
HBM is 4.0 or 4.9 TB/s, not the H200 SXM's 4.8)."""

DEFTX = "deftx"

ModelledCost = tuple[Cost, str]
"""A cost and the model it comes from."""


def known_targets() -> str:
    """``sm_80 (NVIDIA A100 80GB SXM), sm_90 (NVIDIA H100 SXM), h200 (NVIDIA H200 SXM)``."""
    def shown(name: str, target: Target) -> str:
        return next((arch for arch, compiled in TARGETS.items() if compiled is target), name)

    return ", ".join(f"{shown(name, t)} ({t.gpu})" for name, t in PRODUCTS.items())


def detect_target(gpu_name: str | None) -> Target | None:
    """The target of a CUDA device name (``torch.cuda.get_device_properties(...).name``).

    ``"NVIDIA H100 80GB HBM3"`` -> H100 SXM (sm_90), ``"NVIDIA A100-SXM4-80GB"`` -> A100
    80GB SXM (sm_80), ``"NVIDIA H200"`` -> H200 SXM (sm_90); None for any other name (L40S, a
    CPU's None, ...).
    """
    name = (gpu_name or "").upper()
    return next((target for part, target in GPU_TARGETS if part in name), None)


def choose_target(doc: dict[str, Any], name: str | None = None) -> tuple[Target | None, str]:
    """The target for a suite document and a sentence saying how it was chosen.

    ``name`` (``"sm_90"``, ``"sm_80"``, ``"90"``, ...) wins; otherwise a CUDA run's device
    name is matched by :func:`detect_target`.

    Raises:
        ValueError: ``name`` is not a known target.
    """
    if name is not None:
        target = get_target(name)
        return target, f"--predict-target {name}: {target.gpu} ({target.arch})"
    gpu = doc["machine"].get("gpu")
    if not str(doc["device"]).startswith("cuda") or not gpu:
        return None, f"measured on {doc['device']}: no GPU to predict for; pass --predict-target ({known_targets()})"
    target = detect_target(gpu)
    if target is None:
        return None, f"no roofline target for GPU {gpu!r} (known: {known_targets()}); pass --predict-target"
    choice = f"detected from the GPU name {gpu!r}: {target.gpu} ({target.arch})"
    if any(marker in gpu.upper() for marker in VARIANT_MARKERS):
        choice += f"; the datasheet figures are the {target.gpu}'s, this variant's bandwidth differs"
    return target, choice


def doc_shape_set(doc: dict[str, Any]) -> ShapeSet:
    """The bench shape set a document was measured on, rebuilt from its built-in name and scale.

    Raises:
        ValueError: the set is not a built-in (a custom file: pass the set itself), or the
            rebuilt set's parameter count differs from the document's.
    """
    info = doc["shape_set"]
    shapes = load_shape_set(info["name"]).scaled(info.get("scale", 1.0))
    if shapes.numel != info["parameters"]:
        raise ValueError(
            f"shape set {info['name']!r} at scale {info.get('scale', 1.0)} has {shapes.numel:,} parameters, "
            f"the document {info['parameters']:,}: pass the shape set the suite ran on"
        )
    return shapes


def bench_workload(
    shapes: ShapeSet,
    op: str,
    *,
    dtype: str,
    k_fraction: float | None,
    rank: int,
    oversample: int,
    n_iter: int,
) -> Workload:
    """The :class:`~deftx.perf.workload.Workload` of bench ``op`` on ``shapes``.

    Every tensor is eligible, norms included (rsvd: only the matrices the bench factors,
    ``min(m, n) > rank + oversample``); ``dtype`` in fp32 / bf16 / fp16; ``k_fraction``
    (None for rsvd) becomes the profile's K; one diff, no L1.
    """
    if op not in PROFILE_OPS:
        raise ValueError(f"unknown bench op {op!r}; known: {', '.join(PROFILE_OPS)}")
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    if op not in MATRIX_OPS and k_fraction is None:
        raise ValueError(f"bench op {op!r} needs a K fraction")
    if op in MATRIX_OPS:
        tensors = [t for t in shapes.matrices() if min(t.shape) > rank + oversample]
    else:
        tensors = list(shapes.flat())
    settings = OpSettings(
        k_fraction=k_fraction if k_fraction is not None else OpSettings.k_fraction,
        rank=rank,
        oversample=oversample,
        n_iter=n_iter,
        num_diffs=NUM_DIFFS.get(op, 1),
        l1=False,
    )
    eligible = ShapeSet(shapes.name, tuple(replace(t, frozen=False) for t in tensors))
    return Workload(eligible, dtype, settings, shapes.note or "bench shape set")


def _scatter_costs(shape_set: Workload) -> dict[str, ModelledCost]:
    """One diff of K entries spread over the tensors by size, values fp32, no originals saved."""
    scatter = op_entry("scatter").cost_model()
    shapes = [p.shape for p in shape_set.eligible]
    nnz = spread_entries([p.numel for p in shape_set.eligible], shape_set.k)
    dtype = shape_set.torch_dtype
    return {
        DEFTX: (Cost(scatter.bytes_moved(shapes, nnz, dtype)), "deftx.ops.cost.scatter.bytes_moved (1 diff, no save)"),
        "dense_add": (
            Cost(scatter.baseline_bytes_moved(shapes, nnz, dtype, method="dense")),
            "deftx.ops.cost.scatter.baseline_bytes_moved(method='dense')",
        ),
        "index_add": (
            Cost(scatter.baseline_bytes_moved(shapes, nnz, dtype, method="index_add")),
            "deftx.ops.cost.scatter.baseline_bytes_moved(method='index_add')",
        ),
    }


def _profile_costs(op: str) -> Callable[[Workload], dict[str, ModelledCost]]:
    def costs(shape_set: Workload) -> dict[str, ModelledCost]:
        prediction = PREDICTORS[PROFILE_OPS[op]](shape_set)
        where = f"deftx.perf.roofline {prediction.op}"
        deftx = (prediction.deftx, f"{where}: {prediction.workload}")
        baseline = (prediction.baseline, f"{where} baseline: {prediction.baseline_name}")
        variants = dict.fromkeys(PROFILE_DEFTX_VARIANTS.get(op, ()), deftx)
        return {DEFTX: deftx, **variants, **dict.fromkeys(PROFILE_BASELINES.get(op, ()), baseline)}

    return costs


def _topk_costs(shape_set: Workload) -> dict[str, ModelledCost]:
    """The profile's top-k prediction for deftx; the bench's ``cat_topk`` (cat + abs_ + topk, no
    sort) by its own model."""
    topk = op_entry("topk").cost_model()
    shapes = [p.shape for p in shape_set.eligible]
    baseline = Cost(topk.cat_abs_topk_bytes_moved(shapes, shape_set.k, shape_set.torch_dtype))
    return {**_profile_costs("topk")(shape_set),
            "cat_topk": (baseline, "deftx.ops.cost.topk.cat_abs_topk_bytes_moved (cat + abs_ + topk, no sort)")}


def _compose_costs(shape_set: Workload) -> dict[str, ModelledCost]:
    """The profile's scatter prediction: 2 diffs, originals saved, against densify + add_."""
    prediction = PREDICTORS["scatter"](shape_set)
    where = f"deftx.perf.roofline scatter: {prediction.workload}"
    return {
        DEFTX: (prediction.deftx, where),
        "dense_compose": (prediction.baseline, f"{where}; baseline densify + add_"),
    }


def _scores_costs(shape_set: Workload) -> dict[str, ModelledCost]:
    """The profile's rsvd plus reconstruct_abs predictions (fp32 products), summed."""
    factor, recon = PREDICTORS["rsvd"](shape_set), PREDICTORS["reconstruct_abs"](shape_set)

    def total(a: Cost, b: Cost) -> Cost:
        return Cost(a.bytes + b.bytes, a.flops + b.flops, a.precision)

    where = f"deftx.perf.roofline rsvd + reconstruct_abs: {factor.workload}"
    deftx = total(factor.deftx, recon.deftx)
    fast = _on_tensor_cores(deftx, tensor_core_precision(shape_set.torch_dtype))
    return {
        DEFTX: (deftx, where),
        TENSOR_CORES: (fast, f"{where}; {TENSOR_CORE_MODEL}"),
        "svd_lowrank_abs": (total(factor.baseline, recon.baseline), f"{where}; baseline svd_lowrank + (us @ vh).abs()"),
    }


TENSOR_CORE_MODEL = "tensor-core products: fp32 weights as 3 TF32 products (tf32x3), bf16 / fp16 weights at bf16"
TENSOR_CORE_PEAKS: dict[str, tuple[int, str]] = {"tf32x3": (3, "tf32"), "bf16": (1, "bf16")}
"""Product precision -> (tensor-core products per product, the peak they run at)."""


def _on_tensor_cores(cost: Cost, precision: str) -> Cost:
    """``cost`` with its products at ``precision`` (the scores case's choice for the weights):
    tf32x3 as three TF32 products, bf16 at the bf16 peak; the same bytes."""
    products, peak = TENSOR_CORE_PEAKS[precision]
    return Cost(cost.bytes, products * cost.flops, peak)


COST_MODELS: dict[str, Callable[[Workload], dict[str, ModelledCost]]] = {
    "topk": _topk_costs,
    "rsvd": _profile_costs("rsvd"),
    "scatter": _scatter_costs,
    "step": _profile_costs("step"),
    "compose": _compose_costs,
    "scores": _scores_costs,
}
"""bench op -> ``{"deftx" or baseline impl: (cost, model)}`` on the op's profile shape set."""


def op_costs(shape_set: Workload, op: str) -> dict[str, ModelledCost]:
    """The modelled costs of bench ``op`` on ``shape_set``: key ``"deftx"`` for deftx's op (every
    backend) and one key per modelled baseline implementation (``cat_topk``, ...)."""
    if op not in COST_MODELS:
        raise ValueError(f"unknown bench op {op!r}; known: {', '.join(COST_MODELS)}")
    return COST_MODELS[op](shape_set)


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator <= 0 or numerator <= 0:
        return None
    ratio = numerator / denominator
    return ratio if math.isfinite(ratio) else None


def _reference_deftx(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The deftx row baselines are compared with: the ``auto`` backend's, else the first."""
    deftx = [r for r in rows if r["role"] == "deftx"]
    return next((r for r in deftx if r.get("auto")), deftx[0] if deftx else None)


def _row_prediction(
    result: dict[str, Any], costs: dict[str, ModelledCost] | None, missing: str, target: Target
) -> dict[str, Any]:
    key = DEFTX if result["role"] == "deftx" else result["impl"]
    row: dict[str, Any] = {
        "op": result["op"],
        "profile_op": PROFILE_OPS[result["op"]],
        "k_fraction": result["k_fraction"],
        "impl": result["impl"],
        "name": result["name"],
        "role": result["role"],
        "measured_time_s": result["time_s"],
    }
    if costs is None or key not in costs:
        return {**row, "predicted_time_s": None, "measured_over_predicted": None,
                "model": None, "note": missing or "no roofline model of this implementation"}
    cost, model = costs[key]
    predicted = cost.as_dict(target)
    return {
        **row,
        "predicted_time_s": predicted["time_s"],
        "measured_over_predicted": _ratio(result["time_s"], predicted["time_s"]),
        "predicted_bytes": predicted["bytes"],
        "predicted_flops": predicted["flops"],
        "flop_precision": predicted["flop_precision"],
        "bound": predicted["bound"],
        "model": model,
    }


def _case_costs(
    shapes: ShapeSet, config: dict[str, Any], op: str, k_fraction: float | None
) -> tuple[dict[str, ModelledCost] | None, str]:
    """The case's costs, or None and why (a kernel module that cannot be imported here)."""
    workload = bench_workload(
        shapes,
        op,
        dtype=config["dtype"],
        k_fraction=k_fraction,
        rank=config["rank"],
        oversample=config["oversample"],
        n_iter=config["n_iter"],
    )
    try:
        return op_costs(workload, op), ""
    except ImportError as err:
        return None, f"no model: {type(err).__name__}: {err}"


def predict_suite(
    doc: dict[str, Any], target: Target | None, shapes: ShapeSet | None = None, choice: str = ""
) -> dict[str, Any]:
    """The ``"predicted"`` section of a suite document (schema ``deftx-bench/1``).

    Args:
        doc: a :func:`deftx.perf.suite.run_suite` document.
        target: the datasheet target; None gives a section with no rows and ``choice`` as
            the reason.
        shapes: the (scaled) bench shape set the suite ran on; None rebuilds it from the
            document (built-in sets only, :func:`doc_shape_set`).
        choice: how the target was chosen (:func:`choose_target`).

    Returns:
        ``target`` (arch, gpu, datasheet bandwidth and peaks) or None, ``choice``,
        ``measured_on``, ``rows`` (one per measured implementation: measured and predicted
        seconds, ``measured_over_predicted``, bytes, FLOPs, bound, model, and for baselines
        ``deftx_reference``, ``measured_speedup``, ``predicted_speedup``, None on deftx rows) and
        ``comparisons`` (every deftx backend x baseline pair of the document).
    """
    machine = doc["machine"]
    section: dict[str, Any] = {
        "target": None,
        "choice": choice,
        "measured_on": f"{doc['device']} ({machine.get('gpu') or machine.get('cpu', 'unknown')})",
        "method": "predicted = max(bytes / datasheet HBM bandwidth, FLOPs / datasheet peak) "
        "(deftx.perf.roofline, a lower bound); measured = median seconds",
        "rows": [],
        "comparisons": [],
    }
    if target is None:
        return section
    shapes = shapes if shapes is not None else doc_shape_set(doc)
    documented = doc["shape_set"]["parameters"]
    if shapes.numel != documented:
        raise ValueError(f"shape set {shapes.name!r} has {shapes.numel:,} parameters, the document {documented:,}")
    section["target"] = {
        "arch": target.arch,
        "gpu": target.gpu,
        "hbm_bytes_per_s": target.hbm_bytes_per_s,
        "peak_flops": dict(target.peak_flops),
    }
    measured = [r for r in doc["results"] if "error" not in r and "skipped" not in r]
    cases = list(dict.fromkeys((r["op"], r["k_fraction"]) for r in measured))
    for op, k_fraction in cases:
        costs, missing = _case_costs(shapes, doc["config"], op, k_fraction)
        case = [r for r in measured if (r["op"], r["k_fraction"]) == (op, k_fraction)]
        rows = [_row_prediction(r, costs, missing, target) for r in case]
        reference = _reference_deftx(rows)
        for row in rows:
            compared = row["role"] == "baseline" and reference is not None
            row["deftx_reference"] = reference["name"] if compared else None
            row["measured_speedup"] = _ratio(row["measured_time_s"], reference["measured_time_s"]) if compared else None
            row["predicted_speedup"] = (
                _ratio(row["predicted_time_s"], reference["predicted_time_s"]) if compared else None
            )
        section["rows"] += rows
        for d in (r for r in rows if r["role"] == "deftx"):
            section["comparisons"] += [
                {
                    "op": op,
                    "k_fraction": k_fraction,
                    "deftx": d["name"],
                    "baseline": b["name"],
                    "measured_speedup": _ratio(b["measured_time_s"], d["measured_time_s"]),
                    "predicted_speedup": _ratio(b["predicted_time_s"], d["predicted_time_s"]),
                }
                for b in rows
                if b["role"] == "baseline"
            ]
    return section
