"""The roofline: the device's roofs measured in a run, and each op's time predicted on a datasheet target.

**Measured roofs** (:func:`measure_roofline`, in the same run as the benchmarks, never a
datasheet constant; ``deftx bench`` reports each case's % of them):

* Memory: ``dst.copy_(src)`` of a large fp32 tensor; ``2 * nbytes`` (one read, one
  write) per copy over the best time. On CPU a write may also cost a read of the
  destination line (write-allocate), which this model does not count, so the copy
  roof is the bandwidth a streaming kernel sees.
* Compute: an fp32 ``n x n`` matmul, ``2 n³`` flops over the best time (TF32 as torch's
  current setting for CUDA matmuls says; off by default).

**Predicted time** (:func:`predict`, for ``deftx profile --static`` and ``deftx bench``'s
predicted vs measured): ``max(bytes / HBM bandwidth, FLOPs / peak FLOP/s)`` with the
target's datasheet figures (:mod:`deftx.perf.targets`). Bytes and FLOPs come from the analytic
models of the op registry (``bytes_moved`` / ``flops`` in ``deftx.ops.cost.<op>``, pure Python)
and the same models for the dense torch baselines (``baseline_bytes_moved`` /
``baseline_flops``). This is a lower bound on time (perfect overlap, peak bandwidth), not a
measurement.

The ops of a workload (:class:`~deftx.perf.workload.Workload`, N eligible entries of
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
from dataclasses import asdict, dataclass
from typing import Any

import torch

from deftx.ops.registry import op_entry
from deftx.perf.targets import Target
from deftx.perf.timing import TimingSettings, time_thunk
from deftx.perf.workload import Workload

COPY_BYTES = {"cpu": 256 << 20, "cuda": 2 << 30}
MATMUL_N = {"cpu": 2048, "cuda": 8192}
ROOF_TIMING = TimingSettings(warmup=1, min_repeats=5, max_repeats=20, min_time_s=0.5)


@dataclass(frozen=True)
class Roofline:
    """Measured roofs of one device."""

    copy_gbps: float
    matmul_gflops: float
    copy_bytes: int
    matmul_n: int
    method: str = (
        "copy: 2*nbytes / best time of dst.copy_(src) (fp32); matmul: 2*n^3 / best time of an fp32 n x n matmul"
    )

    def to_json(self) -> dict:
        return asdict(self)


def measure_copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """GB/s (1e9 bytes/s) of a device-to-device copy of ``nbytes`` (read + write)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    timing, _ = time_thunk(lambda: dst.copy_(src), device, ROOF_TIMING)
    return 2 * src.numel() * 4 / timing.min_s / 1e9


def measure_matmul_flops(device: torch.device, n: int) -> float:
    """GFLOP/s of an fp32 ``n x n`` matmul."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    timing, _ = time_thunk(lambda: a @ b, device, ROOF_TIMING)
    return 2.0 * n**3 / timing.min_s / 1e9


def measure_roofline(device: torch.device, *, copy_bytes: int | None = None, matmul_n: int | None = None) -> Roofline:
    """Measure both roofs on ``device`` (sizes default per device type)."""
    copy_bytes = copy_bytes or COPY_BYTES.get(device.type, COPY_BYTES["cpu"])
    matmul_n = matmul_n or MATMUL_N.get(device.type, MATMUL_N["cpu"])
    return Roofline(
        copy_gbps=measure_copy_bandwidth(device, copy_bytes),
        matmul_gflops=measure_matmul_flops(device, matmul_n),
        copy_bytes=copy_bytes,
        matmul_n=matmul_n,
    )


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


def _element_bytes(shape_set: Workload) -> int:
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


def topk_prediction(shape_set: Workload) -> OpPrediction:
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


def _per_matrix(shape_set: Workload, q: int, cost: Callable[[int, int, int], tuple[float, float]]) -> Cost:
    """The fp32 cost summed over the shape set's matrices: ``cost(m, n, min(q, m, n))`` is one matrix's
    (bytes, flops)."""
    total_bytes, total_flops = 0.0, 0.0
    for p in shape_set.matrices:
        m, n = p.shape
        matrix_bytes, matrix_flops = cost(m, n, _matrix_q(p.shape, q))
        total_bytes, total_flops = total_bytes + matrix_bytes, total_flops + matrix_flops
    return Cost(total_bytes, total_flops, "fp32")


def rsvd_prediction(shape_set: Workload) -> OpPrediction:
    rsvd = op_entry("rsvd").cost_model()
    s, e = shape_set.settings, _element_bytes(shape_set)
    return OpPrediction(
        "rsvd",
        f"{len(shape_set.matrices)} matrices, q = {s.rank}+{s.oversample}, n_iter = {s.n_iter}, fp32 products",
        _per_matrix(shape_set, s.sketch_columns, lambda m, n, q: (
            rsvd.bytes_moved(m, n, q, s.n_iter, weight_bytes=e, has_base=True),
            rsvd.flops(m, n, q, s.n_iter, has_base=True),
        )),
        _per_matrix(shape_set, s.sketch_columns, lambda m, n, q: (
            rsvd.baseline_bytes_moved(m, n, q, s.n_iter, weight_bytes=e, has_base=True),
            rsvd.baseline_flops(m, n, q, s.n_iter, has_base=True),
        )),
        "torch.svd_lowrank(w1.float() - w0.float())",
    )


def reconstruct_prediction(shape_set: Workload) -> OpPrediction:
    rsvd = op_entry("rsvd").cost_model()
    rank = shape_set.settings.rank
    return OpPrediction(
        "reconstruct_abs",
        f"|U S Vh| of {len(shape_set.matrices)} matrices, rank {rank}",
        _per_matrix(shape_set, rank, lambda m, n, r: (rsvd.reconstruct_bytes_moved(m, n, r),
                                                      rsvd.reconstruct_flops(m, n, r))),
        _per_matrix(shape_set, rank, lambda m, n, r: (rsvd.baseline_reconstruct_bytes_moved(m, n, r),
                                                      rsvd.baseline_reconstruct_flops(m, n, r))),
        "(us @ vh).abs()",
    )


def scatter_prediction(shape_set: Workload) -> OpPrediction:
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


def masked_step_prediction(shape_set: Workload) -> OpPrediction:
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


PREDICTORS: dict[str, Callable[[Workload], OpPrediction]] = {
    "topk": topk_prediction,
    "rsvd": rsvd_prediction,
    "reconstruct_abs": reconstruct_prediction,
    "scatter": scatter_prediction,
    "masked_step": masked_step_prediction,
}


def predict(shape_set: Workload, ops: tuple[str, ...] = OPS) -> tuple[list[OpPrediction], dict[str, str]]:
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
