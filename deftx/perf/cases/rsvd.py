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

from collections.abc import Callable
from dataclasses import dataclass

import torch

from deftx.ops import lowrank_factors_batched
from deftx.ops.registry import op_of_bench_case
from deftx.perf import synthetic
from deftx.perf.cases.base import CaseSpec, Traffic, backend_of

OP = "rsvd"
BASELINES: dict[str, str] = {"svd_lowrank": "torch.svd_lowrank", "linalg_svd": "torch.linalg.svd"}
ROOFLINE = "compute"
COST = op_of_bench_case(OP).cost_model()
"""The randomized SVD's bytes / FLOP model (``deftx.ops.cost.rsvd``)."""

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


def _factor_cost(impl: str, m: int, n: int, q: int, n_iter: int, weight_bytes: int) -> tuple[float, float, str]:
    """(bytes, flops, model) of one factorisation by ``impl``, from the op's cost model
    (:data:`COST`): deftx fuses the subtraction, ``svd_lowrank`` materialises Δ, ``linalg_svd``
    materialises Δ and runs the exact SVD."""
    if impl == "linalg_svd":
        return (COST.exact_baseline_bytes_moved(m, n, weight_bytes=weight_bytes), COST.exact_baseline_flops(m, n),
                f"{COST.__name__}.exact_baseline_bytes_moved / exact_baseline_flops")
    if backend_of(impl) is not None:
        return (COST.bytes_moved(m, n, q, n_iter, weight_bytes=weight_bytes), COST.flops(m, n, q, n_iter),
                f"{COST.__name__}.bytes_moved / flops")
    return (COST.baseline_bytes_moved(m, n, q, n_iter, weight_bytes=weight_bytes),
            COST.baseline_flops(m, n, q, n_iter), f"{COST.__name__}.baseline_bytes_moved / baseline_flops")


def traffic(impl: str, inputs: RsvdInputs) -> Traffic:
    """:func:`_factor_cost` summed over the matrices."""
    total_bytes, total_flops, source = 0.0, 0.0, ""
    for w1, _ in inputs.pairs:
        m, n = w1.shape
        b, f, source = _factor_cost(impl, m, n, _sketch_width(w1, inputs), inputs.n_iter, w1.element_size())
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


ERROR_MARGIN = 1.05
"""How much larger deftx's reconstruction error may be than ``torch.svd_lowrank``'s (the same
sketch from other random draws lands within about 1% on the synthetic differences)."""


def mismatch(impl: str, inputs: RsvdInputs) -> str | None:
    """What is wrong with one call of deftx's ``impl`` (a backend), or None if it returns rank-``rank``
    factors of every matrix whose :func:`quality` error is within :data:`ERROR_MARGIN` of
    ``torch.svd_lowrank``'s."""
    factors = bind(impl, inputs)()
    if len(factors) != len(inputs.pairs):
        return f"{len(factors)} factorisations for {len(inputs.pairs)} matrices"
    r = inputs.rank
    for t, ((w1, _), (u, s, vh)) in enumerate(zip(inputs.pairs, factors, strict=True)):
        m, n = w1.shape
        if u.shape != (m, r) or s.shape != (r,) or vh.shape != (r, n):
            return f"matrix {t} ({m}x{n}): factors {tuple(u.shape)}, {tuple(s.shape)}, {tuple(vh.shape)} for rank {r}"
    got = quality(impl, inputs, factors)["relative_error"]
    reference = quality("svd_lowrank", inputs, bind("svd_lowrank", inputs)())["relative_error"]
    if not got <= ERROR_MARGIN * reference:
        return f"relative reconstruction error {got:.4g} against torch.svd_lowrank's {reference:.4g}"
    return None
