"""lowrank_denoise / denoised_magnitudes against float64 SVDs and hand-built low-rank matrices."""

from __future__ import annotations

import pytest
import torch

from deftx.ops import denoised_magnitudes, lowrank_denoise
from deftx.ops.denoise import energy_rank, energy_sketch_width
from tests.helpers import assert_close, tolerance
from tests.ops.conftest import cpu_backends


def low_rank_plus_noise(m, n, rank, noise, seed):
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(m, rank, generator=gen, dtype=torch.float64)
    b = torch.randn(rank, n, generator=gen, dtype=torch.float64)
    signal = a @ b
    return signal, signal + noise * torch.randn(m, n, generator=gen, dtype=torch.float64)


def truncated_svd64(delta, rank):
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


@pytest.mark.parametrize("backend", cpu_backends("rsvd"))
@pytest.mark.parametrize(("m", "n"), [(37, 53), (64, 20), (5, 1)])
def test_randomized_matches_exact_truncation(backend, m, n):
    rank = min(3, m, n)
    _, noisy = low_rank_plus_noise(m, n, rank, 1e-3, seed=m)
    base = torch.randn(m, n, dtype=torch.float64)
    w0, w1 = base.float(), (base + noisy).float()
    want = truncated_svd64(w1.double() - w0.double(), rank)
    got = lowrank_denoise(w1, rank, base=w0, n_iter=2, seed=1, backend=backend)
    scale = float(want.abs().max())
    assert_close(got, want, rtol=0, atol=scale * (1e-3 + tolerance(torch.float32, max(m, n))), what="rsvd recon")


def test_exact_path_equals_float64_truncated_svd():
    _, noisy = low_rank_plus_noise(30, 40, 4, 0.1, seed=2)
    got = lowrank_denoise(noisy.float(), 4, method="exact")
    assert_close(got, truncated_svd64(noisy, 4), rtol=0, atol=float(noisy.abs().max()) * tolerance(torch.float32, 40))


def test_recovers_an_exactly_low_rank_difference():
    signal, _ = low_rank_plus_noise(48, 33, 2, 0.0, seed=3)
    base = torch.randn(48, 33)
    got = lowrank_denoise(base + signal.float(), 2, base=base, seed=5)
    assert_close(got, signal, rtol=0, atol=float(signal.abs().max()) * 1e-4, what="rank-2 recovery")


def slowly_decaying(m, n, decay, seed):
    """(m, n) float64 Δ with singular values ``decay**i`` and random singular vectors."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(torch.randn(m, min(m, n), generator=gen, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(n, min(m, n), generator=gen, dtype=torch.float64)).Q
    return (u * decay ** torch.arange(min(m, n), dtype=torch.float64)) @ v.T


@pytest.mark.parametrize(
    ("rank", "q", "oversample", "width"),
    [(53, 64, 8, None), (56, 64, 8, None), (57, 64, 8, 96), (30, 32, 8, 64), (53, 64, 16, 96), (None, 64, 8, 96),
     (None, 96, 8, None), (90, 96, 8, None), (0, 64, 8, None), (30, 32, 40, 70)],
)
def test_energy_sketch_width_keeps_oversample_spare_columns(rank, q, oversample, width):
    """Settled when the rank leaves ``oversample`` columns of a width-q sketch (or q is the full 96),
    else at least doubled, at least rank + oversample, at most 96."""
    assert energy_sketch_width(rank, q, 96, oversample) == width


def test_randomized_energy_policy_oversamples_the_rank_it_keeps():
    """The 90%-energy rank of a slowly decaying 96 x 128 Δ is 53: a 64-column sketch holds it but
    leaves 11 spare columns, fewer than oversample=16, so the sketch widens (to the full 96) and the
    components kept are the exact SVD's. (It kept the 64-column sketch's rank 54, 11% off the exact
    reconstruction, whatever the oversample.)"""
    delta = slowly_decaying(96, 128, 0.98, seed=4).float()
    want, _, s_want, _ = lowrank_denoise(delta, energy=0.9, method="exact", return_factors=True)
    got, _, s_got, _ = lowrank_denoise(delta, energy=0.9, oversample=16, n_iter=2, return_factors=True)
    assert s_want.numel() == s_got.numel() == 53
    error = float(torch.linalg.matrix_norm(got - want) / torch.linalg.matrix_norm(want))
    assert error < 1e-4, f"relative error {error:.2e} of the randomized energy-0.9 reconstruction"


def test_energy_rank_hand_computed():
    s = torch.tensor([3.0, 2.0, 1.0])  # energies 9, 4, 1 of total 14
    assert energy_rank(s, 14.0, 0.5) == 1
    assert energy_rank(s, 14.0, 0.9) == 2  # 13/14 = 0.93
    assert energy_rank(s, 14.0, 1.0) == 3
    assert energy_rank(s, 100.0, 0.9) is None
    assert energy_rank(s, 0.0, 0.9) == 0


@pytest.mark.parametrize("method", ["exact", "randomized"])
def test_energy_policy_picks_the_rank_holding_the_fraction(method):
    gen = torch.Generator().manual_seed(4)
    u = torch.linalg.qr(torch.randn(40, 40, generator=gen)).Q
    v = torch.linalg.qr(torch.randn(30, 30, generator=gen)).Q
    s = torch.tensor([10.0, 5.0, 2.0] + [0.1] * 27)
    delta = (u[:, :30] * s) @ v.T
    # energies 100, 25, 4, 27 * 0.01; total 129.27: 0.9 needs the first 3 (129/129.27 = 0.998; 125 = 0.967)
    _recon, _, sv, _ = lowrank_denoise(delta, energy=0.9, method=method, return_factors=True)
    assert sv.numel() == 2
    recon3, _, sv3, _ = lowrank_denoise(delta, energy=0.99, method=method, return_factors=True)
    assert sv3.numel() == 3
    assert_close(recon3, truncated_svd64(delta, 3), rtol=0, atol=1e-4)


def test_zero_difference_gives_zero_rank():
    w = torch.randn(6, 4)
    recon, _u, s, _vh = lowrank_denoise(w, energy=0.9, base=w.clone(), return_factors=True)
    assert s.numel() == 0 and torch.equal(recon, torch.zeros(6, 4))


def test_seeded_and_deterministic():
    w = torch.randn(50, 40)
    a = lowrank_denoise(w, 5, seed=11)
    b = lowrank_denoise(w, 5, seed=11)
    assert torch.equal(a, b)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_inputs(dtype):
    signal, _ = low_rank_plus_noise(20, 24, 2, 0.0, seed=6)
    base = torch.randn(20, 24).to(dtype)
    w1 = (base.float() + signal.float()).to(dtype)
    want = truncated_svd64(w1.double() - base.double(), 2)
    got = lowrank_denoise(w1, 2, base=base)
    assert_close(got, want, rtol=0, atol=float(want.abs().max()) * 1e-4)


def test_denoised_magnitudes_is_abs_of_reconstruction():
    w1, w0 = torch.randn(30, 20), torch.randn(30, 20)
    want = lowrank_denoise(w1, 4, base=w0, seed=2).abs()
    got = denoised_magnitudes(w1, w0, rank=4, seed=2)
    assert_close(got, want, rtol=tolerance(torch.float32, 4), atol=1e-6)


def test_empty_matrix():
    assert lowrank_denoise(torch.zeros(0, 5), 0).shape == (0, 5)


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"matrix": torch.ones(3), "rank": 1}, ValueError, "2-D"),
        ({"matrix": torch.ones(3, 3), "rank": 1, "energy": 0.5}, ValueError, "exactly one"),
        ({"matrix": torch.ones(3, 3)}, ValueError, "exactly one"),
        ({"matrix": torch.ones(3, 3), "rank": 4}, ValueError, "outside"),
        ({"matrix": torch.ones(3, 3), "energy": 1.5}, ValueError, "energy"),
        ({"matrix": torch.ones(3, 3), "rank": 1, "base": torch.ones(3, 2)}, ValueError, "base shape"),
        ({"matrix": torch.ones(3, 3, dtype=torch.int32), "rank": 1}, TypeError, "int32"),
        ({"matrix": torch.ones(3, 3), "rank": 1, "method": "svd"}, ValueError, "method"),
    ],
)
def test_bad_input(kwargs, error, match):
    matrix = kwargs.pop("matrix")
    with pytest.raises(error, match=match):
        lowrank_denoise(matrix, **kwargs)
