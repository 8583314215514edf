"""Triton global top-k (kernels/topk.py), interpreted on CPU and compiled on CUDA, vs an
independent reference: a stable sort of the magnitudes (of the materialised differences, with
bases). The cases run with the candidate list in use (holding every entry, or bracketed from
samples) and with it not in use, overflowing or short (every later kernel then reads the
data)."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch

from deftx.kernels import _topk_plan as topk_plan
from deftx.kernels import kernel_module
from tests.helpers import assert_bitwise_equal
from tests.kernels.conftest import LaunchRecorder
from tests.kernels.devices import kernels_for

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
RAGGED_SHAPES = ((37,), (0,), (5, 7, 3), (130,), (1,), (3, 0, 2))


@pytest.fixture
def topk(device):
    return kernels_for("topk", device)


@pytest.fixture(params=["list", "sampled", "overflow", "short"])
def list_mode(request, topk, monkeypatch):
    """``list``: the list holds every entry; ``sampled``: a list bracketed from 4096 samples with
    no slack beyond the bracket's (k < N: more samples than entries, so the bracket is sampled
    even for these small tensors; heavy ties can overflow it). Once a list in use is written the
    inputs are zeroed (the later kernels must not read them); a ``list`` call always has its
    list in use. ``overflow``: a capacity of 0 entries; ``short``: the list
    keeps no key (fewer than k entries). In the last two every kernel after the partition reads
    the data."""
    if request.param in ("list", "sampled"):
        monkeypatch.setattr(topk, "_fill_list", _then_zero_inputs(topk._fill_list, always=request.param == "list"))
    if request.param == "sampled":
        monkeypatch.setattr(topk, "SAMPLES", 4096)
        monkeypatch.setattr(topk, "SAMPLE_TILE", 256)
        monkeypatch.setattr(topk, "_list_capacity", _bracket_capacity(topk))
    elif request.param == "overflow":
        capacity = topk._list_capacity
        monkeypatch.setattr(topk, "_list_capacity", lambda *args: min(capacity(*args), 0))
    elif request.param == "short":
        monkeypatch.setattr(topk, "_fill_list", _keeping_nothing(topk, topk._fill_list))
    return request.param


_INPUTS: list[torch.Tensor] = []
"""The tensors (and bases) of the call under test, for :func:`_then_zero_inputs`."""


def _then_zero_inputs(fill_list, always: bool):
    def fill_and_zero(plan, buffers):
        fill_list(plan, buffers)
        k = int(buffers.state[-1])
        in_use = k <= int(buffers.list_total) <= plan.list_capacity
        assert in_use or not always, f"the list holds {int(buffers.list_total)} entries, k = {k}"
        if in_use:
            for x in _INPUTS:
                x.zero_()

    return fill_and_zero


def _bracket_capacity(topk):
    """``_list_capacity`` with no slack beyond twice the bracket's expected excess, the valid
    samples counted at the module's block size when called (``small_blocks`` patches it; the
    plan module's own ``BLOCK_ELEMS`` of 16384 would count 128 times too few samples per block
    slot, so every list would take all N entries and no call would be sampled)."""

    def capacity(total: int, k: int, blocks: int) -> int:
        samples = topk.SAMPLES * topk_plan.BLOCK_ELEMS / topk.BLOCK_ELEMS
        return topk_plan.list_capacity(total, k, blocks, samples, 0, 62)

    return capacity


def _keeping_nothing(topk, fill_list):
    def fill_short(plan, buffers):
        buffers.state[topk.STATE_LOWEST] = topk.NO_KEY
        fill_list(replace(plan, sampled=False), buffers)

    return fill_short


@pytest.fixture
def small_blocks(topk, monkeypatch):
    """Blocks of 128 elements and tiles of 64 (2 per block): small tensors then cover many
    tiles and blocks, and the 3 interpreter programs of a histogram pass stride over several
    blocks each."""
    monkeypatch.setattr(topk, "BLOCK_ELEMS", 128)
    monkeypatch.setattr(topk, "HISTOGRAM_TILE", 64)
    monkeypatch.setattr(topk, "COMPACT_TILE", 64)
    return topk


def reference_topk(tensors: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Stable sort of (-|x|, tensor position, flat index); the first k, split per tensor."""
    magnitudes = torch.cat([x.flatten().double().abs() for x in tensors])
    owner = torch.cat([torch.full((x.numel(),), p) for p, x in enumerate(tensors)])
    flat = torch.cat([torch.arange(x.numel()) for x in tensors])
    chosen = torch.sort(-magnitudes, stable=True).indices[:k]
    return [flat[chosen[owner[chosen] == p]].sort().values for p in range(len(tensors))]


def materialised(tensors: list[torch.Tensor], bases: list[torch.Tensor | None] | None) -> list[torch.Tensor]:
    """What a selection with bases ranks: ``x.float() − base.float()`` (or x)."""
    if bases is None:
        return tensors
    return [x if b is None else x.float() - b.float() for x, b in zip(tensors, bases, strict=True)]


def on_device(values: list[torch.Tensor | None], device: torch.device) -> list[torch.Tensor | None]:
    """Copies on ``device`` (always copies: the list-mode check zeroes them after the partition)."""
    return [None if x is None else x.to(device, copy=True) for x in values]


def selected(module, tensors: list[torch.Tensor], k: int, device: torch.device,
             bases: list[torch.Tensor | None] | None = None) -> list[torch.Tensor]:
    """The kernel's selection over ``tensors`` (and ``bases``) copied to ``device``, split per
    tensor; these inputs hold no NaN."""
    _INPUTS[:] = [x for x in on_device([*tensors, *(bases or [])], device) if x is not None]
    moved, moved_bases = _INPUTS[: len(tensors)], None
    if bases is not None:
        it = iter(_INPUTS[len(tensors):])
        moved_bases = [None if b is None else next(it) for b in bases]
    indices, stats = module.topk_indices(moved, k, moved_bases)
    *counts, nan_count = stats.tolist()
    assert nan_count == 0
    assert indices.shape == (k,)
    return list(indices.cpu().split(counts))


def check(module, tensors: list[torch.Tensor], k: int, device: torch.device,
          bases: list[torch.Tensor | None] | None = None) -> None:
    """The module's selection over ``tensors`` (minus ``bases``) on ``device`` equals the CPU
    reference of the materialised scores; reports the first differing indices."""
    got = selected(module, tensors, k, device, bases)
    want = reference_topk([x.cpu() for x in materialised(tensors, bases)], k)
    assert len(got) == len(tensors)
    for p, (g, w) in enumerate(zip(got, want, strict=True)):
        differing = sorted(set(g.tolist()) ^ set(w.tolist()))
        assert not differing, f"k={k}, tensor {p}: {len(differing)} indices differ, first {differing[:8]}"
        assert_bitwise_equal(g, w, what=f"k={k}, tensor {p} indices")


def ragged(dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen).to(dtype) for shape in RAGGED_SHAPES]


def k_cases(total: int) -> list[int]:
    return [0, 1, total // 3, total - 1, total]


@pytest.mark.parametrize("dtype", DTYPES)
def test_single_dtype_matches_reference(topk, list_mode, dtype, device):
    tensors = ragged(dtype, seed=1)
    for k in k_cases(sum(x.numel() for x in tensors)):
        check(topk, tensors, k, device)


@pytest.mark.parametrize("dtype", DTYPES)
def test_bases_select_as_the_materialised_differences(small_blocks, list_mode, dtype, device):
    """θ1 − θ0 with few distinct steps (heavy ties after the subtraction), one tensor without a
    base, ragged, empty and multi-block shapes."""
    gen = torch.Generator().manual_seed(21)
    theta0 = [torch.randn(shape, generator=gen).to(dtype) for shape in ((300,), (0,), (5, 7, 3), (129,), (2, 65))]
    theta1 = [(x.float() + torch.randint(-3, 4, x.shape, generator=gen) / 64).to(dtype) for x in theta0]
    theta1[4][0, :9] = (theta0[4][0, :9].float() * (1 + 2.0**-9)).to(dtype)  # differences of one low bit
    bases = [theta0[0], theta0[1], theta0[2], None, theta0[4]]
    total = sum(x.numel() for x in theta1)
    for k in (0, 1, 57, total // 2, total - 1, total):
        check(small_blocks, theta1, k, device, bases)


def test_bases_of_every_dtype_in_one_call(small_blocks, list_mode, device):
    gen = torch.Generator().manual_seed(22)
    theta0 = [torch.randn(n, generator=gen).to(d) for n, d in ((200, torch.float32), (170, torch.bfloat16),
                                                                 (150, torch.float16), (90, torch.float32))]
    theta1 = [(x.float() + torch.randint(-2, 3, x.shape, generator=gen) / 16).to(x.dtype) for x in theta0]
    bases = [theta0[0], theta0[1], theta0[2], None]
    for k in (1, 33, 300, 609):
        check(small_blocks, theta1, k, device, bases)


def test_the_difference_rounds_in_fp32(topk, device):
    """1 + 2^-23 − 2^-25 rounds to 1 + 2^-23 (to nearest even): it ties with the exact value."""
    x = torch.tensor([1.0, 1.0 + 2.0**-23, 1.0 + 2.0**-23, 0.5])
    b = torch.tensor([0.0, 2.0**-25, 0.0, 0.0])
    assert selected(topk, [x], 1, device, [b]) == [torch.tensor([1])]
    assert [t.tolist() for t in selected(topk, [x[2:], x[:2]], 1, device, [b[2:], b[:2]])] == [[0], []]


@pytest.mark.parametrize("offset", [1, 3])
def test_a_base_at_another_16_byte_offset_is_read_correctly(small_blocks, offset, device):
    """A view of θ0 at another address modulo 16 bytes than its θ1: copied once to θ1's."""
    gen = torch.Generator().manual_seed(30 + offset)
    storage = torch.randn(400, generator=gen).to(device)
    theta1 = storage[:301]
    shifted = torch.empty(305, device=device)[offset: offset + 301].copy_(storage[offset: offset + 301] * 0.5)
    assert shifted.data_ptr() % 16 != theta1.data_ptr() % 16
    for k in (1, 150, 301):
        indices, _ = small_blocks.topk_indices([theta1], k, [shifted])
        want = reference_topk([(theta1.float() - shifted.float()).cpu()], k)[0]
        assert_bitwise_equal(indices.cpu(), want, what=f"k={k}")


def test_nan_differences_are_counted(topk, device):
    inf = math.inf
    theta1 = torch.tensor([inf, 1.0, -inf, 2.0, inf], device=device)
    theta0 = torch.tensor([inf, 0.0, -inf, 1.0, -inf], device=device)
    _, stats = topk.topk_indices([theta1], 2, [theta0])
    assert stats.tolist() == [2, 2]


def test_infinite_differences_rank_first(topk, device):
    """inf − finite and finite − inf (fp32 and bf16) are infinite scores of either sign, above
    every finite difference."""
    inf = math.inf
    theta1 = [torch.tensor([1.0, inf, 3.0, -2.0, 0.0]), torch.tensor([-inf, 0.5, 2.0, 1.0]).bfloat16()]
    bases = [torch.tensor([0.0, 5.0, -inf, 1.0, inf]), torch.tensor([0.0, 0.0, inf, 1.5]).bfloat16()]
    assert sum(int(d.isinf().sum()) for d in materialised(theta1, bases)) == 5
    for k in (1, 4, 5, 6, 9):
        check(topk, theta1, k, device, bases)


def test_concatenated_positions(small_blocks, device):
    gen = torch.Generator().manual_seed(23)
    tensors = [torch.randn(n, generator=gen).to(device) for n in (130, 0, 7, 300)]
    for k in (1, 100, 437):
        flat, stats = small_blocks.topk_indices(tensors, k, concatenated=True)
        per_tensor, _ = small_blocks.topk_indices(tensors, k)
        starts = torch.tensor([0, 130, 130, 137]).repeat_interleave(stats[:-1].cpu())
        assert_bitwise_equal(flat.cpu(), per_tensor.cpu() + starts, what=f"k={k}")


@pytest.mark.parametrize("dtype", DTYPES)
def test_many_blocks_and_tiles(small_blocks, list_mode, dtype, device):
    gen = torch.Generator().manual_seed(2)
    tensors = [torch.randn(700, generator=gen).to(dtype), torch.randn(129, generator=gen).to(dtype),
               torch.randn(3, 100, generator=gen).to(dtype)]
    total = sum(x.numel() for x in tensors)
    for k in (1, 200, total // 2, total):
        check(small_blocks, tensors, k, device)


def test_mixed_dtypes_compare_exact_values(small_blocks, list_mode, device):
    """Values shared exactly by fp32, bf16 and fp16 tie across dtypes; fp32 neighbours one
    ulp away sort strictly around them."""
    gen = torch.Generator().manual_seed(3)
    grid = torch.randint(-12, 13, (900,), generator=gen).float() / 8
    tensors = [grid[:300].clone(), grid[300:600].bfloat16(), grid[600:].half(),
               torch.nextafter(grid[:200], torch.tensor(math.inf)),
               torch.nextafter(grid[200:400], torch.tensor(0.0))]
    total = sum(x.numel() for x in tensors)
    for k in (1, 57, 300, 301, 611, total - 5):
        check(small_blocks, tensors, k, device)


def test_heavy_ties_take_lowest_positions(small_blocks, list_mode, device):
    gen = torch.Generator().manual_seed(4)
    signs = torch.randint(0, 2, (500,), generator=gen).float() * 2 - 1
    tensors = [signs[:170] * 0.75, (signs[170:] * 0.75).bfloat16(), torch.zeros(40)]
    for k in (1, 169, 170, 171, 499, 500, 503, 540):
        check(small_blocks, tensors, k, device)


def test_signed_zeros_infinities_and_subnormals(topk, device):
    tiny32 = torch.finfo(torch.float32).tiny
    tensors = [
        torch.tensor([0.0, -0.0, math.inf, -math.inf, tiny32 / 4, -tiny32 / 2, 1.0, -1.0]),
        torch.tensor([6e-8, -6e-8, 65504.0, -0.0, 0.0, math.inf], dtype=torch.float16),
        torch.tensor([-math.inf, 1e-40, -3e38, 0.0], dtype=torch.bfloat16),
    ]
    for k in range(sum(x.numel() for x in tensors) + 1):
        check(topk, tensors, k, device)


def test_keys_differing_only_in_low_bits(small_blocks, list_mode, device):
    """fp32 magnitudes one to a few ulps apart: the threshold is found in the last pass."""
    gen = torch.Generator().manual_seed(5)
    ulps = torch.randperm(400, generator=gen) % 37
    base = torch.full((400,), 1.5).view(torch.int32)
    values = (base + ulps.int()).view(torch.float32) * torch.where(ulps % 2 == 0, 1.0, -1.0)
    tensors = [values[:250].clone(), values[250:].clone(), torch.full((20,), 1.5).half()]
    for k in (5, 100, 209, 380, 400):
        check(small_blocks, tensors, k, device)


@pytest.mark.parametrize("offset", [1, 2, 3])
def test_unaligned_views(small_blocks, offset, device):
    """Storage offsets that are not 16-byte aligned exercise the masked head of a tensor."""
    gen = torch.Generator().manual_seed(6 + offset)
    storage32 = torch.randn(400, generator=gen).to(device)
    storage16 = torch.randn(400, generator=gen).bfloat16().to(device)
    tensors = [storage32[offset:offset + 301], storage16[offset:offset + 250],
               storage32[offset + 5:offset + 6]]
    assert all(x.data_ptr() % 16 for x in tensors[:2])
    for k in (1, 100, 552):
        check(small_blocks, tensors, k, device)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_entries_are_counted_in_the_first_pass(small_blocks, dtype, device):
    """NaNs of any sign and payload, in several blocks and tensors and in masked tails, for
    every k (k = 0 runs the passes too); +inf is not a NaN."""
    gen = torch.Generator().manual_seed(11)
    tensors = [torch.randn(n, generator=gen).to(dtype) for n in (300, 0, 129, 61)]
    nan_positions = {0: [0, 150, 299], 2: [128], 3: [5, 6]}
    for t, positions in nan_positions.items():
        tensors[t][positions] = torch.tensor([float("nan"), -float("nan"), float("nan")][: len(positions)]).to(dtype)
    tensors[3][7] = float("inf")
    total = sum(x.numel() for x in tensors)
    for k in (0, 1, 6, 7, total // 2, total):
        indices, stats = small_blocks.topk_indices([x.to(device) for x in tensors], k)
        assert stats.tolist()[-1] == 6, f"k={k}"
        assert indices.shape == (k,) and sum(stats.tolist()[:-1]) == k


def test_no_blocks_launch_nothing_and_count_zero(topk, device):
    indices, stats = topk.topk_indices([torch.empty(0, device=device), torch.empty(0, 3, device=device).bfloat16()], 0)
    assert indices.shape == (0,) and stats.tolist() == [0, 0, 0]


def test_k_out_of_range_is_rejected(topk, device):
    with pytest.raises(AssertionError, match="outside"):
        topk.topk_indices([torch.ones(3, device=device)], 4)


def _declared(module, kernel):
    return [spec for spec in module.SPECIALIZATIONS if spec.kernel is kernel]


_CONSTEXPRS = {
    "_sample_kernel": ("DTYPE", "HAS_BASE", "BLOCK", "TILE"),
    "_bracket_kernel": ("SIGMAS", "TILE"),
    "_band_histogram_kernel": ("DTYPE", "HAS_BASE", "SHIFT", "STORE_BLOCKS", "BLOCK", "TILE", "LIST_TILE"),
    "_select_digit_kernel": ("GROUPS",),
    "_classify_blocks_kernel": ("ROWS", "TILE"),
    "_partition_kernel": ("DTYPE", "HAS_BASE", "WRITE", "BLOCK", "TILE"),
    "_compact_indices_kernel": ("DTYPE", "HAS_BASE", "BLOCK", "TILE"),
}


def test_every_launch_is_a_declared_specialization(topk, monkeypatch, device):
    recorders = {name: LaunchRecorder(getattr(topk, name), names) for name, names in _CONSTEXPRS.items()}
    compiled = kernel_module("topk", interpret=False)  # on CUDA, the module patched below
    compiled_kernels = {name: getattr(compiled, name) for name in recorders}
    for name, recorder in recorders.items():
        monkeypatch.setattr(topk, name, recorder)
    monkeypatch.setattr(topk, "_list_capacity", lambda total, k, blocks: k + 8)  # < N: the call is sampled
    tensors = [torch.randn(50), torch.randn(30).bfloat16(), torch.randn(20).half(), torch.randn(10)]
    check(topk, tensors, 40, device, [None, None, None, torch.randn(10)])
    for name, recorder in recorders.items():
        declared = [spec.constexprs for spec in _declared(compiled, compiled_kernels[name])]
        assert recorder.launches
        for launch in recorder.launches:
            assert launch in declared, f"{name} launched with undeclared {launch}"
    launched = {name: len(recorder.launches) for name, recorder in recorders.items()}
    # groups fp32, bf16, fp16, fp32 with a base: a sample, a count, a partition and a compaction
    # each; radix passes 1-2 of all four, 3 of fp32 / fp16 / fp32 + base, 4 of both fp32 groups
    assert launched == {"_sample_kernel": 4, "_bracket_kernel": 1, "_band_histogram_kernel": 4 + 4 + 3 + 2,
                        "_select_digit_kernel": 4, "_classify_blocks_kernel": 1, "_partition_kernel": 2 * 4,
                        "_compact_indices_kernel": 4}
    assert {s.name for s in compiled.SPECIALIZATIONS} == {s.name for s in topk.SPECIALIZATIONS}


def test_the_list_pass_has_the_programs_of_every_group(small_blocks, monkeypatch, device):
    """A one-block group listed first owns the list: its launches of the list passes get the
    programs of the call's blocks, not of its own (one program would count a list of up to N
    entries alone, in int32)."""
    grids = []
    kernel = small_blocks._band_histogram_kernel

    class Recorder:
        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                grids.append((grid[0], args[10]))  # owns_list
                return kernel[grid](*args, **kwargs)
            return launch

    monkeypatch.setattr(small_blocks, "_band_histogram_kernel", Recorder())
    gen = torch.Generator().manual_seed(5)
    tensors = [torch.randn(100, generator=gen), torch.randn(1000, generator=gen).bfloat16()]
    check(small_blocks, tensors, 900, device)  # the list holds every entry: it is in use
    owner = [programs for programs, owns in grids if owns]
    assert owner and all(programs > 1 for programs in owner), f"the list passes ran with {owner} programs"


def test_specializations_declare_their_promises():
    compiled = kernel_module("topk", interpret=False)
    names = [spec.name for spec in compiled.SPECIALIZATIONS]
    # radix passes (4 + 3 + 2 without a base, 4 of each dtype with one), select, bracket,
    # classification; sample, count, partition and compaction per (dtype, base)
    assert len(names) == len(set(names)) == 9 + 12 + 3 + 4 * 6
    for spec in compiled.SPECIALIZATIONS:
        # the sample gathers keys from scattered positions, the bracket reads 16384 samples
        # masked at a runtime length: no vector loads promised
        unvectorized = spec.kernel in (compiled._sample_kernel, compiled._bracket_kernel)
        assert ("vectorized_loads" in spec.promises) != unvectorized
        if spec.kernel is compiled._band_histogram_kernel:
            assert "block_local_histogram" in spec.promises
        assert set(spec.signature) == set(spec.kernel.arg_names)


@pytest.mark.parametrize("dtype", DTYPES)
def test_histogram_pass_counts_the_band_digits(topk, dtype, device):
    """``histogram_pass`` (what the GPU check times) counts digit ``(key >> shift) & 255`` of the
    keys whose ``key >> (shift + 8)`` is the band, keys being the fp32 bit patterns of |x|."""
    gen = torch.Generator().manual_seed(5)
    x = (torch.randn(3000, generator=gen) * 1e-3).to(dtype)
    keys = x.float().abs().view(torch.int32).long()
    first = torch.bincount((keys >> 24) & 255, minlength=256)
    band = int(first.argmax())
    in_band = keys[(keys >> 24) == band]
    second = torch.bincount((in_band >> 16) & 255, minlength=256)
    got_first = topk.histogram_pass(x.to(device), 24, 0)().cpu()
    got_second = topk.histogram_pass(x.to(device), 16, band)().cpu()
    assert_bitwise_equal(got_first, first, what="first pass")
    assert_bitwise_equal(got_second, second, what=f"second pass, band {band}")


def test_a_sampled_list_selects_exactly_at_the_real_constants(topk, monkeypatch, device):
    """A call large enough to be sampled with the shipped constants (16384 samples, blocks of
    16384): the list is in use (the inputs are zeroed once it is written) and the selection
    equals the reference, over three groups and at two k."""
    monkeypatch.setattr(topk, "_fill_list", _then_zero_inputs(topk._fill_list, always=True))
    gen = torch.Generator().manual_seed(40)
    tensors = [torch.randn(150_001, generator=gen), torch.randn(70_000, generator=gen).bfloat16(),
               torch.randn(40_000, generator=gen) * 1e-3]
    bases = [None, None, tensors[2] + torch.randn(40_000, generator=gen) * 1e-5]
    total = sum(x.numel() for x in tensors)
    for k in (total // 1000, total // 100):
        plan = topk._plan(tensors, bases, k, concatenated=False)
        assert plan.sampled and plan.list_capacity < total // 2
        check(topk, tensors, k, device, bases)


def _bracket_reference(samples: torch.Tensor, k: int, total: int, sigmas: float) -> int:
    """The lowest key of the bracket, computed in numpy float32 as the kernel does."""
    valid = np.sort(samples[samples >= 0].numpy())[::-1]
    expected = np.float32(k) / np.float32(total) * np.float32(len(valid))
    take = int(np.float32(expected + np.float32(sigmas) * np.sqrt(expected) + np.float32(sigmas * sigmas))) + 1
    if k == 0:
        return 1 << 31
    return 0 if take > len(valid) else int(valid[take - 1])


@pytest.mark.parametrize("k", [0, 1, 1_000, 20_000, 120_000, 199_999])
def test_the_bracket_is_the_take_th_largest_valid_sample(topk, k, device):
    """Keys with heavy ties and invalid (-1) slots, over several tiles: the bracket's lowest key
    equals the reference's; far too few samples give 0 (keep everything), k = 0 gives NO_KEY."""
    gen = torch.Generator().manual_seed(41)
    samples = torch.randint(0, 1 << 31, (3000,), generator=gen)
    samples[::7] = samples[3]                       # ties
    samples[torch.rand(3000, generator=gen) < 0.2] = -1
    total = 200_000
    state = torch.tensor([k, 0, 0, 0, k], device=device)
    topk._bracket_kernel[(1,)](samples.to(device), samples.numel(), state, total, SIGMAS=topk.BRACKET_SIGMAS,
                               TILE=topk.BRACKET_TILE)
    want = _bracket_reference(samples, k, total, topk.BRACKET_SIGMAS)
    assert int(state[topk.STATE_LOWEST]) == want
    assert state.cpu()[[0, 1, 2, 4]].tolist() == [k, 0, 0, k]


def _sample_positions_reference(i: np.ndarray, num_blocks: int, num_samples: int, block: int) -> np.ndarray:
    """Sample i at ``floor((i + u_i) * slots / samples)``, u_i from a multiplicative hash."""
    jitter = ((i * 2654435761) >> 8) & 0xFFFF
    return np.floor((i + jitter / 65536.0) * (num_blocks * block / num_samples)).astype(np.int64)


def test_samples_are_the_keys_at_stratified_positions(small_blocks, device):
    """Each sample is the key (of the difference, with bases) at one hashed position of its
    stratum, -1 where that position lies in an unaligned head or past a tensor's end; the
    positions ascend with the strata and cover the group's slots."""
    gen = torch.Generator().manual_seed(42)
    storage = torch.randn(1000, generator=gen)
    tensors = [storage[3:403], torch.randn(129, generator=gen), torch.randn(5, generator=gen)]
    bases = [storage[503:903], torch.randn(129, generator=gen), torch.randn(5, generator=gen)]
    on = storage.to(device)
    moved = [on[3:403], *on_device(tensors[1:], device)]
    moved_bases = [on[503:903], *on_device(bases[1:], device)]
    assert moved[0].data_ptr() % 16 == 12
    plan = small_blocks._plan(moved, moved_bases, 10, concatenated=False)
    group = replace(plan.groups[0], samples=301)
    buffers = small_blocks._buffers(plan, small_blocks.upload(plan.values, moved[0].device), len(moved))
    samples = torch.full((301,), -7, dtype=torch.int64, device=moved[0].device)
    small_blocks._sample_kernel[(math.ceil(301 / small_blocks.SAMPLE_TILE),)](
        buffers.table, buffers.block_column, samples, plan.num_columns, group.first_block, 0, 301,
        group.num_blocks * 128 / 301, DTYPE=small_blocks.TL_DTYPES[torch.float32], HAS_BASE=True, BLOCK=128,
        TILE=small_blocks.SAMPLE_TILE)
    # the reference: the group-major slots of the three tensors (heads of 3, 0 and 0 elements)
    keys = [((x - b).abs().view(torch.int32).long()) for x, b in zip(tensors, bases, strict=True)]
    slots = []
    for key, head, blocks in ((keys[0], 3, 4), (keys[1], 0, 2), (keys[2], 0, 1)):
        padded = torch.full((blocks * 128,), -1, dtype=torch.int64)
        padded[head: head + key.numel()] = key
        slots.append(padded)
    slots = torch.cat(slots)
    positions = _sample_positions_reference(np.arange(301), group.num_blocks, 301, 128)
    assert np.all(np.diff(positions) >= 0) and positions[-1] < group.num_blocks * 128 <= positions[-1] + 4
    assert_bitwise_equal(samples.cpu(), slots[torch.from_numpy(positions)], what="samples")


def test_full_passes_count_and_write_the_keys_at_or_above_the_lowest(topk, device):
    """``full_passes`` (what the GPU check times): the count's per-block totals are the list's
    length, at least k; the list holds exactly the keys at or above its smallest key, each with
    its in-block offset, in index order."""
    gen = torch.Generator().manual_seed(43)
    x = torch.randn(100_000, generator=gen) * 1e-3
    count, partition = topk.full_passes(x.to(device), 1000)
    counts = count().cpu()
    entries = partition().cpu()[: int(counts.sum())]
    keys = x.abs().view(torch.int32).long()
    lowest = int((entries >> 14).min())
    assert 1000 <= len(entries) < 100_000
    positions = torch.arange(100_000)
    kept = positions[keys >= lowest]
    assert_bitwise_equal(entries >> 14, keys[kept], what="list keys")
    assert_bitwise_equal(entries & (2**14 - 1), kept % 16384, what="in-block offsets")
    assert_bitwise_equal(counts, torch.bincount(kept // 16384, minlength=7), what="per-block counts")


def test_the_capacity_covers_the_bracket_on_sampled_ranks():
    """The list's design, simulated in numpy on 20 random orders of 4M keys with many ties: the
    keys at or above the bracketed sample number at least k and at most the capacity."""
    topk = kernel_module("topk", interpret=True)
    rng = np.random.default_rng(44)
    n, blocks = 1 << 22, (1 << 22) // topk.BLOCK_ELEMS
    keys = np.round(np.abs(rng.standard_normal(n)) * 3000)
    for k in (n // 1000, n // 100, n // 10):
        capacity = topk._list_capacity(n, k, blocks)
        for _ in range(20):
            rng.shuffle(keys)
            i = np.arange(topk.SAMPLES)
            sample = keys[_sample_positions_reference(i, blocks, topk.SAMPLES, topk.BLOCK_ELEMS)]
            lowest = _bracket_reference(torch.from_numpy(sample.astype(np.int64)), k, n, topk.BRACKET_SIGMAS)
            kept = int((keys >= lowest).sum())
            assert k <= kept <= capacity, f"k={k}: {kept} kept, capacity {capacity}"
