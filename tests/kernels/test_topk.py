"""Triton global top-k (kernels/topk.py), interpreted on CPU and compiled on CUDA, vs an
independent reference: a stable sort of the magnitudes (of the materialised differences, with
bases). The fp32 / fp16 cases run with the candidate list in use and with it overflowing
(every later kernel then reads the data)."""

from __future__ import annotations

import math

import pytest
import torch

from deftx.kernels import kernel_module
from tests.helpers import assert_bitwise_equal
from tests.kernels.conftest import LaunchRecorder
from tests.kernels.devices import kernels_for

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
RAGGED_SHAPES = ((37,), (0,), (5, 7, 3), (130,), (1,), (3, 0, 2))


@pytest.fixture
def topk(device):
    return kernels_for("topk", device)


@pytest.fixture(params=["list", "overflow"])
def list_mode(request, topk, monkeypatch):
    """``list``: the candidate list fits, and the inputs are zeroed once it is written (the
    later kernels must not read them); ``overflow``: a capacity of 0 entries, so every kernel
    after the second pass reads the data."""
    if request.param == "overflow":
        capacity = topk._list_capacity
        monkeypatch.setattr(topk, "_list_capacity", lambda *args: min(capacity(*args), 0))
    else:
        monkeypatch.setattr(topk, "_fill_list", _then_zero_inputs(topk._fill_list))
    return request.param


_INPUTS: list[torch.Tensor] = []
"""The tensors (and bases) of the call under test, for :func:`_then_zero_inputs`."""


def _then_zero_inputs(fill_list):
    def fill_and_zero(plan, buffers):
        fill_list(plan, buffers)
        for x in _INPUTS:
            x.zero_()

    return fill_and_zero


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
    "_digit_histogram_kernel": ("DTYPE", "HAS_BASE", "SHIFT", "STORE_BLOCKS", "BLOCK", "TILE"),
    "_band_histogram_kernel": ("DTYPE", "HAS_BASE", "SHIFT", "STORE_BLOCKS", "BLOCK", "TILE", "LIST_TILE"),
    "_select_digit_kernel": ("GROUPS",),
    "_classify_blocks_kernel": ("ROWS", "PARTITION", "TILE"),
    "_partition_kernel": ("DTYPE", "HAS_BASE", "BLOCK", "TILE"),
    "_compact_indices_kernel": ("DTYPE", "HAS_BASE", "BLOCK", "TILE"),
}


def test_every_launch_is_a_declared_specialization(topk, monkeypatch, device):
    recorders = {name: LaunchRecorder(getattr(topk, name), names) for name, names in _CONSTEXPRS.items()}
    compiled = kernel_module("topk", interpret=False)  # on CUDA, the module patched below
    compiled_kernels = {name: getattr(compiled, name) for name in recorders}
    for name, recorder in recorders.items():
        monkeypatch.setattr(topk, name, recorder)
    tensors = [torch.randn(50), torch.randn(30).bfloat16(), torch.randn(20).half(), torch.randn(10)]
    check(topk, tensors, 40, device, [None, None, None, torch.randn(10)])
    for name, recorder in recorders.items():
        declared = [spec.constexprs for spec in _declared(compiled, compiled_kernels[name])]
        assert recorder.launches
        for launch in recorder.launches:
            assert launch in declared, f"{name} launched with undeclared {launch}"
    launched = {name: len(recorder.launches) for name, recorder in recorders.items()}
    # groups fp32, bf16, fp16, fp32 with a base: passes 1-2 of all four, 3 of fp32 / fp16 / fp32 + base,
    # 4 of both fp32 groups; a partition and a compaction per group
    assert launched == {"_digit_histogram_kernel": 2 * 4, "_band_histogram_kernel": 3 + 2,
                        "_select_digit_kernel": 4, "_classify_blocks_kernel": 2, "_partition_kernel": 4,
                        "_compact_indices_kernel": 4}
    assert {s.name for s in compiled.SPECIALIZATIONS} == {s.name for s in topk.SPECIALIZATIONS}


def test_specializations_declare_their_promises():
    compiled = kernel_module("topk", interpret=False)
    names = [spec.name for spec in compiled.SPECIALIZATIONS]
    # histograms (4 + 3 + 2 passes without a base, 4 of each dtype with one), select, 2
    # classifications, partition and compaction per (dtype, base)
    assert len(names) == len(set(names)) == 9 + 12 + 1 + 2 + 2 * 6
    for spec in compiled.SPECIALIZATIONS:
        assert "vectorized_loads" in spec.promises
        if spec.kernel in (compiled._digit_histogram_kernel, compiled._band_histogram_kernel):
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
