"""The batched, fused DeFT-X path of kernels/rsvd.py against float64 torch references.

Covers what the training path launches: one shared sketch per shape group (read through a
batch stride of 0), ``randomized_svd_group``, ``difference_energy`` (||Δ||² without Δ),
``reconstruct_magnitudes`` (|U diag(S) Vh| from views, ranks mixed in one launch) and the
``"tf32x3"`` product precision. Runs under the Triton interpreter on CPU and compiled on
CUDA (skipped without a GPU), with the same references and tolerances.
"""

from __future__ import annotations

import pytest
import torch

from deftx.kernels import kernel_module
from tests.helpers import assert_close, tolerance
from tests.kernels.devices import record_launches

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["fp32", "bf16", "fp16"]
TF32X3_UNIT = 2.0**-19
"""Relative error of one 3xTF32 product term (two truncated low parts of 2⁻²¹ each and the
dropped lo·lo term of 2⁻²², rounded up): a_hi b_hi + a_hi b_lo + a_lo b_hi against a b."""

DEVICES = [
    pytest.param("cpu", id="interpreter"),
    pytest.param(
        "cuda", id="cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    ),
]


@pytest.fixture(params=DEVICES)
def device(request) -> str:
    return request.param


def module_for(device: str):
    return kernel_module("rsvd", interpret=device == "cpu")


KERNELS = ("_delta_matmul_kernel", "_sketch_t_delta_kernel", "_reconstruct_abs_kernel", "_difference_energy_kernel")


@pytest.fixture
def launches(monkeypatch, device):
    """{kernel name: LaunchRecorder} for the rsvd module of ``device``."""
    return record_launches(monkeypatch, module_for(device), KERNELS)


def assert_launches_declared(rsvd, counters) -> None:
    """Every recorded launch matches a declared KernelSpec (constexprs and launch options)."""
    for counter in counters.values():
        specs = [s for s in rsvd.SPECIALIZATIONS if s.kernel is counter.kernel]
        for launch in counter.launches:
            declared = any(
                all(launch[k] == v for k, v in s.constexprs.items())
                and launch["num_warps"] == s.num_warps
                and launch["num_stages"] == s.num_stages
                for s in specs
            )
            constexprs = {k: launch[k] for k in specs[0].constexprs}
            assert declared, f"undeclared launch of {counter.kernel.__name__}: {constexprs}"


def decaying_difference(m: int, n: int, gen: torch.Generator, decay: float = 0.7) -> torch.Tensor:
    """float64 (m, n) with singular values decay**i and random singular vectors."""
    k = min(m, n)
    u = torch.linalg.qr(torch.randn(m, k, generator=gen, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(n, k, generator=gen, dtype=torch.float64)).Q
    return (u * decay ** torch.arange(k, dtype=torch.float64)) @ v.T


def weight_pairs(count: int, m: int, n: int, dtype: torch.dtype, device: str, seed: int):
    """``count`` (w1, w0) pairs of ``dtype`` whose differences have decaying spectra."""
    gen = torch.Generator().manual_seed(seed)
    pairs = []
    for _ in range(count):
        w0 = torch.randn(m, n, generator=gen).to(dtype)
        w1 = (w0.double() + decaying_difference(m, n, gen)).to(dtype)
        pairs.append((w1.to(device), w0.to(device)))
    return pairs


def dense_delta(w1: torch.Tensor, w0: torch.Tensor | None) -> torch.Tensor:
    return (w1.double() - w0.double() if w0 is not None else w1.double()).cpu()


def reference_rsvd(delta: torch.Tensor, omega: torch.Tensor, n_iter: int):
    """The contract's sequence on a dense float64 Δ."""

    def basis(y):
        return torch.linalg.qr(y, mode="reduced").Q

    q = basis(delta @ omega.double().cpu())
    for _ in range(n_iter):
        z = basis(delta.T @ q)
        q = basis(delta @ z)
    u_small, s, vh = torch.linalg.svd(q.T @ delta, full_matrices=False)
    return q @ u_small, s, vh


def product_unit(precision: str, reduction: int) -> float:
    """Relative bound (to |Δ|·|X|) of one product at ``precision``."""
    if precision == "bf16":
        return tolerance(torch.bfloat16, 1)
    if precision == "tf32x3":
        return TF32X3_UNIT + tolerance(torch.float32, reduction + 1)
    return tolerance(torch.float32, reduction + 1)


# ----------------------------------------------------------------------------- shared sketch


PRECISION_DTYPES = [
    pytest.param(precision, dtype, id=f"{precision}-{dtype_id}")
    for precision in ("fp32", "tf32x3", "bf16")
    for dtype, dtype_id in zip(DTYPES, DTYPE_IDS, strict=True)
    if precision != "tf32x3" or dtype == torch.float32  # tf32x3: fp32 weights only
]


@pytest.mark.parametrize("precision,dtype", PRECISION_DTYPES)
@pytest.mark.parametrize("m,n,q", [(37, 53, 7), (48, 64, 40), (1, 5, 1), (600, 24, 5), (24, 600, 7)])
def test_shared_sketch_products_match_dense(m, n, q, dtype, precision, device, launches):
    rsvd = module_for(device)
    gen = torch.Generator().manual_seed(m * 101 + n)
    pairs = [(torch.randn(m, n, generator=gen).to(dtype), torch.randn(m, n, generator=gen).to(dtype)) for _ in range(3)]
    w1s = [a.to(device) for a, _ in pairs]
    w0s = [b.to(device) for _, b in pairs]
    omega = torch.randn(n, q, generator=gen).to(device)

    product = rsvd.delta_matmul(w1s, w0s, omega.expand(3, n, q), precision=precision)

    (launch,) = launches["_delta_matmul_kernel"].launches
    assert launch["x_batch_stride"] == 0, "the shared sketch was copied per matrix"
    for b in range(3):
        delta = dense_delta(w1s[b], w0s[b])
        expected = delta @ omega.double().cpu()
        scale = float((delta.abs() @ omega.double().cpu().abs()).max())
        atol = product_unit(precision, n) * scale
        assert_close(product[b], expected, rtol=0.0, atol=atol, what=f"Δ_{b} @ Ω ({precision})")
    assert_launches_declared(rsvd, launches)


@pytest.mark.parametrize("m,n,q", [(37, 53, 7), (64, 96, 40), (600, 24, 5)])
def test_tf32x3_products_are_within_the_tf32x3_bound_and_beat_bf16(m, n, q, device):
    """tf32x3 against float64 holds its 2⁻¹⁹ bound, which bf16 products (2⁻⁸) do not."""
    rsvd = module_for(device)
    gen = torch.Generator().manual_seed(m + n + q)
    w1 = torch.randn(m, n, generator=gen).to(device)
    w0 = torch.randn(m, n, generator=gen).to(device)
    x_t = torch.randn(1, m, q, generator=gen).to(device)
    delta = dense_delta(w1, w0)
    expected = delta.T @ x_t[0].double().cpu()
    scale = float((delta.abs().T @ x_t[0].double().cpu().abs()).max())
    results, errors = {}, {}
    for precision in ("tf32x3", "bf16", "fp32"):
        results[precision] = rsvd.delta_matmul([w1], [w0], x_t, transpose=True, precision=precision)[0]
        errors[precision] = float((results[precision].double().cpu() - expected).abs().max()) / scale
    assert errors["tf32x3"] <= product_unit("tf32x3", m), errors
    assert errors["bf16"] > product_unit("tf32x3", m), errors
    assert not torch.equal(results["tf32x3"], results["fp32"]), "tf32x3 ran as IEEE fp32"


def test_tf32x3_is_rejected_for_half_precision_weights(device):
    rsvd = module_for(device)
    w = torch.randn(8, 16).to(device, torch.bfloat16)
    with pytest.raises(ValueError, match="fp32 weights"):
        rsvd.delta_matmul([w], [w], torch.randn(1, 16, 4).to(device), precision="tf32x3")


# ----------------------------------------------------------------------------- group rSVD


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("m,n,q,n_iter", [(37, 53, 7, 2), (96, 64, 16, 0), (1, 5, 7, 1), (48, 33, 48, 1)])
def test_group_rsvd_matches_per_matrix_float64_reference(m, n, q, n_iter, dtype, device, launches):
    rsvd = module_for(device)
    pairs = weight_pairs(3, m, n, dtype, device, seed=7 * m + n)
    omega = torch.randn(n, q, generator=torch.Generator().manual_seed(q)).to(device)

    u, s, vh = rsvd.randomized_svd_group([a for a, _ in pairs], [b for _, b in pairs], omega, n_iter)

    k = min(m, n, q)
    assert u.shape == (3, m, k) and s.shape == (3, k) and vh.shape == (3, k, n)
    assert u.is_contiguous() and s.is_contiguous() and vh.is_contiguous()
    products = len(launches["_delta_matmul_kernel"].launches) + len(launches["_sketch_t_delta_kernel"].launches)
    assert products == 2 + 2 * n_iter, "one launch per product for the whole group"
    for b, (w1, w0) in enumerate(pairs):
        u_ref, s_ref, vh_ref = reference_rsvd(dense_delta(w1, w0), omega, n_iter)
        atol = tolerance(torch.float32, max(m, n)) * (2 + 2 * n_iter) * float(s_ref[0])
        assert_close(s[b], s_ref, rtol=0.0, atol=atol, what=f"S_{b}")
        recon = (u[b].double() * s[b].double()) @ vh[b].double()
        assert_close(recon.cpu(), (u_ref * s_ref) @ vh_ref, rtol=0.0, atol=atol, what=f"U S Vh_{b}")
    assert_launches_declared(rsvd, launches)


def test_group_rsvd_without_base(device):
    rsvd = module_for(device)
    gen = torch.Generator().manual_seed(5)
    w1s = [decaying_difference(40, 24, gen).float().to(device) for _ in range(2)]
    omega = torch.randn(24, 8, generator=gen).to(device)
    u, s, vh = rsvd.randomized_svd_group(w1s, None, omega, 1)
    for b in range(2):
        u_ref, s_ref, vh_ref = reference_rsvd(w1s[b].double().cpu(), omega, 1)
        atol = tolerance(torch.float32, 40) * 4 * float(s_ref[0])
        assert_close((u[b].double() * s[b].double()) @ vh[b].double(), (u_ref * s_ref) @ vh_ref, rtol=0.0, atol=atol)


def test_tf32x3_keeps_the_reconstruction_error_of_fp32_products(device):
    """||Δ − U S Vh||_F / ||Δ||_F with tf32x3 products equals fp32's to within the products' bound."""
    rsvd = module_for(device)
    pairs = weight_pairs(2, 64, 96, torch.float32, device, seed=11)
    omega = torch.randn(96, 16, generator=torch.Generator().manual_seed(1)).to(device)
    errors = {}
    for precision in ("fp32", "tf32x3"):
        w1s, w0s = [a for a, _ in pairs], [b for _, b in pairs]
        u, s, vh = rsvd.randomized_svd_group(w1s, w0s, omega, 2, precision=precision)
        errors[precision] = [
            float((dense_delta(w1, w0) - ((u[b].double() * s[b].double()) @ vh[b].double()).cpu()).norm())
            / float(dense_delta(w1, w0).norm())
            for b, (w1, w0) in enumerate(pairs)
        ]
    bound = 6 * product_unit("tf32x3", 96)  # 6 products, each within its bound of ||Δ||
    for fp32_error, tf32x3_error in zip(errors["fp32"], errors["tf32x3"], strict=True):
        assert abs(tf32x3_error - fp32_error) <= bound, errors


# ----------------------------------------------------------------------------- ||Δ||²


@pytest.mark.parametrize("has_base", [True, False], ids=["diff", "single"])
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
@pytest.mark.parametrize("m,n", [(37, 53), (64, 96), (1, 1), (130, 131), (0, 7), (16, 16)])
def test_difference_energy_matches_float64(m, n, dtype, has_base, device, launches):
    rsvd = module_for(device)
    gen = torch.Generator().manual_seed(m + n)
    w1s = [torch.randn(m, n, generator=gen).to(dtype).to(device) for _ in range(3)]
    w0s = [torch.randn(m, n, generator=gen).to(dtype).to(device) for _ in range(3)] if has_base else None

    energies = rsvd.difference_energy(w1s, w0s)

    assert energies.dtype == torch.float64 and energies.shape == (3,)
    assert len(launches["_difference_energy_kernel"].launches) == (1 if m * n else 0)
    for b in range(3):
        expected = dense_delta(w1s[b], w0s[b] if has_base else None).square().sum()
        # only the fp32 difference rounds (each square within 2u of the fp64 one); squares and sums are fp64
        assert_close(energies[b].cpu(), expected, rtol=tolerance(torch.float32), what=f"||Δ_{b}||²")
    assert_launches_declared(rsvd, launches)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_difference_energy_of_entries_whose_square_overflows_fp32(dtype, device):
    """|Δ| = 2^70 is finite in fp32 and bf16, its square 2^140 is not: the energy is
    2^140 · numel, as in fp64, not Inf (which the ops refuse as NaN / Inf in θ1 or θ0)."""
    rsvd = module_for(device)
    w1 = torch.full((3, 5), 2.0**69, dtype=dtype).to(device)
    w0 = -w1

    energies = rsvd.difference_energy([w1], [w0])

    assert float(energies[0]) == 2.0**140 * 15


def test_difference_energy_of_an_empty_group(device):
    assert module_for(device).difference_energy([], None).shape == (0,)


# ----------------------------------------------------------------------------- |U S Vh|


@pytest.mark.parametrize("precision", ["fp32", "tf32x3", "bf16"])
def test_reconstruct_magnitudes_reads_views_and_mixes_ranks(precision, device, launches):
    """Column slices of one group's U, prefixes of S and row prefixes of Vh: no copies, one launch per shape."""
    rsvd = module_for(device)
    gen = torch.Generator().manual_seed(17)
    ranks = [3, 0, 17, 8]
    u_group = torch.randn(4, 48, 20, generator=gen).to(device)
    s_group = torch.rand(4, 20, generator=gen).to(device) + 0.5
    vh_group = torch.randn(4, 20, 64, generator=gen).to(device)
    us = [u_group[b, :, :r] for b, r in enumerate(ranks)] + [torch.randn(9, 2, generator=gen).to(device)]
    ss = [s_group[b, :r] for b, r in enumerate(ranks)] + [torch.rand(2, generator=gen).to(device)]
    vhs = [vh_group[b, :r] for b, r in enumerate(ranks)] + [torch.randn(2, 11, generator=gen).to(device)]

    outs = rsvd.reconstruct_magnitudes(us, ss, vhs, precision=precision)

    assert len(launches["_reconstruct_abs_kernel"].launches) == 2  # (48, 64) and (9, 11)
    first = launches["_reconstruct_abs_kernel"].launches[0]
    assert first["u_table"].tolist() == [u.data_ptr() for u in us[:4]], "U was copied"
    for u, s, vh, out in zip(us, ss, vhs, outs, strict=True):
        a, b = u.double().cpu() * s.double().cpu(), vh.double().cpu()
        scale = float((a.abs() @ b.abs()).max()) if u.shape[1] else 0.0
        atol = product_unit(precision, u.shape[1]) * scale
        assert out.dtype == torch.float32 and out.shape == (u.shape[0], vh.shape[1])
        assert_close(out.cpu(), (a @ b).abs(), rtol=0.0, atol=atol, what=f"|U S Vh| rank {u.shape[1]}")
    assert_launches_declared(rsvd, launches)


def test_reconstruct_magnitudes_copies_column_major_factors(device):
    """A column-major U (as LAPACK returns it) and a transposed Vh are read correctly."""
    rsvd = module_for(device)
    gen = torch.Generator().manual_seed(3)
    u = torch.randn(5, 30, generator=gen).to(device).T  # (30, 5), stride (1, 30)
    vh = torch.randn(21, 5, generator=gen).to(device).T  # (5, 21), stride (1, 5)
    s = torch.rand(10, generator=gen).to(device)[::2]  # stride 2
    (out,) = rsvd.reconstruct_magnitudes([u], [s], [vh])
    expected = ((u.double() * s.double()) @ vh.double()).abs().cpu()
    atol = tolerance(torch.float32, 5) * float(((u.double() * s.double()).abs() @ vh.double().abs()).max())
    assert_close(out.cpu(), expected, rtol=0.0, atol=atol)


def test_precisions_agree_with_the_ops_layer():
    """deftx.ops.denoise validates against the same precision names the kernels specialise."""
    from deftx.ops import denoise

    rsvd = kernel_module("rsvd", interpret=True)
    assert set(denoise.PRECISIONS) == set(rsvd.PRECISIONS)
    fp32_only = {p for p, dtypes in rsvd.PRECISION_WEIGHT_DTYPES.items() if dtypes == (torch.float32,)}
    assert fp32_only == set(denoise.FP32_ONLY_PRECISIONS)


@pytest.mark.parametrize("groups", [0, 1, 7, 16, 37])
@pytest.mark.parametrize("workers", [1, 2, 4])
def test_host_eigh_over_threads_equals_one_batched_call(groups, workers, monkeypatch):
    """The small SVD's host eigh, cut into chunks decomposed on several threads: bit for bit the
    batched call, each chunk at least MIN_EIGH_CHUNK matrices, as many threads as chunks."""
    import threading

    rsvd = kernel_module("rsvd", interpret=True)
    a = torch.randn(groups, 12, 30, dtype=torch.float64, generator=torch.Generator().manual_seed(groups))
    grams = a @ a.mT
    expected_values, expected_vectors = torch.linalg.eigh(grams)
    calls, eigh = [], torch.linalg.eigh

    def recorded(batch):
        calls.append((threading.get_ident(), batch.shape[0]))
        return eigh(batch)

    monkeypatch.setattr(torch.linalg, "eigh", recorded)
    values, vectors = rsvd.host_eigh(grams, workers)
    assert torch.equal(values, expected_values) and torch.equal(vectors, expected_vectors)
    chunks = min(workers, groups // rsvd.MIN_EIGH_CHUNK)
    assert sum(size for _, size in calls) == groups
    assert len(calls) == (chunks if chunks >= 2 else 1)
    if chunks >= 2:
        assert min(size for _, size in calls) >= rsvd.MIN_EIGH_CHUNK
        assert threading.get_ident() not in {thread for thread, _ in calls}


def test_host_eigh_over_threads_passes_a_worker_error_on(monkeypatch):
    """An error of one chunk's eigh (LAPACK's, on a bad matrix) reaches the caller as it is."""
    rsvd = kernel_module("rsvd", interpret=True)
    grams = torch.eye(6, dtype=torch.float64).repeat(32, 1, 1)
    grams[21, 2, 3] = grams[21, 3, 2] = float("nan")
    eigh = torch.linalg.eigh

    def failing(batch):
        if batch.isnan().any():
            raise torch.linalg.LinAlgError("linalg.eigh: the algorithm failed to converge")
        return eigh(batch)

    monkeypatch.setattr(torch.linalg, "eigh", failing)
    with pytest.raises(torch.linalg.LinAlgError, match="failed to converge"):
        rsvd.host_eigh(grams, 4)
