"""Randomized SVD of a row-sharded Δ on 2 and 3 gloo ranks vs the single-process ``lowrank_factors``.

Stated tolerance: singular values within 1e-5 · σ₁ and the rank-r reconstruction U S Vh
within 1e-5 · ||Δ||_F (Frobenius) of the single-process result (fp32 sketches; measured
errors on these cases are at most 6e-7). Cases: a spectral gap at the kept rank, the 90%-energy policy, bf16
weights, Δ = 0 and a rank-1 Δ asked for rank 3 (singular Gram matrices), no base, and two
rows over three ranks (an empty shard), fp16 weights, and a matrix with no rows.
"""

from __future__ import annotations

import pytest
import torch
from torch.distributed.tensor import Shard

from deftx.distributed.rsvd import GRAM_PASSES, SETTINGS_BYTES
from deftx.ops import denoised_magnitudes, lowrank_factors
from deftx.train.denoise import matrix_scores
from tests.distributed.scenarios import UNIFORM_RANK, SvdCase, svd_cases, uniform_rank_pairs
from tests.distributed.world import assemble_rows

TOLERANCE = 1e-5


def _options(case: SvdCase) -> dict:
    """The single-process ops' settings of the case (those the sharded run used)."""
    return {"rank": case.rank, "energy": case.energy, "oversample": case.oversample, "n_iter": 2, "seed": 3,
            "backend": "torch"}


def _reference(case: SvdCase) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return lowrank_factors(case.w1, base=case.w0, **_options(case))


def _delta_norm(case: SvdCase) -> float:
    delta = case.w1.float() - (case.w0.float() if case.w0 is not None else 0.0)
    return float(torch.linalg.matrix_norm(delta))


@pytest.mark.parametrize("case", svd_cases(), ids=lambda c: c.name)
def test_factors_match_single_process(world, case):
    _, results = world
    got = [r["rsvd"][case.name] for r in results]
    u = assemble_rows([g["u"] for g in got])
    s, vh = got[0]["s"], got[0]["vh"]
    for g in got[1:]:
        assert torch.equal(g["s"], s) and torch.equal(g["vh"], vh), "replicated S / Vh differ between ranks"
    u_ref, s_ref, vh_ref = _reference(case)
    assert s.shape == s_ref.shape and u.shape == u_ref.shape and vh.shape == vh_ref.shape
    scale = max(float(s_ref[0]) if s_ref.numel() else 0.0, 1e-30)
    if s.numel():
        assert float((s - s_ref).abs().max()) <= TOLERANCE * scale, f"S {s.tolist()} vs {s_ref.tolist()}"
    error = float(torch.linalg.matrix_norm((u * s) @ vh - (u_ref * s_ref) @ vh_ref))
    assert error <= TOLERANCE * max(_delta_norm(case), 1e-30), f"reconstruction error {error:.3e}"


@pytest.mark.parametrize(
    "case", [c for c in svd_cases() if c.name in ("gap_rank4", "decay_energy90", "bf16_rank2")], ids=lambda c: c.name
)
def test_left_factor_is_orthonormal(world, case):
    _, results = world
    u = assemble_rows([r["rsvd"][case.name]["u"] for r in results])
    eye = torch.eye(u.shape[1])
    assert float((u.T @ u - eye).abs().max()) < 1e-5


@pytest.mark.parametrize("case", svd_cases(), ids=lambda c: c.name)
def test_denoised_scores_are_sharded_like_the_matrix(world, case):
    _, results = world
    got = [r["rsvd"][case.name] for r in results]
    assert all(g["scores_spec"] == (Shard(0),) for g in got)
    scores = assemble_rows([g["scores"] for g in got])
    expected = denoised_magnitudes(case.w1, case.w0, **_options(case))
    assert scores.dtype == torch.float32 and scores.shape == expected.shape
    assert float(torch.linalg.matrix_norm(scores - expected)) <= TOLERANCE * max(_delta_norm(case), 1e-30)


@pytest.mark.parametrize("case", [c for c in svd_cases() if c.rank is not None], ids=lambda c: c.name)
def test_communication_is_sketches_and_gram_matrices(world, case):
    _, results = world
    m, n = case.w1.shape
    q = min(case.rank + case.oversample, m, n)
    n_iter = 2
    gram, sketch, small = (n_iter + 1) * GRAM_PASSES * q * q * 8, n_iter * n * q * 4, q * n * 4
    counts = results[0]["rsvd"][case.name]["counts"]
    if q == 0:
        assert counts == {}, "an empty matrix needs no communication"
        return
    assert counts["all_reduce", "rsvd gram"].bytes == gram
    assert counts["all_reduce", "rsvd sketch Δᵀ Q"].bytes == sketch
    assert counts["all_reduce", "rsvd B = Qᵀ Δ"].bytes == small
    assert counts["all_reduce", "rsvd settings check"].bytes == SETTINGS_BYTES
    assert results[0]["rsvd"][case.name]["bytes"] == SETTINGS_BYTES + gram + sketch + small, (
        "no other traffic (never the m × n Δ)")


def test_uniform_rank_above_a_matrix_side_keeps_what_one_process_keeps(world):
    """DeFT-X's scores of several matrices (the train path): a rank above min(m, n) keeps min(m, n)
    components, as the single-process batched scores do, instead of refusing the matrix."""
    _, results = world
    got = [r["rsvd"]["uniform_rank"] for r in results]
    assert all(isinstance(g, list) for g in got), got[0]
    pairs = uniform_rank_pairs()
    expected = matrix_scores([w1 for w1, _ in pairs], [w0 for _, w0 in pairs], UNIFORM_RANK)
    for i, ((w1, w0), (score, rank, _)) in enumerate(zip(pairs, expected, strict=True)):
        assert [g[i][1] for g in got] == [rank] * len(got) and rank == min(UNIFORM_RANK.rank, *w1.shape)
        sharded = assemble_rows([g[i][0] for g in got])
        error = float(torch.linalg.matrix_norm(sharded - score))
        assert error <= TOLERANCE * float(torch.linalg.matrix_norm(w1 - w0)), f"pair {i}: scores differ by {error:.3e}"


def test_a_non_finite_delta_on_one_rank_is_refused_on_every_rank(world):
    """NaN / Inf in one rank's rows: a clear ValueError everywhere, as the single-process op gives, not an
    eigensolver failure."""
    _, results = world
    for rank, r in enumerate(results):
        for case, outcome in r["rsvd"]["non_finite"].items():
            assert isinstance(outcome, tuple), f"rank {rank} {case}: returned factors"
            kind, message = outcome
            assert kind == "ValueError" and "not finite" in message, f"rank {rank} {case}: {kind}: {message}"


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        ("rank_float", "TypeError", "rank must be an int"),
        ("rank_bool", "TypeError", "rank must be an int"),
        ("oversample_negative", "ValueError", "oversample must be an int >= 0"),
        ("n_iter_negative", "ValueError", "n_iter must be an int >= 0"),
        ("base_dtype", "TypeError", "base has dtype torch.bfloat16"),
        ("fine", "no error", ""),
    ],
)
def test_options_the_single_process_op_refuses_are_refused_on_every_rank(world, call, error, words):
    """A clear error naming the option, not a slicing or tensor-shape failure inside the sketch, nor a
    silent n_iter = 0 or a difference of two dtypes."""
    _, results = world
    for rank, r in enumerate(results):
        kind, message = r["rsvd"]["errors"][call]
        assert kind == error and words in message, f"rank {rank}: {kind}: {message}"


def _disagreeing_factors(rank: int, world: int) -> dict[str, tuple[str, str]]:
    """Sharded rSVDs of one (8, 6) Δ whose seed, rank, energy, oversample or n_iter differ between rank 0
    and the others: per setting, the error this rank raised (or "no error")."""
    from torch.distributed.tensor import distribute_tensor, init_device_mesh

    from deftx.distributed.rsvd import lowrank_factors_sharded

    mesh = init_device_mesh("cpu", (world,))
    delta = distribute_tensor(torch.arange(48.0).view(8, 6).sin(), mesh, [Shard(0)], src_data_rank=None)
    first = rank == 0
    calls = {
        "seed": {"rank": 2, "seed": 3 if first else 4},
        "rank": {"rank": 2 if first else 3},
        "energy": {"energy": 0.9 if first else 0.8},
        "oversample": {"rank": 2, "oversample": 8 if first else 4},
        "n_iter": {"rank": 2, "n_iter": 2 if first else 1},
        "agreeing": {"rank": 2, "seed": 3},
    }
    outcomes = {}
    for name, options in calls.items():
        try:
            lowrank_factors_sharded(delta, **options)
        except ValueError as err:
            outcomes[name] = ("ValueError", str(err))
        else:
            outcomes[name] = ("no error", "")
    return outcomes


def test_ranks_that_pass_another_seed_or_sketch_setting_all_raise(tmp_path):
    """Ω is drawn from the seed on each rank: a rank with another seed silently sketched its rows with another
    Ω (σ₁ 10.31 against 9.74 single-process, no error); another rank, energy, oversample or n_iter made
    collectives of other sizes. Every rank now raises, naming the settings."""
    from tests.distributed.world import run_world

    for rank, outcomes in enumerate(run_world(_disagreeing_factors, 2, tmp_path, timeout_s=60)):
        assert outcomes.pop("agreeing") == ("no error", ""), f"rank {rank}"
        for name, (kind, message) in outcomes.items():
            assert kind == "ValueError" and "the ranks disagree" in message and f"{name} " in message, (
                f"rank {rank}, {name}: {kind}: {message}")
