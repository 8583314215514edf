"""Cases only a GPU can afford, for the compiled kernels on CUDA (marker ``cuda``; every test
skips without a CUDA device).

Beyond the device-parametrized tests: one tensor of more than 2^31 elements (64-bit offsets in
top-k and scatter) with K = 1, ties across the 2^31 boundary, K = 1% and K = n; 10,000 tiny
tensors in one call of top-k, scatter and the masked step; fp32 / bf16 / fp16; non-contiguous
inputs through the public ops; two runs bit-identical. References are independent of the
kernels: planted answers, the O(N) exact checks of ``scale_checks.py``, and the per-test
references of the device-parametrized modules.

Expected cost on one H200 (141 GB): about 30 s once the kernels are compiled (Triton compiles
each specialisation on first use, ~1 s each, shared with the device-parametrized tests), at most
about 50 GB of device memory (top-k of 2^31 fp32 values with K = n: 8.6 GB of input, 17.2 GB of
int64 indices and the O(N) check's temporaries), and a few seconds of CPU references per
10,000-tensor test.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from deftx.ops import masked_adamw_step_, scatter_add_, scatter_restore_, topk_mask
from deftx.ops.settings import AdamWSettings, MaskedStepTensors
from tests.kernels.devices import kernels_for, requires_cuda, to_device
from tests.kernels.scale_checks import assert_exact_topk, assert_same_bits, reference_scatter_, spread_indices
from tests.kernels.test_masked_step import (
    HYPERPARAMETERS,
    assert_within_ulps,
    make_state,
    record_launches,
    reference_step,
    run_and_compare,
)
from tests.kernels.test_topk import check as check_topk
from tests.kernels.test_topk import reference_topk

pytestmark = [pytest.mark.cuda, requires_cuda]

CUDA = torch.device("cuda")
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["fp32", "bf16", "fp16"]

BIG = 2**31 + 3 * 2**16 + 5
"""Elements of the one-tensor cases: past 2^31, so positions and output slots need 64 bits,
and not a whole number of 16384-element blocks."""
TOP = BIG - 7
"""Position of the planted largest magnitude (64)."""
TIED = (2**31 - 5, 2**31 + 11)
"""Positions of the planted pair of equal magnitudes (32), on both sides of 2^31."""
TINY = 10_000
"""Tensors in the many-tiny-tensors cases (0 to 64 elements each)."""


@pytest.fixture(scope="module")
def topk():
    return kernels_for("topk", CUDA)


@pytest.fixture(scope="module")
def scatter():
    return kernels_for("scatter", CUDA)


@pytest.fixture(scope="module")
def masked_step():
    return kernels_for("masked_step", CUDA)


def cuda_generator(seed: int) -> torch.Generator:
    return torch.Generator(device=CUDA).manual_seed(seed)


def planted(dtype: torch.dtype, seed: int) -> torch.Tensor:
    """(BIG,) standard normal values of ``dtype`` on CUDA, with 64 at TOP and ∓32 at TIED."""
    x = torch.randn(BIG, dtype=dtype, device=CUDA, generator=cuda_generator(seed))
    x[TOP] = 64.0
    x[TIED[0]], x[TIED[1]] = -32.0, 32.0
    return x


def tiny_tensors(gen: torch.Generator) -> list[torch.Tensor]:
    """TINY CPU tensors of 0 to 64 elements, fp32 / bf16 / fp16 in turn, some 2-D."""
    sizes = torch.randint(0, 65, (TINY,), generator=gen).tolist()
    tensors = []
    for i, (size, dtype) in enumerate(zip(sizes, itertools.cycle(DTYPES), strict=False)):
        x = torch.randn(size, generator=gen).to(dtype)
        tensors.append(x.view(2, size // 2) if i % 5 == 0 and size % 2 == 0 else x)
    return tensors


# ----------------------------------------------------------------------------- top-k


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_topk_over_one_tensor_past_2_31(topk, dtype):
    x = planted(dtype, seed=1)
    for k, want in ((1, [TOP]), (2, [TIED[0], TOP]), (3, [*TIED, TOP])):
        got, _ = topk.topk_indices([x], k)
        assert got.tolist() == want, f"k={k}: {got.tolist()} instead of {want}"
    k = BIG // 100
    first, _ = topk.topk_indices([x], k)
    assert_exact_topk(x, k, first, what=f"k={k}")
    second, _ = topk.topk_indices([x], k)
    assert_same_bits(second, first, what="a second run")
    del first, second
    everything, _ = topk.topk_indices([x], BIG)
    assert_exact_topk(x, BIG, everything, what="k=n")


def test_topk_over_10000_tiny_tensors(topk):
    tensors = tiny_tensors(torch.Generator().manual_seed(2))
    total = sum(x.numel() for x in tensors)
    for k in (1, total // 3, total):
        check_topk(topk, tensors, k, CUDA)


# ----------------------------------------------------------------------------- scatter


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_scatter_over_one_tensor_past_2_31(scatter, dtype):
    """Two overlapping diffs of ~4M entries each, reaching position BIG - 1; saved, restored."""
    gen = cuda_generator(3)
    dense = torch.randn(BIG, dtype=dtype, device=CUDA, generator=gen)
    first = spread_indices(BIG, 1 << 22, gen)
    second = torch.cat([spread_indices(BIG, 1 << 22, gen), first[::3]]).unique()
    assert int((first >= 2**31).sum()) > 0 and int(second[-1]) == BIG - 1
    values = [torch.randn(first.numel(), device=CUDA, generator=gen),
              torch.randn(second.numel(), device=CUDA, generator=gen).to(dtype)]
    scales = [0.37, -1.25]
    expected = dense.clone()
    reference_scatter_(expected, [first, second], values, scales)

    work = dense.clone()
    saved = scatter.scatter_add_([work], [[first], [second]], [[values[0]], [values[1]]], scales, True)
    assert_same_bits(work, expected, what="after apply")
    assert_same_bits(saved[0][0], dense[first], what="saved[0]")
    assert_same_bits(saved[1][0], dense[second], what="saved[1]")
    scatter.scatter_restore_([work], [[first], [second]], saved)
    assert_same_bits(work, dense, what="after restore")
    scatter.scatter_add_([work], [[first], [second]], [[values[0]], [values[1]]], scales, False)
    assert_same_bits(work, expected, what="a second run")


def test_scatter_over_10000_tiny_tensors(scatter):
    gen = torch.Generator().manual_seed(4)
    dense = tiny_tensors(gen)
    indices = [[spread_indices(w.numel(), max(w.numel() // 2, 1), gen) if w.numel() else
                torch.empty(0, dtype=torch.int64) for w in dense] for _ in range(2)]
    values = [[torch.randn(i.numel(), generator=gen).to(w.dtype if d else torch.float32)
               for i, w in zip(row, dense, strict=True)] for d, row in enumerate(indices)]
    scales = [0.5, -2.0]
    expected = [w.clone() for w in dense]
    for t, w in enumerate(expected):
        reference_scatter_(w.view(-1), [row[t] for row in indices], [row[t] for row in values], scales)

    work = to_device(dense, CUDA)
    saved = scatter.scatter_add_(work, to_device(indices, CUDA), to_device(values, CUDA), scales, True)
    assert_same_bits(torch.cat([w.cpu().view(-1).float() for w in work]),
                     torch.cat([w.view(-1).float() for w in expected]), what="after apply (flat over all tensors)")
    scatter.scatter_restore_(work, to_device(indices, CUDA), saved)
    assert_same_bits(torch.cat([w.cpu().view(-1).float() for w in work]),
                     torch.cat([w.view(-1).float() for w in dense]), what="after restore (flat over all tensors)")


# ----------------------------------------------------------------------------- masked step


def test_masked_step_over_10000_tiny_tensors(masked_step, monkeypatch):
    gen = torch.Generator().manual_seed(5)
    shapes = torch.randint(1, 9, (TINY, 2), generator=gen).tolist()
    ks = [int(torch.randint(0, rows * cols + 1, (1,), generator=gen)) for rows, cols in shapes]
    dtypes = list(itertools.islice(itertools.cycle(DTYPES), TINY))
    state = make_state(list(zip(map(tuple, shapes), ks, strict=True)), dtypes, gen, CUDA)
    launches = record_launches(masked_step, monkeypatch)
    run_and_compare(masked_step, state, HYPERPARAMETERS["l1_weight_decay"], steps=2, gen=gen)
    assert len(launches) == 2 * len(DTYPES)  # one launch per parameter dtype per step


@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_masked_step_runs_are_bit_identical(masked_step, dtype):
    """Two steps from the same state, on 4 tensors of 4M entries at 5% density."""
    gen = torch.Generator().manual_seed(6)
    numel = 1 << 22
    shapes_and_k = [((1024, numel // 1024), numel // 20)] * 4
    runs = [make_state(shapes_and_k, [dtype] * 4, gen, CUDA)]
    runs.append({name: [t.clone() for t in tensors] for name, tensors in runs[0].items()})
    grads = [torch.randn(p.shape, device=CUDA).to(dtype) for p in runs[0]["params"]]
    for state in runs:
        masked_step.masked_adamw_step_(MaskedStepTensors(
            state["params"], grads, state["indices"], state["masters"], state["exp_avgs"],
            state["exp_avg_sqs"], state["bases"]), AdamWSettings(1, **HYPERPARAMETERS["l1_weight_decay"]),
        )  # fmt: skip
    for name in ("params", "masters", "exp_avgs", "exp_avg_sqs"):
        for t, (a, b) in enumerate(zip(runs[0][name], runs[1][name], strict=True)):
            assert_same_bits(a, b, what=f"{name}[{t}]")


# ----------------------------------------------------------------------------- public ops


def strided(x: torch.Tensor) -> torch.Tensor:
    """A non-contiguous 1-D view with the values of ``x`` (every other entry of a doubled copy)."""
    return x.repeat_interleave(2)[::2]


def test_public_topk_takes_non_contiguous_inputs():
    gen = torch.Generator().manual_seed(7)
    bases = [torch.randn(500, 300, generator=gen), torch.randn(3000, generator=gen).bfloat16(),
             torch.randn(6, 8, 10, generator=gen).half()]
    views = [lambda x: x.t(), lambda x: x[::3], lambda x: x.permute(2, 0, 1)]
    on_cuda = [view(base.to(CUDA)) for view, base in zip(views, bases, strict=True)]
    on_cpu = [view(base).contiguous() for view, base in zip(views, bases, strict=True)]
    assert not any(x.is_contiguous() for x in on_cuda)
    total = sum(x.numel() for x in on_cpu)
    for k in (1, 4321, total):
        got = topk_mask(on_cuda, k, output="indices", backend="triton")
        for t, (g, w) in enumerate(zip(got, reference_topk(on_cpu, k), strict=True)):
            assert_same_bits(g.cpu(), w, what=f"k={k}, tensor {t}")


def test_public_scatter_takes_non_contiguous_diffs():
    gen = torch.Generator().manual_seed(8)
    dense = [torch.randn(400, 300, generator=gen).bfloat16(), torch.randn(50_000, generator=gen)]
    indices = [spread_indices(w.numel(), w.numel() // 4, gen) for w in dense]
    values = [torch.randn(i.numel(), generator=gen).to(w.dtype) for i, w in zip(indices, dense, strict=True)]
    expected = [w.clone() for w in dense]
    for w, i, v in zip(expected, indices, values, strict=True):
        reference_scatter_(w.view(-1), [i], [v], [0.75])

    strided_indices = [[strided(i.to(CUDA)) for i in indices]]
    strided_values = [[strided(v.to(CUDA)) for v in values]]
    assert not any(x.is_contiguous() for x in (*strided_indices[0], *strided_values[0]))
    work = to_device(dense, CUDA)
    saved = scatter_add_(work, strided_indices, strided_values, [0.75], save=True, backend="triton")
    for t, (w, e) in enumerate(zip(work, expected, strict=True)):
        assert_same_bits(w.cpu(), e, what=f"dense {t} after apply")
    scatter_restore_(work, strided_indices, saved, backend="triton")
    for t, (w, e) in enumerate(zip(work, dense, strict=True)):
        assert_same_bits(w.cpu(), e, what=f"dense {t} after restore")


def test_public_masked_step_takes_non_contiguous_grads():
    gen = torch.Generator().manual_seed(9)
    hp = HYPERPARAMETERS["weight_decay"]
    state = make_state([((300, 200), 5000), ((64, 96), 700)], [torch.float32, torch.bfloat16], gen, CUDA)
    expected = {name: [t.cpu().clone() for t in tensors] for name, tensors in state.items()}
    transposed = [torch.randn(p.shape[::-1], generator=gen).to(p.dtype) for p in state["params"]]
    grads = [g.to(CUDA).t() for g in transposed]
    assert not any(g.is_contiguous() for g in grads)
    masked_adamw_step_(
        state["params"], grads, state["indices"], state["masters"], state["exp_avgs"], state["exp_avg_sqs"],
        step=1, backend="triton", **hp,
    )  # fmt: skip
    for t, grad in enumerate(transposed):
        reference_step(
            expected["params"][t], grad.t(), expected["indices"][t], expected["masters"][t],
            expected["exp_avgs"][t], expected["exp_avg_sqs"][t], expected["bases"][t], hp, 1,
        )  # fmt: skip
        assert_within_ulps(state["masters"][t], expected["masters"][t], f"master {t}")
        assert_within_ulps(state["exp_avgs"][t], expected["exp_avgs"][t], f"exp_avg {t}")
        flat = state["params"][t].reshape(-1)
        assert_same_bits(flat[state["indices"][t]], state["masters"][t].to(flat.dtype), what=f"param {t}")
