"""Launches and host syncs of the public ops (issue 17's budgets), counted on CPU tensors.

The Triton backend runs interpreted here. Its launchers plan on the host in Python and move
each plan with one explicit copy, so what :func:`deftx.perf.counters.count_device_work`
counts on CPU (every torch op on CPU tensors a launch, every read of one a sync) is what the
same calls make on a GPU. Results are checked against the torch backend as well: a cheap
path that selected the wrong entries would not pass.
"""

from __future__ import annotations

import pytest
import torch

from deftx.kernels import kernel_module
from deftx.ops import (
    denoised_magnitudes_batched,
    lowrank_factors_batched,
    masked_adamw_step_,
    prepare_masked_step,
    scatter_add_,
    scatter_restore_,
    topk_mask,
)
from deftx.ops.settings import AdamWSettings
from deftx.perf.counters import count_device_work
from tests.helpers import assert_bitwise_equal
from tests.ops.conftest import cpu_backends

TOPK_LAUNCHES = {torch.float32: 16, torch.float16: 14, torch.bfloat16: 12}
"""Per call with one dtype whose list holds every entry: one upload, the block map, the list
(the count, its cumulative sum, the partition), a histogram and a digit kernel per radix pass
(fp32 4, fp16 3, bf16 2), the block classification, its cumulative sum, the compaction."""

SAMPLED_LAUNCHES = 2
"""A call whose list is bracketed from samples adds the sample kernel (one per dtype) and the
bracket."""

MASK_LAUNCHES = 2
"""Masks from positions in the concatenation: zeros, one fill."""


@pytest.fixture
def small_topk_blocks(monkeypatch):
    """Blocks of 128 elements and tiles of 64: the interpreter runs several blocks per tensor
    quickly; no count depends on them."""
    topk = kernel_module("topk", interpret=True)
    monkeypatch.setattr(topk, "BLOCK_ELEMS", 128)
    monkeypatch.setattr(topk, "HISTOGRAM_TILE", 64)
    monkeypatch.setattr(topk, "COMPACT_TILE", 64)


def ragged(count: int, dtypes, seed: int, longest: int = 300) -> list[torch.Tensor]:
    """``count`` tensors of 1 to ``longest`` elements (ragged sizes), dtypes taken in turn."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(1 + (37 * i) % longest, generator=gen).to(dtypes[i % len(dtypes)]) for i in range(count)]


def counted(fn, device="cpu"):
    with count_device_work(device) as work:
        result = fn()
    return result, work


def test_topk_mask_over_200_tensors_fits_20_launches_and_one_sync(monkeypatch):
    """The path of a real model's selection: the list bracketed from samples (forced here by a
    capacity below N; these tensors are small)."""
    topk = kernel_module("topk", interpret=True)
    monkeypatch.setattr(topk, "HISTOGRAM_TILE", 64)  # one block per tensor
    monkeypatch.setattr(topk, "COMPACT_TILE", 64)
    monkeypatch.setattr(topk, "_list_capacity", lambda total, k, blocks: min(total - 1, 2 * k))
    tensors = ragged(200, [torch.float32], seed=0, longest=64)
    k = sum(t.numel() for t in tensors) // 20
    masks, work = counted(lambda: topk_mask(tensors, k, backend="triton"))
    assert work.launches == TOPK_LAUNCHES[torch.float32] + SAMPLED_LAUNCHES + MASK_LAUNCHES <= 20, work.summary()
    assert work.triton_launches["_sample_kernel"] == work.triton_launches["_bracket_kernel"] == 1
    assert work.syncs == {"tolist": 1}, work.summary()
    for t, (got, want) in enumerate(zip(masks, topk_mask(tensors, k, backend="torch"), strict=True)):
        assert_bitwise_equal(got, want, what=f"mask {t}")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("count", [3, 30])
def test_topk_indices_launches_do_not_grow_with_the_tensor_count(small_topk_blocks, dtype, count):
    tensors = ragged(count, [dtype], seed=count)
    k = sum(t.numel() for t in tensors) // 3
    indices, work = counted(lambda: topk_mask(tensors, k, output="indices", backend="triton"))
    assert work.launches == TOPK_LAUNCHES[dtype], work.summary()
    assert work.syncs == {"tolist": 1}, work.summary()
    for t, (got, want) in enumerate(zip(indices, topk_mask(tensors, k, output="indices", backend="torch"),
                                        strict=True)):
        assert_bitwise_equal(got, want, what=f"indices {t}")


def test_topk_mixed_dtypes_launch_per_dtype_not_per_tensor(small_topk_blocks):
    tensors = ragged(12, [torch.float32, torch.bfloat16, torch.float16], seed=4)
    _, work = counted(lambda: topk_mask(tensors, 500, output="indices", backend="triton"))
    # histograms 4 + 2 + 3 (each over the list, by the first launch of its pass, or the data),
    # a count, a partition and a compaction per dtype; one digit kernel per pass, one
    # classification
    assert work.triton_launches == {"_band_histogram_kernel": 9, "_select_digit_kernel": 4,
                                    "_classify_blocks_kernel": 1, "_partition_kernel": 6,
                                    "_compact_indices_kernel": 3}
    assert work.torch_op_count == 4 and work.syncs == {"tolist": 1}, work.summary()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_topk_with_bases_launches_as_many_and_matches(small_topk_blocks, dtype):
    """(θ1, θ0) pairs: the same launches as fp32 (a difference is an fp32 value), one sync."""
    theta1, theta0 = ragged(30, [dtype], seed=5), ragged(30, [dtype], seed=6)
    k = sum(t.numel() for t in theta1) // 3
    indices, work = counted(lambda: topk_mask(theta1, k, base=theta0, output="indices", backend="triton"))
    assert work.launches == TOPK_LAUNCHES[torch.float32], work.summary()
    assert work.syncs == {"tolist": 1}, work.summary()
    want = topk_mask([a.float() - b.float() for a, b in zip(theta1, theta0, strict=True)], k, output="indices",
                     backend="torch")
    for t, (got, expected) in enumerate(zip(indices, want, strict=True)):
        assert_bitwise_equal(got, expected, what=f"indices {t}")


def step_problem(count: int, seed: int = 0):
    """``count`` parameters with a quarter of their entries selected, and fp32 state."""
    params = ragged(count, [torch.float32, torch.bfloat16], seed)
    gen = torch.Generator().manual_seed(seed + 1)
    grads = [torch.randn(p.shape, generator=gen).to(p.dtype) for p in params]
    indices = [torch.randperm(p.numel(), generator=gen)[: (p.numel() + 3) // 4].sort().values for p in params]
    masters = [p[i].float() for p, i in zip(params, indices, strict=True)]
    moments = [[torch.zeros_like(m) for m in masters] for _ in range(2)]
    return params, grads, indices, masters, *moments


@pytest.mark.parametrize("backend", cpu_backends("masked_step"))
def test_masked_step_checks_indices_once_then_reads_nothing(backend):
    params, grads, indices, masters, exp_avgs, exp_avg_sqs = step_problem(200)

    def step(number: int):
        masked_adamw_step_(params, grads, indices, masters, exp_avgs, exp_avg_sqs, step=number, lr=1e-3,
                           backend=backend)

    _, first = counted(lambda: step(1))
    assert first.syncs == {"tolist": 1}  # every index tensor checked, in one read
    for number in (2, 3):
        _, work = counted(lambda number=number: step(number))
        assert work.sync_count == 0, work.summary()
    if backend == "triton":  # one launch per parameter dtype, the tables cached
        assert work.launches == 2 and work.triton_launches == {"_masked_adamw_kernel": 2}, work.summary()


def test_prepared_step_launches_once_per_dtype_and_uploads_only_when_the_gradients_move(monkeypatch):
    # an empty table cache: tensors of an earlier test may have had these addresses
    kernels = kernel_module("masked_step", interpret=True)
    monkeypatch.setattr(kernels, "_ADDRESS_TABLES", type(kernels._ADDRESS_TABLES)(16))
    params, grads, indices, masters, exp_avgs, exp_avg_sqs = step_problem(200)
    prepared = prepare_masked_step(params, indices, masters, exp_avgs, exp_avg_sqs, backend="triton")
    _, first = counted(lambda: prepared.step(grads, AdamWSettings(1, 1e-3)))
    _, same = counted(lambda: prepared.step(grads, AdamWSettings(2, 1e-3)))
    moved = [g.clone() for g in grads]
    _, fresh = counted(lambda: prepared.step(moved, AdamWSettings(3, 1e-3)))
    for work in (first, same, fresh):
        assert work.sync_count == 0 and work.triton_launches == {"_masked_adamw_kernel": 2}, work.summary()
    # the address tables: uploaded on the first step and when the gradients moved, not between
    assert first.launches == fresh.launches == same.launches + 2 and same.launches == 2, (first.summary(),
                                                                                        same.summary())


def test_masked_step_rechecks_indices_written_in_place():
    params, grads, indices, masters, exp_avgs, exp_avg_sqs = step_problem(4, seed=5)

    def step():
        masked_adamw_step_(params, grads, indices, masters, exp_avgs, exp_avg_sqs, step=1, lr=0.0, backend="torch")

    step()
    assert counted(step)[1].sync_count == 0
    indices[2][-1] = indices[2][-1] - 0  # an in-place write, even of the same value, bumps the version
    assert counted(step)[1].syncs == {"tolist": 1}
    indices[2][-1] = params[2].numel()
    with pytest.raises(IndexError, match=r"param 2: index range .* outside"):
        step()


def scatter_problem(count: int, num_diffs: int, seed: int = 0):
    dense = ragged(count, [torch.float32], seed)
    gen = torch.Generator().manual_seed(seed + 1)
    indices = [[torch.randperm(w.numel(), generator=gen)[: w.numel() // 3].sort().values for w in dense]
               for _ in range(num_diffs)]
    values = [[torch.randn(i.numel(), generator=gen) for i in row] for row in indices]
    return dense, indices, values


def test_scatter_checks_indices_once_and_launches_per_dtype():
    dense, indices, values = scatter_problem(200, 2)
    reference = [w.clone() for w in dense]
    scatter_add_(reference, [[i.clone() for i in row] for row in indices], values, [1.0, -0.5], backend="torch")
    original = [w.clone() for w in dense]
    saved, first = counted(lambda: scatter_add_(dense, indices, values, [1.0, -0.5], save=True, backend="triton"))
    assert first.syncs == {"tolist": 1}  # the 400 index tensors checked in one read
    for t, (got, want) in enumerate(zip(dense, reference, strict=True)):
        assert_bitwise_equal(got, want, what=f"dense {t}")
    _, restore = counted(lambda: scatter_restore_(dense, indices, saved, backend="triton"))
    assert restore.sync_count == 0 and restore.launches == 3, restore.summary()
    for t, (got, want) in enumerate(zip(dense, original, strict=True)):
        assert_bitwise_equal(got, want, what=f"restored {t}")
    _, again = counted(lambda: scatter_add_(dense, indices, values, [1.0, -0.5], save=True, backend="triton"))
    assert again.sync_count == 0, again.summary()
    assert again.launches == 3, again.summary()  # one upload, the unit search, the scatter


def test_scatter_saved_originals_are_written_once():
    """The saved tensors are allocated once and filled by the backend: no copy of them."""
    dense, indices, values = scatter_problem(5, 1, seed=2)
    original = [w.clone() for w in dense]
    scatter_add_(dense, indices, values, save=False, backend="torch")  # checks the indices
    scatter_restore_(dense, indices, [[o[i] for o, i in zip(original, indices[0], strict=True)]], backend="torch")
    saved, work = counted(lambda: scatter_add_(dense, indices, values, save=True, backend="torch"))
    assert work.torch_ops["aten::index_select"] == 5 and "aten::copy_" not in work.torch_ops, work.summary()
    for t, (got, o, i) in enumerate(zip(saved[0], original, indices[0], strict=True)):
        assert_bitwise_equal(got, o[i], what=f"saved {t}")


def test_public_layers_read_nothing_on_meta_tensors():
    """Meta tensors have no data: the ops run through their fake kernels, and any host read
    in the public layer would raise."""
    meta = torch.device("meta")
    params = [torch.empty(5, 3, device=meta), torch.empty(4, device=meta, dtype=torch.bfloat16)]
    indices = [torch.empty(6, dtype=torch.int64, device=meta), torch.empty(2, dtype=torch.int64, device=meta)]
    state = [[torch.empty(i.shape, device=meta) for i in indices] for _ in range(3)]
    _, step = counted(lambda: masked_adamw_step_(params, [torch.empty_like(p) for p in params], indices, *state,
                                                 step=1, lr=1e-3), device=meta)
    values = [[torch.empty(i.shape, device=meta) for i in indices]]
    saved, scatter = counted(lambda: scatter_add_(params, [indices], values, save=True), device=meta)
    assert step.sync_count == scatter.sync_count == 0
    assert [s.shape for s in saved[0]] == [(6,), (2,)] and saved[0][1].dtype == torch.bfloat16


def lowrank_pairs(per_shape: int, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(θ1, θ0) for ``per_shape`` matrices of each of three shapes (three shape groups), each
    difference of rank 3 plus noise."""
    gen = torch.Generator().manual_seed(seed)
    theta1, theta0 = [], []
    for m, n in [(24, 20), (20, 36), (40, 20)] * per_shape:
        base = torch.randn(m, n, generator=gen)
        low = torch.randn(m, 3, generator=gen) @ torch.randn(3, n, generator=gen)
        theta1.append(base + low + 0.01 * torch.randn(m, n, generator=gen))
        theta0.append(base)
    return theta1, theta0


@pytest.mark.parametrize("policy", [{"rank": 4}, {"energy": 0.9}])
def test_lowrank_factors_launch_per_shape_group_and_read_per_decision(policy):
    """Launches do not grow with the matrices of a shape group; host reads: one for the
    energies, then one for the held energies of a fixed rank, or one per group for the rank
    an energy decides (the sketch of 64 covers these matrices, so no group widens). Counted on
    CPU, where ``.cpu()`` is no copy: on CUDA each shape group also waits once for its small
    ``eigh``'s Gram matrices to reach the host (``kernels/rsvd.py``, ``_small_svd``)."""
    settings = {**policy, "oversample": 2, "n_iter": 1}
    one_each = lowrank_pairs(1, seed=0)
    _, work_few = counted(lambda: lowrank_factors_batched(*one_each, **settings, backend="triton"))
    theta1, theta0 = lowrank_pairs(4, seed=1)
    many, work_many = counted(lambda: lowrank_factors_batched(theta1, theta0, **settings, backend="triton"))
    assert work_many.launches == work_few.launches, (work_few.summary(), work_many.summary())
    assert work_many.syncs == {"tolist": 2 if "rank" in policy else 1 + 3}, work_many.summary()
    want = lowrank_factors_batched(theta1, theta0, **settings, backend="torch")
    for i, (got, expected) in enumerate(zip(many, want, strict=True)):
        assert got.s.shape == expected.s.shape, f"matrix {i}: rank {got.s.numel()} vs {expected.s.numel()}"
        torch.testing.assert_close(got.s, expected.s, rtol=1e-4, atol=1e-5, msg=lambda m, i=i: f"matrix {i}: {m}")
        assert got.energy == pytest.approx(expected.energy, rel=1e-5), f"matrix {i}"
        assert got.energy == pytest.approx(float(expected.s.double().square().sum())
                                           / float((theta1[i] - theta0[i]).double().square().sum()), rel=1e-4)


def test_fixed_rank_magnitudes_skip_the_energy_pass_and_read_once():
    """The scores of a fixed rank need no ||Δ||²: no energy launch, one read (the kept energies,
    which also catch non-finite factors), and the scores equal the torch backend's."""
    theta1, theta0 = lowrank_pairs(2, seed=2)
    settings = {"rank": 4, "oversample": 2, "n_iter": 1}
    scores, work = counted(lambda: denoised_magnitudes_batched(theta1, theta0, **settings, backend="triton"))
    assert "_difference_energy_kernel" not in work.triton_launches and work.syncs == {"tolist": 1}, work.summary()
    want = denoised_magnitudes_batched(theta1, theta0, **settings, backend="torch")
    for i, (got, expected) in enumerate(zip(scores, want, strict=True)):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4, msg=lambda m, i=i: f"matrix {i}: {m}")
