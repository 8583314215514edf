"""Benchmark case: DeFT-X selection scores, ``|rank-r reconstruction of Δ|``, of every matrix.

The matrices and settings are the ``rsvd`` case's (every 2-D tensor with
``min(m, n) > rank + oversample``; W1 = W0 + a low-rank-plus-noise Δ, both in the set's
dtype).

* deftx: ``deftx.ops.denoised_magnitudes_batched(W1s, W0s, rank=r, oversample=p, n_iter=i,
  backend=...)``, one call for all matrices: the public op, so whatever fast path it takes
  (shape groups, fused subtraction, fused ``|U S Vh|``) is what is timed.
* ``deftx_tensor_cores``: the same public op with its products on tensor cores
  (``precision="tf32x3"`` for fp32 weights, ``"bf16"`` for bf16 / fp16 weights), Triton only
  (listed on CUDA devices alone: the other backends multiply in fp32 whatever the precision).
  Listed with the baselines, as the step's prepared path is; its own ``score_error`` says
  whether it lands at the baseline's error.
* ``svd_lowrank_abs``, per matrix: ``torch.svd_lowrank(W1.float() - W0.float(), q=r + p, niter=i)``
  truncated to r, then ``((U * S) @ Vh).abs()``: the same sketch size and power iterations.

Both rows report ``score_error = sqrt(Σ ‖s − |Δ|‖²) / sqrt(Σ ‖Δ‖²)``, the distance of the
scores from the raw magnitudes relative to Δ: equal values say the two land at the same
reconstruction error (it bounds the signed reconstruction error from below).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from deftx.ops import denoised_magnitudes_batched
from deftx.perf.cases import rsvd
from deftx.perf.cases.base import CaseSpec, Traffic, backend_of

OP = "scores"
TENSOR_CORES = "deftx_tensor_cores"
DEFTX_VARIANTS = (TENSOR_CORES,)
"""Implementations beside the backends that run deftx's code (their output is checked before timing)."""
BASELINES: dict[str, str] = {
    TENSOR_CORES: "deftx, tensor-core products (tf32x3 / bf16)",
    "svd_lowrank_abs": "torch.svd_lowrank + |U S Vh|",
}
ROOFLINE = "compute"


def tensor_core_precision(weights: torch.dtype) -> str:
    """The product precision ``deftx_tensor_cores`` uses for weights of this dtype."""
    return "tf32x3" if weights == torch.float32 else "bf16"


def roofline_of(impl: str) -> str:
    """The roof a row's ``% roof`` is read against: the fp32 matmul peak, except for the
    tensor-core products, whose roof is the bytes (the measured fp32 matmul peak is not theirs)."""
    return "memory" if impl == TENSOR_CORES else ROOFLINE


def unavailable(impl: str, device: torch.device) -> str | None:
    """Why ``impl`` is not timed on ``device`` (None: it is)."""
    if impl == TENSOR_CORES and device.type != "cuda":
        return "tensor-core products run on the Triton backend, on CUDA devices"
    return None


def make_inputs(spec: CaseSpec) -> rsvd.RsvdInputs:
    """The ``rsvd`` case's (W1, W0) pairs."""
    return rsvd.make_inputs(spec)


def _baseline_scores(w1: torch.Tensor, w0: torch.Tensor, inputs: rsvd.RsvdInputs) -> torch.Tensor:
    u, s, vh = rsvd._svd_lowrank(w1, w0, inputs)
    return ((u * s) @ vh).abs_()


def bind(impl: str, inputs: rsvd.RsvdInputs) -> Callable[[], list[torch.Tensor]]:
    """The thunk timed for ``impl``: one fp32 score matrix per pair."""
    backend = backend_of(impl)
    if backend is not None or impl == TENSOR_CORES:
        matrices, bases = [w1 for w1, _ in inputs.pairs], [w0 for _, w0 in inputs.pairs]
        precision = tensor_core_precision(matrices[0].dtype) if impl == TENSOR_CORES else "fp32"
        return lambda: denoised_magnitudes_batched(
            matrices, bases, rank=inputs.rank, oversample=inputs.oversample, n_iter=inputs.n_iter,
            precision=precision, backend=backend or "triton",
        )
    if impl == "svd_lowrank_abs":
        return lambda: [_baseline_scores(w1, w0, inputs) for w1, w0 in inputs.pairs]
    raise KeyError(f"scores: unknown implementation {impl!r}")


def traffic(impl: str, inputs: rsvd.RsvdInputs) -> Traffic:
    """The ``rsvd`` case's model of the factorisation plus the reconstruction's, from the same
    cost model (``reconstruct_bytes_moved`` / ``baseline_reconstruct_bytes_moved`` and flops)."""
    cost = rsvd.COST
    fused = backend_of(impl) is not None or impl == TENSOR_CORES
    factor = rsvd.traffic("deftx:triton" if fused else "svd_lowrank", inputs)
    total_bytes, total_flops = factor.bytes, factor.flops
    for w1, _ in inputs.pairs:
        m, n = w1.shape
        r = min(inputs.rank, m, n)
        if fused:
            total_bytes += cost.reconstruct_bytes_moved(m, n, r)
            total_flops += cost.reconstruct_flops(m, n, r)
        else:
            total_bytes += cost.baseline_reconstruct_bytes_moved(m, n, r)
            total_flops += cost.baseline_reconstruct_flops(m, n, r)
    return Traffic(total_bytes, total_flops, f"{factor.model} + reconstruct_bytes_moved / reconstruct_flops")


def quality(impl: str, inputs: rsvd.RsvdInputs, output: object) -> dict[str, float]:
    """``score_error`` (see the module docstring) over all matrices."""
    residual, norm = 0.0, 0.0
    for (w1, w0), scores in zip(inputs.pairs, output, strict=True):
        delta = w1.float() - w0.float()
        norm += float(delta.square().sum())
        residual += float(delta.abs_().sub_(scores).square().sum())
    return {"score_error": (residual / norm) ** 0.5 if norm > 0 else 0.0}


def selected(inputs: rsvd.RsvdInputs) -> int:
    """The number of matrices scored."""
    return len(inputs.pairs)


def _deftx_error(impl: str, inputs: rsvd.RsvdInputs) -> str | float:
    """What is wrong with the shapes or values of one call of deftx's ``impl``, or its :func:`quality`
    error; its scores (one fp32 matrix per pair: 25 GiB at Llama-2-7B) are freed on return."""
    scores = bind(impl, inputs)()
    if len(scores) != len(inputs.pairs):
        return f"{len(scores)} score matrices for {len(inputs.pairs)} pairs"
    for t, ((w1, _), s) in enumerate(zip(inputs.pairs, scores, strict=True)):
        if s.shape != w1.shape or s.dtype != torch.float32:
            return f"matrix {t}: scores {tuple(s.shape)} {s.dtype} for a {tuple(w1.shape)} matrix"
        if not bool(torch.isfinite(s).all()) or bool((s < 0).any()):
            return f"matrix {t}: scores that are negative, inf or nan"
    return quality(impl, inputs, scores)["score_error"]


def _reference_error(inputs: rsvd.RsvdInputs) -> float:
    """``svd_lowrank_abs``'s :func:`quality` error, its scores made one matrix at a time (never all at once)."""
    per_matrix = (_baseline_scores(w1, w0, inputs) for w1, w0 in inputs.pairs)
    return quality("svd_lowrank_abs", inputs, per_matrix)["score_error"]


def mismatch(impl: str, inputs: rsvd.RsvdInputs) -> str | None:
    """What is wrong with one call of deftx's ``impl`` (a backend), or None if it returns one finite
    (m, n) fp32 score matrix per pair whose :func:`quality` error is within
    :data:`~deftx.perf.cases.rsvd.ERROR_MARGIN` of ``torch.svd_lowrank``'s.

    At most one model's scores are held at a time (deftx's, freed before the reference's are made
    matrix by matrix): two were 50 GiB beside the 25 GiB of inputs at Llama-2-7B bf16, over an H100's 79 GiB.
    """
    got = _deftx_error(impl, inputs)
    if isinstance(got, str):
        return got
    reference = _reference_error(inputs)
    if not got <= rsvd.ERROR_MARGIN * reference:
        return f"score error {got:.4g} against torch.svd_lowrank's {reference:.4g}"
    return None
