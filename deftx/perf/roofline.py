"""Roofline prediction: each op's time on a target from the bytes it must move and its FLOPs.

``predicted time = max(bytes / HBM bandwidth, FLOPs / peak FLOP/s)`` with the target's
datasheet figures (:mod:`deftx.perf.targets`). Bytes and FLOPs come from the analytic
models of the op registry (``bytes_moved`` / ``flops`` in ``deftx.ops.cost.<op>``, pure Python)
and the same models for the dense torch baselines (``baseline_bytes_moved`` /
``baseline_flops``). This is a lower bound on time (perfect overlap, peak bandwidth), not a
measurement.

The ops of a shape set (:class:`~deftx.perf.model_shapes.ShapeSet`, N eligible entries of
element size e, K = k_fraction N):

* ``topk``: global top-K over all eligible tensors; baseline ``torch.cat`` + ``torch.topk``
  + sort of the indices. No FLOP model (integer compares): memory bound.
* ``rsvd``: randomized SVD of every eligible matrix's Δ = θ1 − θ0 with q = rank +
  oversample columns and n_iter power iterations (fp32 products: the CUDA-core fp32 peak);
  baseline ``torch.svd_lowrank`` of a materialised fp32 Δ.
* ``reconstruct_abs``: ``|U_r S_r V_rᵀ|`` of every matrix (the DeFT-X scores); baseline
  matmul then ``abs``.
* ``scatter``: composing ``num_diffs`` SFTs of K entries each (spread over the tensors in
  proportion to their size) with the originals saved for an exact revert; baseline
  densify-and-add.
* ``masked_step``: one sparse AdamW step on the K entries; baseline a dense AdamW step
  over the N eligible entries.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from deftx.ops.registry import op_entry
from deftx.perf.model_shapes import ShapeSet
from deftx.perf.targets import Target

OPS: tuple[str, ...] = ("topk", "rsvd", "reconstruct_abs", "scatter", "masked_step")


@dataclass(frozen=True)
class Cost:
    """HBM bytes and FLOPs of one op; ``precision`` names the peak the FLOPs run at
    (a key of ``Target.peak_flops``), None when there is no FLOP model."""

    bytes: float
    flops: float = 0.0
    precision: str | None = None

    def memory_time(self, target: Target) -> float:
        return self.bytes / target.hbm_bytes_per_s

    def compute_time(self, target: Target) -> float:
        return self.flops / target.peak_flops[self.precision] if self.precision else 0.0

    def time(self, target: Target) -> float:
        """Predicted seconds: ``max(bytes / bandwidth, flops / peak)``."""
        return max(self.memory_time(target), self.compute_time(target))

    def bound(self, target: Target) -> str:
        """``"memory"`` or ``"compute"``: which term of :meth:`time` is larger."""
        return "compute" if self.compute_time(target) > self.memory_time(target) else "memory"

    def as_dict(self, target: Target) -> dict[str, Any]:
        return {
            "bytes": round(self.bytes),
            "flops": round(self.flops),
            "flop_precision": self.precision,
            "time_s": self.time(target),
            "bound": self.bound(target),
        }


@dataclass(frozen=True)
class OpPrediction:
    """deftx's and the baseline's cost of one op on a shape set."""

    op: str
    workload: str
    deftx: Cost
    baseline: Cost
    baseline_name: str

    def as_dict(self, target: Target) -> dict[str, Any]:
        deftx_time, baseline_time = self.deftx.time(target), self.baseline.time(target)
        return {
            "op": self.op,
            "workload": self.workload,
            "deftx": self.deftx.as_dict(target),
            "baseline": {"name": self.baseline_name, **self.baseline.as_dict(target)},
            "predicted_speedup": baseline_time / deftx_time if deftx_time > 0 else None,
        }


def _element_bytes(shape_set: ShapeSet) -> int:
    return shape_set.torch_dtype.itemsize


def spread_entries(numels: list[int], k: int) -> list[int]:
    """K entries split over tensors in proportion to their size (largest remainders), sum K."""
    total = sum(numels)
    exact = [k * n / total for n in numels]
    counts = [int(x) for x in exact]
    order = sorted(range(len(numels)), key=lambda i: exact[i] - counts[i], reverse=True)
    for i in order[: k - sum(counts)]:
        counts[i] += 1
    return counts


def topk_prediction(shape_set: ShapeSet) -> OpPrediction:
    topk = op_entry("topk").cost_model()
    shapes = [p.shape for p in shape_set.eligible]
    k, dtype = shape_set.k, shape_set.torch_dtype
    return OpPrediction(
        "topk",
        f"top-{k:,} of {sum(p.numel for p in shape_set.eligible):,} entries in {len(shapes)} tensors",
        Cost(topk.bytes_moved(shapes, k, dtype)),
        Cost(topk.baseline_bytes_moved(shapes, k, dtype)),
        "torch.cat + torch.topk + sort",
    )


def _matrix_q(shape: tuple[int, ...], q: int) -> int:
    return min(q, *shape)


def rsvd_prediction(shape_set: ShapeSet) -> OpPrediction:
    rsvd = op_entry("rsvd").cost_model()
    s, e = shape_set.settings, _element_bytes(shape_set)
    deftx, baseline = Cost(0.0, 0.0, "fp32"), Cost(0.0, 0.0, "fp32")
    for p in shape_set.matrices:
        m, n = p.shape
        q = _matrix_q(p.shape, s.sketch_columns)
        deftx = Cost(deftx.bytes + rsvd.bytes_moved(m, n, q, s.n_iter, weight_bytes=e, has_base=True),
                     deftx.flops + rsvd.flops(m, n, q, s.n_iter, has_base=True), "fp32")
        baseline = Cost(baseline.bytes + rsvd.baseline_bytes_moved(m, n, q, s.n_iter, weight_bytes=e, has_base=True),
                        baseline.flops + rsvd.baseline_flops(m, n, q, s.n_iter, has_base=True), "fp32")
    return OpPrediction(
        "rsvd",
        f"{len(shape_set.matrices)} matrices, q = {s.rank}+{s.oversample}, n_iter = {s.n_iter}, fp32 products",
        deftx,
        baseline,
        "torch.svd_lowrank(w1.float() - w0.float())",
    )


def reconstruct_prediction(shape_set: ShapeSet) -> OpPrediction:
    rsvd = op_entry("rsvd").cost_model()
    rank = shape_set.settings.rank
    deftx, baseline = Cost(0.0, 0.0, "fp32"), Cost(0.0, 0.0, "fp32")
    for p in shape_set.matrices:
        m, n = p.shape
        r = _matrix_q(p.shape, rank)
        deftx = Cost(deftx.bytes + rsvd.reconstruct_bytes_moved(m, n, r),
                     deftx.flops + rsvd.reconstruct_flops(m, n, r), "fp32")
        baseline = Cost(baseline.bytes + rsvd.baseline_reconstruct_bytes_moved(m, n, r),
                        baseline.flops + rsvd.baseline_reconstruct_flops(m, n, r), "fp32")
    return OpPrediction(
        "reconstruct_abs",
        f"|U S Vh| of {len(shape_set.matrices)} matrices, rank {rank}",
        deftx,
        baseline,
        "(us @ vh).abs()",
    )


def scatter_prediction(shape_set: ShapeSet) -> OpPrediction:
    scatter = op_entry("scatter").cost_model()
    shapes = [p.shape for p in shape_set.eligible]
    nnz = spread_entries([p.numel for p in shape_set.eligible], shape_set.k)
    diffs, dtype = shape_set.settings.num_diffs, shape_set.torch_dtype
    return OpPrediction(
        "scatter",
        f"compose {diffs} SFTs of {shape_set.k:,} entries each (fp32 values, originals saved)",
        Cost(scatter.bytes_moved(shapes, nnz, dtype, num_diffs=diffs, save=True)),
        Cost(scatter.baseline_bytes_moved(shapes, nnz, dtype, num_diffs=diffs, method="dense")),
        "densify each diff + add_",
    )


def masked_step_prediction(shape_set: ShapeSet) -> OpPrediction:
    step = op_entry("masked_step").cost_model()
    k, e, l1 = shape_set.k, _element_bytes(shape_set), shape_set.settings.l1
    numel = sum(p.numel for p in shape_set.eligible)
    return OpPrediction(
        "masked_step",
        f"sparse AdamW on {k:,} of {numel:,} entries{' with L1' if l1 else ''}",
        Cost(step.bytes_moved(k, numel, param_bytes=e, has_l1=l1), step.flops(k, has_l1=l1), "fp32"),
        Cost(step.baseline_bytes_moved(numel, param_bytes=e), step.baseline_flops(numel), "fp32"),
        "dense torch.optim.AdamW step",
    )


PREDICTORS: dict[str, Callable[[ShapeSet], OpPrediction]] = {
    "topk": topk_prediction,
    "rsvd": rsvd_prediction,
    "reconstruct_abs": reconstruct_prediction,
    "scatter": scatter_prediction,
    "masked_step": masked_step_prediction,
}


def predict(shape_set: ShapeSet, ops: tuple[str, ...] = OPS) -> tuple[list[OpPrediction], dict[str, str]]:
    """Predictions for ``ops`` on a shape set, and ``{op: why it was skipped}`` for ops
    whose kernel module or model is missing (a module still being written)."""
    predictions, skipped = [], {}
    for op in ops:
        if op not in PREDICTORS:
            raise ValueError(f"unknown op {op!r}; known: {', '.join(PREDICTORS)}")
        try:
            predictions.append(PREDICTORS[op](shape_set))
        except ImportError as err:
            skipped[op] = f"{type(err).__name__}: {err}"
    return predictions, skipped
