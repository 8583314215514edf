"""The batched DeFT-X ops (``lowrank_factors_batched``, ``denoised_magnitudes_batched``,
``reconstruct_magnitudes``) against an independent float64 model of the per-matrix path, on
every CPU backend (torch reference, Triton interpreter); the custom ops' registrations."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

import deftx.ops.denoise as denoise_module
from deftx.kernels import kernel_module
from deftx.ops import (
    LowRankFactors,
    denoised_magnitudes,
    denoised_magnitudes_batched,
    lowrank_factors,
    lowrank_factors_batched,
    reconstruct_magnitudes,
)
from tests.helpers import assert_close, tolerance
from tests.ops.conftest import cpu_backends

N_ITER = 2


def spectrum_matrix(m: int, n: int, singular_values: list[float], seed: int) -> torch.Tensor:
    """float64 (m, n) with the given singular values and random singular vectors."""
    gen = torch.Generator().manual_seed(seed)
    k = len(singular_values)
    u = torch.linalg.qr(torch.randn(m, k, generator=gen, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64)).Q
    return (u * torch.tensor(singular_values, dtype=torch.float64)) @ v.T


def decaying(m: int, n: int, seed: int, decay: float = 0.6) -> torch.Tensor:
    return spectrum_matrix(m, n, [decay**i for i in range(min(m, n))], seed)


def pair(delta: torch.Tensor, dtype: torch.dtype, seed: int, with_base: bool = True):
    """(θ1, θ0) of ``dtype`` with θ1 − θ0 ≈ delta (θ0 None when ``with_base`` is False)."""
    if not with_base:
        return delta.to(dtype), None
    base = torch.randn(delta.shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return (base.double() + delta).to(dtype), base


def reference_path(w1, w0, *, rank=None, energy=None, oversample=8, seed=0):
    """Today's per-matrix path in float64: a seeded Ω (n, q) for each matrix, the contract's
    sequence, and under the energy policy the sketch widened from 64 (at least doubled) until it
    holds the target with ``oversample`` spare columns, or spans the full spectrum.

    Returns (|U_r S_r Vh_r| float64, r, fraction of ||Δ||² held, σ₁).
    """
    delta = w1.double() - (w0.double() if w0 is not None else 0.0)
    m, n = delta.shape
    full = min(m, n)
    if full == 0:
        return torch.zeros(m, n, dtype=torch.float64), 0, 1.0, 0.0

    def factors(q):
        omega = torch.randn(n, q, generator=torch.Generator().manual_seed(seed), dtype=torch.float32).double()
        basis = torch.linalg.qr(delta @ omega, mode="reduced").Q
        for _ in range(N_ITER):
            basis = torch.linalg.qr(delta @ torch.linalg.qr(delta.T @ basis, mode="reduced").Q, mode="reduced").Q
        u_small, s, vh = torch.linalg.svd(basis.T @ delta, full_matrices=False)
        return basis @ u_small, s, vh

    total = float(delta.square().sum())
    if rank is not None:
        u, s, vh = factors(min(rank + oversample, full))
        r = rank
    else:
        q = min(64, full)
        while True:
            u, s, vh = factors(q)
            reached = (torch.cumsum(s**2, 0) >= energy * total).nonzero()
            r = int(reached[0]) + 1 if reached.numel() else None
            if q == full or (r is not None and r + oversample <= q):
                r = q if r is None else r
                break
            q = min(max(2 * q, (r or 0) + oversample), full)
    held = float((s[:r] ** 2).sum()) / total if total > 0 else 1.0
    return ((u[:, :r] * s[:r]) @ vh[:r]).abs(), r, held, float(s[0]) if s.numel() else 0.0


def mixed_pairs(include_empty: bool = True):
    """Several shape groups: same shapes with and without base, bf16 / fp16 weights, a
    matrix whose energy target needs a second (wider) sketch, an empty and a 1-row matrix."""
    flat = [1.0 - 0.004 * i for i in range(60)] + [0.7 * 0.95**i for i in range(10)]
    deltas = [
        (decaying(40, 24, 1), torch.float32, True),
        (decaying(24, 40, 2), torch.bfloat16, True),
        (decaying(40, 24, 3), torch.float32, True),
        (decaying(40, 24, 4), torch.float32, False),
        (spectrum_matrix(70, 80, flat, 5), torch.float32, True),
        (decaying(24, 40, 6), torch.bfloat16, True),
        (torch.zeros(0, 5, dtype=torch.float64), torch.float32, True),
        (decaying(1, 7, 7), torch.float16, True),
        (decaying(40, 24, 8), torch.float16, True),
    ]
    pairs = [pair(d, dtype, seed=10 + i, with_base=b) for i, (d, dtype, b) in enumerate(deltas)]
    return pairs if include_empty else [p for p in pairs if p[0].numel()]


def score_atol(m: int, n: int, sigma1: float, unit: float = 0.0) -> float:
    """2 + 2 n_iter products against float64, each within ``unit`` (beyond fp32 summation)
    of |Δ||X|, scaled by σ₁ (the reference's Δ is that of the rounded weights: no extra term)."""
    return 4 * (unit + tolerance(torch.float32, max(m, n))) * (2 + 2 * N_ITER) * sigma1


@pytest.mark.parametrize("backend", cpu_backends("rsvd"))
@pytest.mark.parametrize("policy", [{"energy": 0.9}, {"energy": 0.99}, {"rank": 1}, {"rank": 3}])
def test_batched_factors_equal_the_per_matrix_path(backend, policy):
    pairs = mixed_pairs()
    w1s, w0s = [a for a, _ in pairs], [b for _, b in pairs]

    factors = lowrank_factors_batched(w1s, w0s, n_iter=N_ITER, seed=3, backend=backend, **policy)
    scores = reconstruct_magnitudes(factors, backend=backend)

    assert len(factors) == len(scores) == len(pairs)
    for i, ((w1, w0), f, score) in enumerate(zip(pairs, factors, scores, strict=True)):
        assert isinstance(f, LowRankFactors)
        kept = {"rank": min(policy["rank"], *w1.shape)} if "rank" in policy else policy  # a batch clamps the rank
        want, rank, held, sigma1 = reference_path(w1, w0, seed=3, **kept)
        assert f.s.numel() == rank, f"matrix {i}: rank {f.s.numel()} != {rank}"
        assert f.u.shape == (w1.shape[0], rank) and f.vh.shape == (rank, w1.shape[1])
        assert f.energy == pytest.approx(held, rel=1e-5, abs=1e-6), f"matrix {i}"
        assert score.dtype == torch.float32 and score.shape == w1.shape
        assert_close(score, want, rtol=0.0, atol=score_atol(*w1.shape, sigma1), what=f"score of matrix {i}")


def test_the_wide_matrix_needed_a_second_sketch():
    """Precondition of the test above: 0.99 of the flat spectrum needs more than 64 components,
    and the target is not within rounding of a neighbouring rank."""
    w1, w0 = mixed_pairs()[4]
    _, rank, held, _ = reference_path(w1, w0, energy=0.99, seed=3)
    s = torch.linalg.svdvals(w1.double() - w0.double())
    cumulative = torch.cumsum(s**2, 0) / (s**2).sum()
    assert rank > 64 and held >= 0.99
    assert float(cumulative[rank - 1]) - 0.99 > 1e-4 and 0.99 - float(cumulative[rank - 2]) > 1e-4


@pytest.mark.parametrize("backend", cpu_backends("rsvd"))
def test_exact_method_batched(backend):
    pairs = mixed_pairs()[:3]
    factors = lowrank_factors_batched([a for a, _ in pairs], [b for _, b in pairs], energy=0.9, method="exact")
    scores = reconstruct_magnitudes(factors, backend=backend)
    for (w1, w0), f, score in zip(pairs, factors, scores, strict=True):
        delta = w1.double() - w0.double()
        u, s, vh = torch.linalg.svd(delta, full_matrices=False)
        cumulative = torch.cumsum(s**2, 0) / (s**2).sum()
        rank = int((cumulative >= 0.9).nonzero()[0]) + 1
        assert f.s.numel() == rank and f.energy == pytest.approx(float(cumulative[rank - 1]), rel=1e-5)
        want = ((u[:, :rank] * s[:rank]) @ vh[:rank]).abs()
        assert_close(score, want, rtol=0.0, atol=4 * tolerance(torch.float32, max(w1.shape)) * float(s[0]))


@pytest.mark.parametrize("backend", cpu_backends("rsvd"))
def test_single_matrix_ops_equal_the_batched_op(backend):
    pairs = mixed_pairs()
    w1, w0 = pairs[0]
    batched = denoised_magnitudes_batched([a for a, _ in pairs], [b for _, b in pairs], rank=3, backend=backend)
    single = denoised_magnitudes(w1, w0, rank=3, backend=backend)
    u, s, vh = lowrank_factors(w1, 3, base=w0, backend=backend)
    atol = score_atol(*w1.shape, float(s[0]))
    assert_close(single, batched[0], rtol=0.0, atol=atol, what="single vs batched")
    assert_close(((u * s) @ vh).abs(), batched[0], rtol=0.0, atol=atol, what="factors vs batched")


def test_backends_agree():
    pairs = mixed_pairs()
    w1s, w0s = [a for a, _ in pairs], [b for _, b in pairs]
    torch_scores = denoised_magnitudes_batched(w1s, w0s, energy=0.9, backend="torch")
    triton_scores = denoised_magnitudes_batched(w1s, w0s, energy=0.9, backend="triton")
    for i, (a, b) in enumerate(zip(torch_scores, triton_scores, strict=True)):
        sigma1 = float(torch.linalg.svdvals(a.double()).max()) if a.numel() else 0.0
        assert_close(b, a, rtol=0.0, atol=2 * score_atol(*a.shape, sigma1), what=f"matrix {i}")


def test_tf32x3_scores_equal_the_per_matrix_path():
    """tf32x3 products on fp32 weights: the scores stay within the products' bound of float64."""
    pairs = [p for p in mixed_pairs() if p[0].dtype == torch.float32 and p[1] is not None]
    w1s, w0s = [a for a, _ in pairs], [b for _, b in pairs]
    scores = denoised_magnitudes_batched(w1s, w0s, rank=4, precision="tf32x3", backend="triton")
    for i, ((w1, w0), score) in enumerate(zip(pairs, scores, strict=True)):
        want, _, _, sigma1 = reference_path(w1, w0, rank=4)
        assert_close(score, want, rtol=0.0, atol=score_atol(*w1.shape, sigma1, unit=2.0**-19), what=f"matrix {i}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "tf32x3"])
def test_cuda_scores_equal_the_per_matrix_path(precision):
    """The compiled kernels through the public ops (auto backend on CUDA tensors)."""
    pairs = [p for p in mixed_pairs() if precision == "fp32" or p[0].dtype == torch.float32]
    w1s = [a.cuda() for a, _ in pairs]
    w0s = [b.cuda() if b is not None else None for _, b in pairs]
    factors = lowrank_factors_batched(w1s, w0s, energy=0.99, n_iter=N_ITER, seed=3, precision=precision)
    scores = reconstruct_magnitudes(factors, precision=precision)
    unit = 2.0**-19 if precision == "tf32x3" else 0.0
    for i, ((w1, w0), f, score) in enumerate(zip(pairs, factors, scores, strict=True)):
        want, rank, held, sigma1 = reference_path(w1, w0, energy=0.99, seed=3)
        assert f.s.numel() == rank and f.energy == pytest.approx(held, rel=1e-5, abs=1e-6), f"matrix {i}"
        assert score.device.type == "cuda"
        atol = score_atol(*w1.shape, sigma1, unit=unit)
        assert_close(score.cpu(), want, rtol=0.0, atol=atol, what=f"matrix {i} ({precision})")


# ----------------------------------------------------------------------------- sketches and launches


def test_one_sketch_per_width_per_call(monkeypatch):
    drawn = Counter()
    draw = denoise_module.gaussian_sketch

    def counting(n, q, seed, device):
        drawn[n, q] += 1
        return draw(n, q, seed, device)

    monkeypatch.setattr(denoise_module, "gaussian_sketch", counting)
    pairs = mixed_pairs()
    lowrank_factors_batched([a for a, _ in pairs], [b for _, b in pairs], energy=0.99, backend="torch")

    # n = 24 (q = 24), 40 (q = 24), 7 (q = 1), 80 (q = 64, then 70): one draw each, 8 matrices.
    assert dict(drawn) == {(24, 24): 1, (40, 24): 1, (7, 1): 1, (80, 64): 1, (80, 70): 1}


def test_launches_per_call_on_the_triton_backend(monkeypatch):
    rsvd = kernel_module("rsvd", interpret=True)
    launched = Counter()
    for name in ("_delta_matmul_kernel", "_sketch_t_delta_kernel", "_reconstruct_abs_kernel",
                 "_difference_energy_kernel"):
        kernel = getattr(rsvd, name)

        class Counting:
            def __init__(self, kernel, name):
                self.kernel, self.name = kernel, name

            def __getitem__(self, grid):
                launched[self.name] += 1
                return self.kernel[grid]

        monkeypatch.setattr(rsvd, name, Counting(kernel, name))
    pairs = mixed_pairs()
    w1s, w0s = [a for a, _ in pairs], [b for _, b in pairs]

    factors = lowrank_factors_batched(w1s, w0s, energy=0.99, n_iter=1, backend="triton")
    reconstruct_magnitudes(factors, backend="triton")

    # 7 non-empty shape groups (40x24 fp32 with / without base, 24x40 bf16, 70x80, 1x7 fp16,
    # 40x24 fp16); 70x80 takes two sketch widths: 8 group calls of 2 + 2 n_iter products.
    groups, calls = 6, 7
    assert launched["_difference_energy_kernel"] == groups
    assert launched["_delta_matmul_kernel"] == launched["_sketch_t_delta_kernel"] == 2 * calls
    # outputs (40, 24), (24, 40), (70, 80), (1, 7): ranks and U strides differ inside a launch
    assert launched["_reconstruct_abs_kernel"] == 4


# ----------------------------------------------------------------------------- validation


def test_nan_or_inf_names_the_matrix():
    pairs = mixed_pairs()
    w1s, w0s = [a.clone() for a, _ in pairs], [b for _, b in pairs]
    w1s[2][3, 4] = float("nan")
    with pytest.raises(ValueError, match=r"matrix 2 \(shape \(40, 24\)\).*non-finite"):
        lowrank_factors_batched(w1s, w0s, rank=2, backend="torch")
    w1s[2][3, 4] = 0.0
    w0s[5] = w0s[5].clone()
    w0s[5][0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"matrix 5 .*NaN or Inf"):
        lowrank_factors_batched(w1s, w0s, energy=0.9, backend="triton")


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_fixed_rank_magnitudes_name_a_non_finite_pair_from_its_factors(backend, bad):
    """No ||Δ||² pass here unless the small SVD stops on the pair: then it names it."""
    pairs = mixed_pairs()
    w1s, w0s = [a for a, _ in pairs], [b for _, b in pairs]
    w0s[5] = w0s[5].clone()
    w0s[5][0, 0] = bad
    with pytest.raises(ValueError, match=r"matrix 5 \(shape \(24, 40\)\) has a non-finite .*NaN or Inf"):
        denoised_magnitudes_batched(w1s, w0s, rank=2, backend=backend)


def test_fixed_rank_magnitudes_name_a_pair_whose_factors_come_out_non_finite(monkeypatch):
    """Factors that are not finite without the small SVD stopping are caught by the one read."""
    pairs = mixed_pairs(include_empty=False)
    w1s, w0s = [a for a, _ in pairs], [b for _, b in pairs]
    solve = denoise_module._group_svd

    def poisoned(w1s_, *args):
        u, s, vh = solve(w1s_, *args)
        if w1s_[0].shape == (70, 80):  # the group of matrix 4 alone
            s = s.clone()
            s[0, 1] = float("nan")
        return u, s, vh

    monkeypatch.setattr(denoise_module, "_group_svd", poisoned)
    with pytest.raises(ValueError, match=r"matrix 4 \(shape \(70, 80\)\) has non-finite low-rank factors"):
        denoised_magnitudes_batched(w1s, w0s, rank=3, backend="torch")


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: lowrank_factors_batched(torch.ones(3, 3), rank=1), TypeError, "list of matrices"),
        (lambda: lowrank_factors_batched([torch.ones(3, 3)], [None, None], rank=1), ValueError, "bases"),
        (lambda: lowrank_factors_batched([torch.ones(3, 3)], rank=-1), ValueError, "rank -1 is outside"),
        (lambda: lowrank_factors_batched([torch.ones(3, 3), torch.ones(3)], rank=1), ValueError,
         r"matrices\[1\] must be a 2-D tensor"),
        (lambda: lowrank_factors_batched([torch.ones(3, 3, dtype=torch.bfloat16)], rank=1, precision="tf32x3"),
         ValueError, "fp32 weights"),
        (lambda: lowrank_factors_batched([torch.ones(3, 3)], rank=1, precision="tf32"), ValueError, "precision"),
        (lambda: lowrank_factors_batched([torch.ones(3, 3, dtype=torch.bfloat16)], [torch.ones(3, 3)], rank=1),
         TypeError, r"matrices\[0\]: base has dtype torch.float32, its matrix torch.bfloat16"),
        (lambda: denoised_magnitudes_batched([torch.ones(3, 3)], [torch.ones(3, 3).half()], rank=1, backend="triton"),
         TypeError, "base has dtype torch.float16"),
        (lambda: reconstruct_magnitudes([(torch.ones(3, 2), torch.ones(3), torch.ones(2, 4))]), ValueError, "shapes"),
        (lambda: reconstruct_magnitudes([(torch.ones(3, 2).double(), torch.ones(2), torch.ones(2, 4))]), TypeError,
         "fp32"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_empty_list():
    assert lowrank_factors_batched([], rank=0) == [] and denoised_magnitudes_batched([], energy=0.9) == []


# ----------------------------------------------------------------------------- custom ops


def test_rsvd_ops_are_registered():
    for name in ("randomized_svd", "difference_energy", "reconstruct_abs"):
        assert hasattr(torch.ops.deftx, name)


@pytest.mark.parametrize("m,n,q", [(6, 5, 3), (3, 9, 5), (4, 4, 9)])
def test_fake_implementations_give_the_real_shapes(m, n, q):
    from torch._subclasses.fake_tensor import FakeTensorMode

    w1, w0, omega = torch.randn(m, n), torch.randn(m, n), torch.randn(n, q)
    real = torch.ops.deftx.randomized_svd([w1, w1], [w0, w0], omega, 1, "fp32", "torch")
    with FakeTensorMode() as mode:
        fake = torch.ops.deftx.randomized_svd(
            [mode.from_tensor(w1)] * 2, [mode.from_tensor(w0)] * 2, mode.from_tensor(omega), 1, "fp32", "torch"
        )
        energy = torch.ops.deftx.difference_energy([mode.from_tensor(w1)], [], "torch")
    assert [t.shape for t in fake] == [t.shape for t in real]
    assert [t.dtype for t in fake] == [t.dtype for t in real]
    assert energy.shape == (1,) and energy.dtype == torch.float64


def test_ops_run_on_meta_tensors():
    w1, omega = torch.empty(7, 5, device="meta"), torch.empty(5, 3, device="meta")
    u, s, vh = torch.ops.deftx.randomized_svd([w1], [], omega, 2, "fp32", "torch")
    assert (u.shape, s.shape, vh.shape) == ((1, 7, 3), (1, 3), (1, 3, 5)) and u.device.type == "meta"
    (out,) = torch.ops.deftx.reconstruct_abs([u[0]], [s[0]], [vh[0]], "fp32", "torch")
    assert out.shape == (7, 5) and out.device.type == "meta"


def test_ops_compile_into_one_graph():
    w1s, w0s = [torch.randn(12, 9) for _ in range(2)], [torch.randn(12, 9) for _ in range(2)]
    omega = torch.randn(9, 4)

    def scores(w1s, w0s, omega):
        u, s, vh = torch.ops.deftx.randomized_svd(w1s, w0s, omega, 1, "fp32", "torch")
        return torch.ops.deftx.reconstruct_abs([u[0], u[1]], [s[0], s[1]], [vh[0], vh[1]], "fp32", "torch")

    compiled = torch.compile(scores, backend="aot_eager", fullgraph=True)
    for got, want in zip(compiled(w1s, w0s, omega), scores(w1s, w0s, omega), strict=True):
        assert torch.equal(got, want)


def test_public_op_under_torch_compile_matches_eager():
    pairs = mixed_pairs()[:4]
    w1s, w0s = [a for a, _ in pairs], [b for _, b in pairs]

    def scores(w1s, w0s):
        return denoised_magnitudes_batched(w1s, w0s, rank=2, backend="torch")

    compiled = torch.compile(scores, backend="aot_eager")
    for got, want in zip(compiled(w1s, w0s), scores(w1s, w0s), strict=True):
        assert torch.equal(got, want)
