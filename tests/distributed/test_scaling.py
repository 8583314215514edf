"""The scaling table's model: shape sets, per-rank shares, and byte formulas checked against the ledger."""

from __future__ import annotations

import math

import pytest

from deftx.distributed import scaling
from deftx.distributed.scaling import LLAMA_7B, LLAMA_70B, MeasuredCosts, Network, eligible_entries, local_entries
from deftx.perf.shapes import ShapeSet, TensorShape
from tests.distributed.scenarios import svd_cases
from tests.distributed.world import run_world


def test_llama_shape_sets_match_the_published_parameter_counts():
    # Llama-2 totals 6,738,415,616 and 68,976,648,192 parameters; minus the RMSNorm vectors
    assert LLAMA_7B.numel == 6_738_415_616 and LLAMA_70B.numel == 68_976_648_192
    assert eligible_entries(LLAMA_7B) == 6_738_415_616 - (2 * 32 + 1) * 4096
    assert eligible_entries(LLAMA_70B) == 68_976_648_192 - (2 * 80 + 1) * 8192
    assert len(LLAMA_7B.matrices()) == 2 + 7 * 32 and len(LLAMA_70B.matrices()) == 2 + 7 * 80


@pytest.mark.parametrize("shapes", [LLAMA_7B, LLAMA_70B], ids=lambda s: s.name)
def test_rank_zero_holds_the_largest_share(shapes):
    entries = eligible_entries(shapes)
    assert local_entries(shapes, 1) == entries
    for ranks in scaling.RANKS:
        local = local_entries(shapes, ranks)
        assert entries / ranks <= local <= entries / ranks + sum(m.shape[1] for m in shapes.matrices())
    uneven = ShapeSet("toy", (TensorShape("w0", (17, 3)), TensorShape("w1", (17, 3)), TensorShape("norm", (3,))))
    assert local_entries(uneven, 2) == 2 * 9 * 3 and local_entries(uneven, 3) == 2 * 6 * 3


def test_network_model():
    net = Network(alpha=1e-5, beta=1e9)
    assert net.all_reduce(0, 8) == pytest.approx(6e-5)
    assert net.all_reduce(1e9, 2) == pytest.approx(2 * 1e-5 + 1.0)
    assert net.to_one_rank(2e9, 4) == pytest.approx(2e-5 + 2.0)


def test_byte_formulas_equal_what_the_ledger_counted(world):
    """topk_bytes / rsvd_bytes are the measured payloads of the sharded ops, not estimates."""
    world_size, results = world
    calls, nbytes = results[0]["topk"]["traffic"]["all_zero", 5]
    assert nbytes == scaling.topk_bytes(2, world_size) and calls == scaling.RADIX_PASSES + 2
    for case in svd_cases():
        if case.rank is None:
            continue
        q = min(case.rank + case.oversample, *case.w1.shape)
        if q == 0:
            continue
        measured = results[0]["rsvd"][case.name]["bytes"]
        assert measured == scaling.rsvd_bytes(case.w1.shape[1], q, 2), case.name


FAKE = MeasuredCosts(
    score_per_entry=1e-9,
    sharded_select_per_entry=5e-9,
    single_select_per_entry=2e-9,
    scatter_per_entry=1e-7,
    matmul_flops=1e12,
    device="fake",
)


def test_rows_scale_with_ranks_and_beat_the_gather_baseline():
    net = Network()
    rows = [scaling.selection_row(LLAMA_70B, w, FAKE, net) for w in scaling.RANKS]
    assert rows[0].sharded_seconds > rows[1].sharded_seconds > rows[2].sharded_seconds
    assert all(r.sharded_bytes < 20_000 for r in rows), "a few KB per rank, whatever the model size"
    assert all(r.baseline_memory_rank0 > 80e9 for r in rows), "70B scores do not fit one 80 GB GPU"
    compose = [scaling.compose_row(LLAMA_7B, w, FAKE, net) for w in scaling.RANKS]
    assert all(r.collectives == 0 and r.sharded_seconds < r.baseline_seconds for r in compose)
    assert compose[0].sharded_bytes == pytest.approx(8 * 8 * compose[2].sharded_bytes, rel=0.02)
    denoise = scaling.denoise_row(LLAMA_7B, 64, FAKE, net)
    per_matrix = sum(scaling.rsvd_bytes(m.shape[1]) for m in LLAMA_7B.matrices())
    assert denoise.sharded_bytes == scaling.topk_bytes(len(LLAMA_7B.matrices()), 64) + per_matrix


def test_report_has_every_table_row():
    report = scaling.scaling_report(FAKE)
    for shapes in (LLAMA_7B, LLAMA_70B):
        for ranks in scaling.RANKS:
            assert report.count(f"| {shapes.name} | {ranks} |") == 3
    assert "α = 10 µs" in report and "fake" in report


def _measure(rank: int, world: int) -> MeasuredCosts:
    return scaling.measure_costs(entries=1 << 16, repeats=1)


def test_measure_costs_runs_and_is_positive(tmp_path):
    (costs,) = run_world(_measure, 1, tmp_path)
    for value in (
        costs.score_per_entry,
        costs.sharded_select_per_entry,
        costs.single_select_per_entry,
        costs.scatter_per_entry,
        costs.matmul_flops,
    ):
        assert math.isfinite(value) and value > 0


def test_the_denoising_flops_reconstruct_only_the_kept_components():
    """|U S Vh| of the 64 kept components of an (m, n) row block costs 2·m·n·64 multiply-adds, not 2·m·n·72 (the
    sketch width): the sketch's 8 oversampling columns are dropped before the reconstruction."""
    rows, cols, q, n_iter = 1000, 300, 72, 2
    sketched = scaling._rsvd_flops(rows, cols)[0] - 4 * (n_iter + 1) * rows * q * q
    without_reconstruction = scaling.rsvd_cost.product_flops(rows, cols, q, n_iter, has_base=False)
    assert sketched - without_reconstruction == 2 * rows * cols * 64
