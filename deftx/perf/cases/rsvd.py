"""Benchmark case: truncated SVD of every weight difference Δ = W1 − W0 of a model.

Matrices: every 2-D tensor of the set with ``min(m, n) > rank + oversample`` (smaller
ones, e.g. a 1×768 token-type embedding, are not worth a sketch).

* deftx: ``deftx.ops.lowrank_factors_batched(W1s, W0s, rank=r, oversample=p, n_iter=i,
  backend=...)``, one call for all matrices, as DeFT-X scoring in training calls it (one
  launch per shape group and product, the subtraction fused into the products on CUDA).

Per matrix:

* ``svd_lowrank``: ``torch.svd_lowrank(W1.float() - W0.float(), q=rank + p, niter=i)``,
  truncated to ``rank`` — the same sketch size and power iterations, so the two land at
  the same reconstruction error (reported for each).
* ``linalg_svd``: ``torch.linalg.svd(W1.float() - W0.float())`` truncated to ``rank``:
  the optimal error, at the full SVD's cost.

K plays no part here; the case reports the relative reconstruction error
``sqrt(Σ ||Δ − U S Vh||²) / sqrt(Σ ||Δ||²)`` over all matrices.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass

import torch

from deftx.ops import lowrank_factors_batched
from deftx.perf import synthetic
from deftx.perf.cases.base import CaseSpec, Traffic, backend_of

OP = "rsvd"
DISPATCH_OP = "rsvd"
BASELINES: dict[str, str] = {"svd_lowrank": "torch.svd_lowrank", "linalg_svd": "torch.linalg.svd"}
ROOFLINE = "compute"

Factors = list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]


@dataclass
class RsvdInputs:
    """(W1, W0) pairs and the sketch settings."""

    pairs: list[tuple[torch.Tensor, torch.Tensor]]
    rank: int
    oversample: int
    n_iter: int


def make_inputs(spec: CaseSpec) -> RsvdInputs:
    """W0 = synthetic weights; W1 = W0 + a low-rank-plus-noise Δ (both in ``spec.dtype``)."""
    pairs = []
    for t in spec.shapes.matrices():
        if min(t.shape) <= spec.rank + spec.oversample:
            continue
        w0 = synthetic.weights(t, spec.seed, spec.torch_device, spec.torch_dtype)
        delta = synthetic.lowrank_difference(t, spec.rank, spec.seed, spec.torch_device)
        pairs.append(((delta.add_(w0)).to(spec.torch_dtype), w0))
    if not pairs:
        raise ValueError(
            f"rsvd: no matrix of {spec.shapes.name!r} has min(m, n) > rank + oversample = {spec.rank + spec.oversample}"
        )
    return RsvdInputs(pairs, spec.rank, spec.oversample, spec.n_iter)


def _sketch_width(w: torch.Tensor, inputs: RsvdInputs) -> int:
    return min(inputs.rank + inputs.oversample, min(w.shape))


def _svd_lowrank(w1: torch.Tensor, w0: torch.Tensor, inputs: RsvdInputs):
    u, s, v = torch.svd_lowrank(w1.float() - w0.float(), q=_sketch_width(w1, inputs), niter=inputs.n_iter)
    r = inputs.rank
    return u[:, :r], s[:r], v[:, :r].T


def _linalg_svd(w1: torch.Tensor, w0: torch.Tensor, inputs: RsvdInputs):
    u, s, vh = torch.linalg.svd(w1.float() - w0.float(), full_matrices=False)
    r = inputs.rank
    return u[:, :r], s[:r], vh[:r]


def bind(impl: str, inputs: RsvdInputs) -> Callable[[], Factors]:
    """The thunk timed for ``impl``: factors (U, S, Vh) of every matrix."""
    backend = backend_of(impl)
    if backend is not None:
        matrices, bases = [w1 for w1, _ in inputs.pairs], [w0 for _, w0 in inputs.pairs]
        return lambda: [
            (f.u, f.s, f.vh)
            for f in lowrank_factors_batched(
                matrices, bases, rank=inputs.rank, oversample=inputs.oversample, n_iter=inputs.n_iter, backend=backend
            )
        ]
    solver = {"svd_lowrank": _svd_lowrank, "linalg_svd": _linalg_svd}.get(impl)
    if solver is None:
        raise KeyError(f"rsvd: unknown implementation {impl!r}")
    return lambda: [solver(w1, w0, inputs) for w1, w0 in inputs.pairs]


def _thin_svd_flops(m: int, n: int) -> float:
    """Golub & Van Loan's R-SVD with U and V: ``6 big small² + 20 small³``."""
    small, big = min(m, n), max(m, n)
    return 6.0 * big * small * small + 20.0 * small**3


def _randomized_model(m: int, n: int, q: int, n_iter: int, weight_bytes: int, fused: bool) -> tuple[float, float, str]:
    """Bytes and flops of one randomized SVD from ``deftx.kernels.rsvd`` (fused or torch baseline).

    Without Triton, the same model in short: ``P = 2 + 2 n_iter`` products, each reading
    W1 and W0 (fused) or the fp32 Δ (materialised first: read 2, write 1).
    """
    try:
        model = importlib.import_module("deftx.ops.cost.rsvd")
    except ImportError:
        passes = 2 + 2 * n_iter
        per_pass = (2 * weight_bytes if fused else 4) * m * n
        materialise = 0 if fused else (2 * weight_bytes + 4) * m * n
        return materialise + passes * per_pass, passes * 2.0 * m * n * q, "deftx.perf (products only)"
    if fused:
        return (
            model.bytes_moved(m, n, q, n_iter, weight_bytes=weight_bytes),
            model.flops(m, n, q, n_iter),
            "deftx.ops.cost.rsvd.bytes_moved / flops",
        )
    return (
        model.baseline_bytes_moved(m, n, q, n_iter, weight_bytes=weight_bytes),
        model.baseline_flops(m, n, q, n_iter),
        "deftx.ops.cost.rsvd.baseline_bytes_moved / baseline_flops",
    )


def traffic(impl: str, inputs: RsvdInputs) -> Traffic:
    """Summed over matrices. deftx and ``svd_lowrank``: the kernel module's models (fused vs
    materialised Δ). ``linalg_svd``: materialising Δ (read W1, W0, write Δ) plus one
    read of Δ, and the R-SVD flop count ``6 big small² + 20 small³``."""
    total_bytes, total_flops, source = 0.0, 0.0, ""
    for w1, _ in inputs.pairs:
        m, n = w1.shape
        size = w1.element_size()
        if impl == "linalg_svd":
            total_bytes += (2 * size + 8) * m * n
            total_flops += _thin_svd_flops(m, n) + m * n
            source = "deftx.perf: materialise Δ + one read; R-SVD flops"
        else:
            b, f, source = _randomized_model(
                m, n, _sketch_width(w1, inputs), inputs.n_iter, size, fused=backend_of(impl) is not None
            )
            total_bytes += b
            total_flops += f
    return Traffic(total_bytes, total_flops, source)


def quality(impl: str, inputs: RsvdInputs, output: object) -> dict[str, float]:
    """Relative Frobenius reconstruction error of the rank-``rank`` factors over all matrices."""
    residual, norm = 0.0, 0.0
    for (w1, w0), (u, s, vh) in zip(inputs.pairs, output, strict=True):
        delta = w1.float() - w0.float()
        norm += float(delta.square().sum())
        delta.sub_((u * s) @ vh)
        residual += float(delta.square().sum())
    return {"relative_error": (residual / norm) ** 0.5 if norm > 0 else 0.0}


def selected(inputs: RsvdInputs) -> int:
    """The number of matrices factored."""
    return len(inputs.pairs)
