"""kernels/rsvd.py, interpreted on CPU and compiled on CUDA, against float64 torch references.

The references here use a dense Δ = f64(w1) − f64(w0) and ``torch.linalg`` in float64; the
kernels never form Δ. U, S, Vh are defined up to column signs, so the factors are compared
through U·diag(S)·Vh and S.
"""

from __future__ import annotations

import pytest
import torch

from deftx.kernels import kernel_module
from tests.helpers import UNIT_ROUNDOFF, assert_close, tolerance
from tests.kernels.devices import kernels_for, record_launches, to_device

rsvd = kernel_module("rsvd", interpret=True)
"""The interpreted module, for tests that launch nothing; kernel tests take the ``rsvd`` fixture."""


@pytest.fixture(name="rsvd")
def rsvd_on_device(device):
    """The rsvd kernel module for the test's device (interpreted on CPU, compiled on CUDA)."""
    return kernels_for("rsvd", device)

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["fp32", "bf16", "fp16"]


def dense_delta(w1: torch.Tensor, w0: torch.Tensor | None) -> torch.Tensor:
    return w1.double() - w0.double() if w0 is not None else w1.double()


def reference_rsvd(delta: torch.Tensor, omega: torch.Tensor, n_iter: int):
    """The contract's sequence on a dense float64 Δ."""

    def basis(y):
        return torch.linalg.qr(y, mode="reduced").Q

    q = basis(delta @ omega.double())
    for _ in range(n_iter):
        z = basis(delta.T @ q)
        q = basis(delta @ z)
    u_small, s, vh = torch.linalg.svd(q.T @ delta, full_matrices=False)
    return q @ u_small, s, vh


def decaying_matrix(m: int, n: int, gen: torch.Generator, decay: float = 0.7) -> torch.Tensor:
    """float64 (m, n) with singular values decay**i and random singular vectors."""
    k = min(m, n)
    u = torch.linalg.qr(torch.randn(m, k, generator=gen, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64)).Q
    return (u * decay ** torch.arange(k, dtype=torch.float64)) @ v.T


def weight_pair(m: int, n: int, dtype: torch.dtype, gen: torch.Generator):
    """(w1, w0) of ``dtype`` whose difference has a decaying spectrum (plus rounding noise)."""
    w0 = torch.randn(m, n, generator=gen).to(dtype)
    w1 = (w0.double() + decaying_matrix(m, n, gen)).to(dtype)
    return w1, w0


def product_tolerance(precision: str, reduction: int) -> float:
    """Relative bound (to |Δ|·|X|) of one product: fp32 summation, or two bf16 roundings."""
    if precision == "bf16":
        return tolerance(torch.bfloat16, 1)
    return tolerance(torch.float32, reduction + 1)


@pytest.fixture
def recorded(rsvd, monkeypatch):
    """Record every launch of the rsvd kernels: {kernel name: LaunchRecorder}."""
    kernels = ("_delta_matmul_kernel", "_sketch_t_delta_kernel", "_reconstruct_abs_kernel")
    return record_launches(monkeypatch, rsvd, kernels)


def assert_launches_declared(recorders, module) -> None:
    """Every recorded launch matches a KernelSpec that ``module`` declares (constexprs and
    launch options)."""
    for recorder in recorders.values():
        specs = [s for s in module.SPECIALIZATIONS if s.kernel is recorder.kernel]
        for launch in recorder.launches:
            matches = [
                s
                for s in specs
                if all(launch[k] == v for k, v in s.constexprs.items())
                and launch["num_warps"] == s.num_warps
                and launch["num_stages"] == s.num_stages
            ]
            constexprs = {k: launch[k] for k in specs[0].constexprs}
            assert matches, f"undeclared launch of {recorder.kernel.__name__}: {constexprs}"


# ----------------------------------------------------------------------------- Δ products

PRODUCT_CASES = [
    # (m, n, q): ragged, a single row, sketches wider than one BLOCK_Q tile, and tall /
    # wide shapes whose reduction is split across programs.
    (37, 53, 7),
    (64, 96, 16),
    (1, 5, 1),
    (16, 48, 70),
    (600, 24, 5),
    (24, 600, 7),
]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("m,n,q", PRODUCT_CASES)
def test_delta_products_match_dense(m, n, q, dtype, precision, recorded, rsvd, device):
    gen = torch.Generator().manual_seed(m * 1000 + n)
    batch = 2
    w1s = [torch.randn(m, n, generator=gen).to(dtype) for _ in range(batch)]
    w0s = [torch.randn(m, n, generator=gen).to(dtype) for _ in range(batch)]
    x = torch.randn(batch, n, q, generator=gen)
    x_t = torch.randn(batch, m, q, generator=gen)

    w1s_on, w0s_on = to_device(w1s, device), to_device(w0s, device)
    product = rsvd.delta_matmul(w1s_on, w0s_on, x.to(device), precision=precision)
    product_t = rsvd.delta_matmul(w1s_on, w0s_on, x_t.to(device), transpose=True, precision=precision)

    for b in range(batch):
        delta = dense_delta(w1s[b], w0s[b])
        expected, scale = delta @ x[b].double(), delta.abs() @ x[b].double().abs()
        rtol = product_tolerance(precision, n)
        assert_close(product[b], expected, rtol=0.0, atol=rtol * float(scale.max()), what="Δ @ X")
        expected_t, scale_t = delta.T @ x_t[b].double(), delta.abs().T @ x_t[b].double().abs()
        rtol_t = product_tolerance(precision, m)
        assert_close(product_t[b], expected_t, rtol=0.0, atol=rtol_t * float(scale_t.max()), what="Δᵀ @ X")
    assert_launches_declared(recorded, rsvd)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_delta_products_without_base(dtype, rsvd, device):
    gen = torch.Generator().manual_seed(3)
    w1s = [torch.randn(37, 53, generator=gen).to(dtype)]
    x = torch.randn(1, 53, 7, generator=gen)
    x_t = torch.randn(1, 37, 7, generator=gen)
    delta = w1s[0].double()
    scale = float((delta.abs() @ x[0].double().abs()).max())
    assert_close(
        rsvd.delta_matmul(to_device(w1s, device), None, x.to(device))[0],
        delta @ x[0].double(),
        rtol=0.0,
        atol=tolerance(torch.float32, 54) * scale,
    )
    scale_t = float((delta.abs().T @ x_t[0].double().abs()).max())
    assert_close(
        rsvd.delta_matmul(to_device(w1s, device), None, x_t.to(device), transpose=True)[0],
        delta.T @ x_t[0].double(),
        rtol=0.0,
        atol=tolerance(torch.float32, 38) * scale_t,
    )


def test_tall_and_wide_cases_split_the_reduction():
    """The (600, 24) Δᵀ@X and (24, 600) Δ@X cases above really run the split path."""
    for name, rows, reduction in (("sketch_t_delta", 24, 600), ("delta_matmul", 24, 600)):
        config = rsvd.matmul_config(name, "fp32", 32, align=1)  # n = 24 and 600: unaligned
        programs = 2 * -(-rows // config["BLOCK_ROWS"])
        split_blocks = rsvd.split_blocks_for(reduction, config["BLOCK_K"], programs)
        assert split_blocks * config["BLOCK_K"] < reduction


def test_split_plan_covers_the_reduction():
    for reduction in (1, 15, 16, 17, 600, 100_000):
        for programs in (1, 7, 600):
            blocks = rsvd.split_blocks_for(reduction, 16, programs)
            splits = -(-reduction // (blocks * 16))
            assert blocks >= 1 and (splits - 1) * blocks * 16 < reduction <= splits * blocks * 16
            assert splits == 1 or blocks >= rsvd.MIN_SPLIT_BLOCKS
    assert rsvd.split_blocks_for(100_000, 16, 600) * 16 >= 100_000  # enough tiles: no split


def test_block_q_choice():
    assert [rsvd.block_q_for(q, "fp32") for q in (1, 16, 33, 64, 65, 136)] == [32, 32, 64, 64, 64, 64]
    assert [rsvd.block_q_for(q, "bf16") for q in (1, 33, 65, 136)] == [32, 64, 128, 128]


# ----------------------------------------------------------------------------- randomized SVD

SVD_CASES = [
    # (m, n, q, n_iter)
    (37, 53, 7, 2),
    (64, 96, 16, 1),
    (96, 64, 16, 0),
    (1, 5, 1, 2),
    (1, 5, 7, 1),
]


def assert_factors_close(factors, expected, atol: float) -> None:
    u, s, vh = factors
    u_ref, s_ref, vh_ref = expected
    assert u.dtype == s.dtype == vh.dtype == torch.float32
    assert u.shape == u_ref.shape and s.shape == s_ref.shape and vh.shape == vh_ref.shape
    assert_close(s, s_ref, rtol=0.0, atol=atol, what="S")
    assert_close((u.double() * s.double()) @ vh.double(), (u_ref * s_ref) @ vh_ref, rtol=0.0, atol=atol, what="U S Vh")


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("m,n,q,n_iter", SVD_CASES)
def test_randomized_svd_matches_float64_reference(m, n, q, n_iter, dtype, recorded, rsvd, device):
    gen = torch.Generator().manual_seed(7 * m + n)
    w1, w0 = weight_pair(m, n, dtype, gen)
    omega = torch.randn(n, q, generator=gen)
    expected = reference_rsvd(dense_delta(w1, w0), omega, n_iter)

    factors = rsvd.randomized_svd(*to_device((w1, w0, omega), device), n_iter)

    # fp32 products (2 + 2 n_iter of them) against float64: a summation bound per product,
    # scaled by ||Δ||_2 = S[0].
    atol = tolerance(torch.float32, max(m, n)) * (2 + 2 * n_iter) * float(expected[1][0])
    assert_factors_close(factors, expected, atol)
    assert_launches_declared(recorded, rsvd)


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_bf16_products_keep_the_reconstruction_error(dtype, rsvd, device):
    """precision="bf16" changes ||Δ − U S Vh||_F / ||Δ||_F by under one bf16 rounding (2⁻⁸), and
    its U S Vh is within that of the float64 reference's, relative to ||Δ||_F.

    (Measured: under 1.4e-3 from the reference; the errors themselves are 3e-3 to 7e-2, so the
    former bound of 4 bf16 roundings, 1.6e-2, took a bf16 path without power iterations.)"""
    gen = torch.Generator().manual_seed(11)
    w1, w0 = weight_pair(64, 96, dtype, gen)
    omega = torch.randn(96, 16, generator=gen)
    delta = dense_delta(w1, w0)
    u_ref, s_ref, vh_ref = reference_rsvd(delta, omega, 2)
    bound = UNIT_ROUNDOFF[torch.bfloat16]
    errors, recons = {}, {}
    for precision in ("fp32", "bf16"):
        u, s, vh = rsvd.randomized_svd(*to_device((w1, w0, omega), device), 2, precision=precision)
        recons[precision] = ((u.double() * s.double()) @ vh.double()).cpu()
        errors[precision] = float((delta - recons[precision]).norm() / delta.norm())
    assert abs(errors["bf16"] - errors["fp32"]) <= bound, errors
    off = float((recons["bf16"] - (u_ref * s_ref) @ vh_ref).norm() / delta.norm())
    assert off <= bound, f"bf16 U S Vh is {off:.2e} of ||Δ|| from the float64 reference's (bound {bound:.1e})"


def test_randomized_svd_of_a_single_matrix_without_base(rsvd, device):
    gen = torch.Generator().manual_seed(5)
    w1 = decaying_matrix(40, 24, gen).float()
    omega = torch.randn(24, 8, generator=gen)
    expected = reference_rsvd(w1.double(), omega, 1)
    atol = tolerance(torch.float32, 40) * 4 * float(expected[1][0])
    assert_factors_close(rsvd.randomized_svd(w1.to(device), None, omega.to(device), 1), expected, atol)


def exact_low_rank_pair(m: int, n: int, rank: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 (w1, w0) whose difference is exactly of ``rank`` (small-integer outer products, no rounding)."""
    w0 = torch.randint(-8, 9, (m, n), generator=gen).float()
    left = torch.randint(-3, 4, (m, rank), generator=gen).float()
    right = torch.randint(-3, 4, (rank, n), generator=gen).float()
    return w0 + left @ right, w0


def steep_pair(m: int, n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 (w1, w0) whose difference has singular values 10^0, 10^-1, ..., 10^-5, then 0: two
    power iterations make the sketch's condition number about 10^25."""
    u, _ = torch.linalg.qr(torch.randn(m, 6, generator=gen, dtype=torch.float64))
    v, _ = torch.linalg.qr(torch.randn(n, 6, generator=gen, dtype=torch.float64))
    delta = (u * 10.0 ** -torch.arange(6, dtype=torch.float64)) @ v.T
    w0 = torch.zeros(m, n)
    return delta.float(), w0


@pytest.mark.parametrize(
    "case", ["rank-2 of q=7", "steep spectrum", "zero difference"],
)
def test_randomized_svd_of_rank_deficient_and_ill_conditioned_differences(case, rsvd, device):
    """The orthonormal bases stay defined and accurate where the sketch is singular or
    extremely ill-conditioned (the Cholesky-QR shift), and a zero difference gives zeros, no NaN."""
    gen = torch.Generator().manual_seed(11)
    m, n, q, n_iter = 48, 40, 7, 2
    if case == "rank-2 of q=7":
        w1, w0 = exact_low_rank_pair(m, n, 2, gen)
    elif case == "steep spectrum":
        w1, w0 = steep_pair(m, n, gen)
    else:
        w0 = torch.randn(m, n, generator=gen)
        w1 = w0.clone()
    omega = torch.randn(n, q, generator=gen)
    expected = reference_rsvd(dense_delta(w1, w0), omega, n_iter)
    factors = rsvd.randomized_svd(*to_device((w1, w0, omega), device), n_iter)
    assert all(bool(torch.isfinite(f).all()) for f in factors)
    scale = max(float(expected[1][0]), 1.0) if case == "zero difference" else float(expected[1][0])
    atol = tolerance(torch.float32, max(m, n)) * (2 + 2 * n_iter) * scale
    assert_factors_close(factors, expected, atol)


def test_randomized_svd_of_an_empty_matrix(rsvd, device):
    w1, w0 = torch.empty(0, 7), torch.empty(0, 7)
    omega = torch.randn(7, 3)
    u, s, vh = rsvd.randomized_svd(*to_device((w1, w0, omega), device), 2)
    u_ref, s_ref, vh_ref = reference_rsvd(dense_delta(w1, w0), omega, 2)
    assert u.shape == u_ref.shape and s.shape == s_ref.shape and vh.shape == vh_ref.shape
    assert vh.numel() == 0 and s.numel() == 0


def test_batched_groups_same_shapes_into_one_launch_per_product(monkeypatch, rsvd, device):
    gen = torch.Generator().manual_seed(13)
    specs = [  # (m, n, dtype, has_base, q)
        (37, 53, torch.float32, True, 7),
        (24, 32, torch.bfloat16, True, 5),
        (37, 53, torch.float32, True, 7),
        (24, 32, torch.bfloat16, False, 5),
        (37, 53, torch.float32, True, 7),
        (24, 32, torch.bfloat16, True, 5),
    ]
    w1s, w0s, omegas = [], [], []
    for m, n, dtype, has_base, q in specs:
        w1, w0 = weight_pair(m, n, dtype, gen)
        w1s.append(w1)
        w0s.append(w0 if has_base else None)
        omegas.append(torch.randn(n, q, generator=gen))
    calls = []
    original = rsvd.delta_matmul

    def counting(w1_group, *args, **kwargs):
        calls.append(len(w1_group))
        return original(w1_group, *args, **kwargs)

    monkeypatch.setattr(rsvd, "delta_matmul", counting)
    n_iter = 1
    results = rsvd.randomized_svd_batched(*to_device((w1s, w0s, omegas), device), n_iter)

    # three groups: 3 x (37, 53) fp32 with base, 2 x (24, 32) bf16 with base, 1 without.
    products = 2 + 2 * n_iter
    assert sorted(calls) == sorted([3] * products + [2] * products + [1] * products)
    for i, factors in enumerate(results):
        expected = reference_rsvd(dense_delta(w1s[i], w0s[i]), omegas[i], n_iter)
        atol = tolerance(torch.float32, 53) * 4 * float(expected[1][0])
        assert_factors_close(factors, expected, atol)


def test_invalid_precision_is_rejected():
    with pytest.raises(ValueError, match="precision"):
        rsvd.randomized_svd(torch.randn(4, 4), None, torch.randn(4, 2), 0, precision="fp8")


# ----------------------------------------------------------------------------- reconstruction


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("m,n,r", [(37, 53, 7), (64, 96, 16), (1, 5, 1), (70, 130, 40), (5, 3, 0), (0, 5, 3)])
def test_reconstruct_abs_matches_dense(m, n, r, precision, recorded, rsvd, device):
    gen = torch.Generator().manual_seed(m + 31 * n + r)
    us = torch.randn(m, r, generator=gen)
    vh = torch.randn(r, n, generator=gen)
    out = rsvd.reconstruct_abs(us.to(device), vh.to(device), precision=precision)

    expected = (us.double() @ vh.double()).abs()
    scale = float((us.double().abs() @ vh.double().abs()).max()) if m * n * r else 0.0
    rtol = tolerance(torch.bfloat16, 1) if precision == "bf16" else tolerance(torch.float32, r)
    assert out.dtype == torch.float32 and out.shape == (m, n)
    assert_close(out, expected, rtol=0.0, atol=rtol * scale, what="|US Vh|")
    assert bool((out >= 0).all())
    assert_launches_declared(recorded, rsvd)


def test_reconstruct_abs_batched_mixes_ranks_in_one_launch(recorded, rsvd, device):
    gen = torch.Generator().manual_seed(17)
    ranks = [3, 0, 17, 8]
    us = [torch.randn(48, r, generator=gen) for r in ranks]
    vhs = [torch.randn(r, 64, generator=gen) for r in ranks]
    us.append(torch.randn(9, 2, generator=gen))
    vhs.append(torch.randn(2, 11, generator=gen))

    outs = rsvd.reconstruct_abs_batched(to_device(us, device), to_device(vhs, device))

    assert len(recorded["_reconstruct_abs_kernel"].launches) == 2
    for a, b, out in zip(us, vhs, outs, strict=True):
        scale = float((a.double().abs() @ b.double().abs()).max()) if a.shape[1] else 0.0
        atol = tolerance(torch.float32, a.shape[1]) * scale
        assert_close(out, (a.double() @ b.double()).abs(), rtol=0.0, atol=atol)


def test_unaligned_rows_use_the_unaligned_specialisation(recorded, rsvd, device):
    gen = torch.Generator().manual_seed(19)
    rsvd.reconstruct_abs(torch.randn(8, 4, generator=gen).to(device), torch.randn(4, 53, generator=gen).to(device))
    rsvd.reconstruct_abs(torch.randn(8, 4, generator=gen).to(device), torch.randn(4, 96, generator=gen).to(device))
    aligns = [launch["ALIGN"] for launch in recorded["_reconstruct_abs_kernel"].launches]
    assert aligns == [1, rsvd.ALIGNMENT]


# ----------------------------------------------------------------------------- specs and models


def test_specializations_cover_every_configuration():
    names = [s.name for s in rsvd.SPECIALIZATIONS]
    assert len(names) == len(set(names))
    per_dtype = 2 * 2  # base x alignment
    matmuls = sum(len(rsvd.PRECISION_WEIGHT_DTYPES[p]) * per_dtype for (_, p, _) in rsvd.MATMUL_CONFIGS)
    energies = len(rsvd.WEIGHT_DTYPES) * per_dtype
    assert len(names) == matmuls + len(rsvd.PRECISIONS) * 2 + energies  # reconstruct: precision x alignment
    for spec in rsvd.SPECIALIZATIONS:
        assert set(spec.constexprs) == {k for k, v in spec.signature.items() if v == "constexpr"}
        assert ("tensor_cores" in spec.promises) == (spec.constexprs.get("PRECISION") in rsvd.TENSOR_CORE_PRECISIONS)
        assert ("vectorized_loads" in spec.promises) == (spec.constexprs["ALIGN"] > 1)
