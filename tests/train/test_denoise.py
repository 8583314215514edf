"""DeFT-X scores against an independent float64 numpy SVD."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from deftx.train.config import DenoiseConfig
from deftx.train.denoise import denoised_scores, keep_largest, selection_scores
from deftx.train.select import Difference
from tests.helpers import assert_bitwise_equal, assert_close, tolerance


def pair(m: int, n: int, seed: int = 0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    w0 = torch.randn(m, n, generator=generator)
    w1 = w0 + 0.1 * torch.randn(m, n, generator=generator)
    return w1.to(dtype), w0.to(dtype)


def numpy_truncation(w1: torch.Tensor, w0: torch.Tensor, rank: int) -> np.ndarray:
    delta = w1.double().numpy() - w0.double().numpy()
    u, s, vh = np.linalg.svd(delta, full_matrices=False)
    return (u[:, :rank] * s[:rank]) @ vh[:rank]


def numpy_energy_rank(w1: torch.Tensor, w0: torch.Tensor, energy: float) -> int:
    s = np.linalg.svd(w1.double().numpy() - w0.double().numpy(), compute_uv=False)
    cumulative = np.cumsum(s**2) / np.sum(s**2)
    return int(np.searchsorted(cumulative, energy - 1e-12) + 1)


def is_difference(score, theta1: torch.Tensor, theta0: torch.Tensor) -> bool:
    """``score`` hands on the very pair (nothing computed, nothing copied)."""
    return isinstance(score, Difference) and score.theta1 is theta1 and score.theta0 is theta0


def test_difference_shape_mismatch():
    with pytest.raises(ValueError, match="shape"):
        Difference(torch.zeros(3), torch.zeros(4))


@pytest.mark.parametrize("shape", [(13, 7), (6, 17), (1, 9), (16, 16)])
@pytest.mark.parametrize("rank", [1, 3])
def test_exact_rank_matches_numpy(shape, rank):
    w1, w0 = pair(*shape)
    rank = min(rank, min(shape))
    scores, kept, energy = denoised_scores(w1, w0, DenoiseConfig(rank=rank, method="exact"))
    expected = np.abs(numpy_truncation(w1, w0, rank))
    assert kept == rank
    assert_close(scores, torch.from_numpy(expected), rtol=tolerance(torch.float32, max(shape)) * 8,
                 atol=1e-5, what="denoised |Δ̂|")
    s = np.linalg.svd(w1.double().numpy() - w0.double().numpy(), compute_uv=False)
    assert energy == pytest.approx(float(np.sum(s[:rank] ** 2) / np.sum(s**2)), rel=1e-4)


@pytest.mark.parametrize("energy", [0.3, 0.9, 1.0])
def test_energy_policy_picks_smallest_rank(energy):
    w1, w0 = pair(20, 12, seed=5)
    _, kept, held = denoised_scores(w1, w0, DenoiseConfig(energy=energy, method="exact"))
    assert kept == numpy_energy_rank(w1, w0, energy)
    assert held >= energy - 1e-5


def test_randomized_close_to_exact_on_low_rank_signal():
    generator = torch.Generator().manual_seed(11)
    w0 = torch.randn(40, 24, generator=generator)
    signal = torch.randn(40, 2, generator=generator) @ torch.randn(2, 24, generator=generator)
    w1 = w0 + signal + 1e-3 * torch.randn(40, 24, generator=generator)
    exact, r_exact, _ = denoised_scores(w1, w0, DenoiseConfig(energy=0.99, method="exact"))
    fast, r_fast, _ = denoised_scores(w1, w0, DenoiseConfig(energy=0.99, method="randomized"))
    assert r_exact == r_fast == 2
    assert_close(fast, exact, rtol=1e-3, atol=1e-4, what="randomized vs exact")


def test_add_back_residual_adds_pruned_residual():
    w1, w0 = pair(12, 9, seed=2)
    config = DenoiseConfig(rank=2, method="exact", add_back_residual=True, residual_keep=0.25)
    scores, _, _ = denoised_scores(w1, w0, config)
    recon = numpy_truncation(w1, w0, 2)
    residual = (w1.double().numpy() - w0.double().numpy()) - recon
    count = int(np.ceil(0.25 * residual.size))
    threshold = np.sort(np.abs(residual).ravel())[-count]
    pruned = np.where(np.abs(residual) >= threshold, residual, 0.0)
    assert_close(scores, torch.from_numpy(np.abs(recon + pruned)), rtol=1e-4, atol=1e-5)
    plain, _, _ = denoised_scores(w1, w0, DenoiseConfig(rank=2, method="exact"))
    assert not torch.equal(plain, scores)


@pytest.mark.parametrize("fraction, kept", [(0.0, 0), (0.1, 2), (0.5, 6), (1.0, 12)])
def test_keep_largest(fraction, kept):
    matrix = torch.tensor([[3.0, -7.0, 1.0, 0.5], [-2.0, 9.0, -0.25, 4.0], [6.0, -5.0, 8.0, -10.0]])
    out = keep_largest(matrix, fraction)
    assert int((out != 0).sum()) == kept
    order = matrix.abs().flatten().argsort(descending=True)[:kept]
    expected = torch.zeros(12)
    expected[order] = matrix.flatten()[order]
    assert_bitwise_equal(out.flatten(), expected)


def test_selection_scores_denoises_only_listed_groups():
    w_att, b_att = pair(8, 8, seed=1)
    w_ffn, b_ffn = pair(8, 5, seed=2)
    bias1, bias0 = torch.randn(8), torch.randn(8)
    theta1 = {"att.weight": w_att, "ffn.weight": w_ffn, "att.bias": bias1}
    theta0 = {"att.weight": b_att, "ffn.weight": b_ffn, "att.bias": bias0}
    groups = {"att.weight": "attention", "ffn.weight": "ffn", "att.bias": "attention"}
    config = DenoiseConfig(rank=1, method="exact", groups=("ffn",))
    scores, records = selection_scores(theta1, theta0, groups, config, progress=False)
    assert [r.name for r in records] == ["ffn.weight"] and records[0].rank == 1
    assert is_difference(scores["att.weight"], w_att, b_att) and is_difference(scores["att.bias"], bias1, bias0)
    assert_close(scores["ffn.weight"], torch.from_numpy(np.abs(numpy_truncation(w_ffn, b_ffn, 1))),
                 rtol=1e-4, atol=1e-6)
    raw, none = selection_scores(theta1, theta0, groups, None, progress=False)
    assert none == [] and all(is_difference(raw[n], theta1[n], theta0[n]) for n in theta1)


def test_selection_scores_rejects_mismatched_names():
    with pytest.raises(ValueError, match="same parameter names"):
        selection_scores({"a": torch.zeros(2)}, {"b": torch.zeros(2)}, {"a": "ffn"}, None)
