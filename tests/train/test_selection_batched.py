"""DeFT-X selection scores go through the batched ops: one rSVD call per shape group, records
and scores equal to an independent float64 per-matrix SVD."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch

import deftx.ops.library as library
from deftx.train.config import DenoiseConfig
from deftx.train.denoise import matrix_scores, selection_scores
from deftx.train.select import Difference
from tests.helpers import assert_close, tolerance


def low_rank_pair(m: int, n: int, rank: int, seed: int, dtype=torch.float32):
    """(θ1, θ0) whose difference is rank ``rank`` plus a 1e-3 noise floor."""
    gen = torch.Generator().manual_seed(seed)
    w0 = torch.randn(m, n, generator=gen)
    signal = torch.randn(m, rank, generator=gen) @ torch.randn(rank, n, generator=gen) / rank**0.5
    w1 = w0 + 0.1 * signal + 1e-3 * torch.randn(m, n, generator=gen)
    return w1.to(dtype), w0.to(dtype)


def numpy_scores(w1: torch.Tensor, w0: torch.Tensor, energy: float) -> tuple[np.ndarray, int, float]:
    """|truncated SVD| of θ1 − θ0 at the energy-policy rank, by a full float64 numpy SVD."""
    delta = w1.double().numpy() - w0.double().numpy()
    u, s, vh = np.linalg.svd(delta, full_matrices=False)
    cumulative = np.cumsum(s**2) / np.sum(s**2)
    rank = int(np.searchsorted(cumulative, energy) + 1)
    return np.abs((u[:, :rank] * s[:rank]) @ vh[:rank]), rank, float(cumulative[rank - 1])


def model():
    """A small model's eligible parameters: two shapes repeated, a bf16 matrix, biases."""
    theta1, theta0, groups = {}, {}, {}
    specs = {
        "layer0.query.weight": ((24, 24), "attention", torch.float32),
        "layer0.query.bias": ((24,), "attention", torch.float32),
        "layer0.up.weight": ((40, 24), "ffn", torch.float32),
        "layer1.query.weight": ((24, 24), "attention", torch.float32),
        "layer1.up.weight": ((40, 24), "ffn", torch.float32),
        "layer1.down.weight": ((24, 40), "ffn", torch.bfloat16),
        "embeddings.position.weight": ((16, 24), "embeddings", torch.float32),
    }
    for i, (name, (shape, group, dtype)) in enumerate(specs.items()):
        if len(shape) == 2:
            theta1[name], theta0[name] = low_rank_pair(*shape, rank=3, seed=i, dtype=dtype)
        else:
            theta0[name] = torch.randn(shape, generator=torch.Generator().manual_seed(i))
            theta1[name] = theta0[name] + 0.01
        groups[name] = group
    return theta1, theta0, groups


@pytest.fixture
def rsvd_calls(monkeypatch):
    """Counts the ``deftx::randomized_svd`` calls (one per shape group and sketch width)."""
    calls = Counter()
    original = library.randomized_svd

    def counting(w1s, w0s, omega, *args):
        calls[tuple(w1s[0].shape), w1s[0].dtype] += len(w1s)
        return original(w1s, w0s, omega, *args)

    monkeypatch.setattr(library, "randomized_svd", counting)
    return calls


def test_selection_scores_batch_the_matrices_by_shape(rsvd_calls):
    theta1, theta0, groups = model()
    config = DenoiseConfig(energy=0.9, groups=("attention", "ffn"))

    scores, records = selection_scores(theta1, theta0, groups, config, progress=False)

    # one call per shape group, holding every matrix of the group
    assert rsvd_calls == Counter({((24, 24), torch.float32): 2, ((40, 24), torch.float32): 2,
                                  ((24, 40), torch.bfloat16): 1})
    assert list(scores) == list(theta1)
    assert [r.name for r in records] == [n for n in theta1 if theta1[n].dim() == 2 and groups[n] != "embeddings"]
    for record in records:
        w1, w0 = theta1[record.name], theta0[record.name]
        want, rank, held = numpy_scores(w1, w0, 0.9)
        assert record.rank == rank and record.shape == tuple(w1.shape)
        assert record.energy == pytest.approx(held, rel=1e-4)
        atol = 8 * tolerance(torch.float32, max(w1.shape)) * float(np.abs(want).max())
        assert_close(scores[record.name], torch.from_numpy(want), rtol=1e-4, atol=atol, what=record.name)
    for name in ("layer0.query.bias", "embeddings.position.weight"):
        assert isinstance(scores[name], Difference) and scores[name].theta1 is theta1[name]


def test_matrix_scores_equal_one_at_a_time():
    theta1, theta0, _ = model()
    names = [n for n in theta1 if theta1[n].dim() == 2]
    config = DenoiseConfig(rank=4)
    together = matrix_scores([theta1[n] for n in names], [theta0[n] for n in names], config)
    for name, (score, rank, energy) in zip(names, together, strict=True):
        (alone, alone_rank, alone_energy), = matrix_scores([theta1[name]], [theta0[name]], config)
        assert rank == alone_rank == 4 and energy == pytest.approx(alone_energy, rel=1e-6)
        assert_close(score, alone, rtol=0.0, atol=8 * tolerance(torch.float32, 40) * float(alone.max()), what=name)


def test_uniform_rank_larger_than_a_matrix_keeps_all_of_it():
    """A batch clamps the uniform rank to min(m, n): a 2 x 24 matrix keeps both components."""
    w1, w0 = low_rank_pair(2, 24, rank=2, seed=3)
    ((score, rank, energy),) = matrix_scores([w1], [w0], DenoiseConfig(rank=8))
    assert rank == 2 and energy == pytest.approx(1.0, rel=1e-5)
    delta = (w1.double() - w0.double()).abs()
    assert_close(score, delta, rtol=0.0, atol=8 * tolerance(torch.float32, 24) * float(delta.max()))
