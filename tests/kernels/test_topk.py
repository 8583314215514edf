"""Triton global top-k (kernels/topk.py), interpreted on CPU and compiled on CUDA, vs an
independent reference."""

from __future__ import annotations

import math

import pytest
import torch

from deftx.kernels import kernel_module
from tests.helpers import assert_bitwise_equal
from tests.kernels.devices import kernels_for

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
RAGGED_SHAPES = ((37,), (0,), (5, 7, 3), (130,), (1,), (3, 0, 2))


@pytest.fixture
def topk(device):
    return kernels_for("topk", device)


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


def selected(module, tensors: list[torch.Tensor], k: int, device: torch.device) -> list[torch.Tensor]:
    """The kernel's selection over ``tensors`` moved to ``device``, split per tensor; these
    inputs hold no NaN."""
    indices, stats = module.topk_indices([x.to(device) for x in tensors], k)
    *counts, nan_count = stats.tolist()
    assert nan_count == 0
    assert indices.shape == (k,)
    return list(indices.cpu().split(counts))


def check(module, tensors: list[torch.Tensor], k: int, device: torch.device) -> None:
    """The module's selection over ``tensors`` moved to ``device`` equals the CPU reference."""
    got = selected(module, tensors, k, device)
    want = reference_topk([x.cpu() for x in tensors], k)
    assert len(got) == len(tensors)
    for p, (g, w) in enumerate(zip(got, want, strict=True)):
        assert_bitwise_equal(g, w, what=f"k={k}, tensor {p} indices")


def ragged(dtype: torch.dtype, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen).to(dtype) for shape in RAGGED_SHAPES]


def k_cases(total: int) -> list[int]:
    return [0, 1, total // 3, total - 1, total]


@pytest.mark.parametrize("dtype", DTYPES)
def test_single_dtype_matches_reference(topk, dtype, device):
    tensors = ragged(dtype, seed=1)
    for k in k_cases(sum(x.numel() for x in tensors)):
        check(topk, tensors, k, device)


@pytest.mark.parametrize("dtype", DTYPES)
def test_many_blocks_and_tiles(small_blocks, dtype, device):
    gen = torch.Generator().manual_seed(2)
    tensors = [torch.randn(700, generator=gen).to(dtype), torch.randn(129, generator=gen).to(dtype),
               torch.randn(3, 100, generator=gen).to(dtype)]
    total = sum(x.numel() for x in tensors)
    for k in (1, 200, total // 2, total):
        check(small_blocks, tensors, k, device)


def test_mixed_dtypes_compare_exact_values(small_blocks, device):
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


def test_heavy_ties_take_lowest_positions(small_blocks, device):
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


def test_keys_differing_only_in_low_bits(small_blocks, device):
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


class _Recorder:
    """Stands in for a jitted kernel: records the constexprs of every launch, then runs it."""

    def __init__(self, kernel, names):
        self.kernel, self.names, self.launches = kernel, names, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append({name: kwargs[name] for name in self.names})
            return self.kernel[grid](*args, **kwargs)

        return launch


def _declared(module, kernel):
    return [spec for spec in module.SPECIALIZATIONS if spec.kernel is kernel]


def test_every_launch_is_a_declared_specialization(topk, monkeypatch, device):
    recorders = {
        "_digit_histogram_kernel": _Recorder(topk._digit_histogram_kernel,
                                             ("DTYPE", "SHIFT", "STORE_BLOCKS", "BLOCK", "TILE")),
        "_select_digit_kernel": _Recorder(topk._select_digit_kernel, ("GROUPS",)),
        "_classify_blocks_kernel": _Recorder(topk._classify_blocks_kernel, ("ROWS",)),
        "_compact_indices_kernel": _Recorder(topk._compact_indices_kernel, ("DTYPE", "BLOCK", "TILE")),
    }
    compiled = kernel_module("topk", interpret=False)  # on CUDA, the module patched below
    compiled_kernels = {name: getattr(compiled, name) for name in recorders}
    for name, recorder in recorders.items():
        monkeypatch.setattr(topk, name, recorder)
    tensors = [torch.randn(50), torch.randn(30).bfloat16(), torch.randn(20).half()]
    check(topk, tensors, 40, device)
    for name, recorder in recorders.items():
        declared = [spec.constexprs for spec in _declared(compiled, compiled_kernels[name])]
        assert recorder.launches
        for launch in recorder.launches:
            assert launch in declared, f"{name} launched with undeclared {launch}"
    launched = {name: len(recorder.launches) for name, recorder in recorders.items()}
    assert launched == {"_digit_histogram_kernel": 4 + 3 + 2, "_select_digit_kernel": 4,
                        "_classify_blocks_kernel": 1, "_compact_indices_kernel": 3}
    assert {s.name for s in compiled.SPECIALIZATIONS} == {s.name for s in topk.SPECIALIZATIONS}


def test_specializations_declare_their_promises():
    compiled = kernel_module("topk", interpret=False)
    names = [spec.name for spec in compiled.SPECIALIZATIONS]
    assert len(names) == len(set(names)) == 9 + 2 + 3
    for spec in compiled.SPECIALIZATIONS:
        assert "vectorized_loads" in spec.promises
        if spec.kernel is compiled._digit_histogram_kernel:
            assert "block_local_histogram" in spec.promises
        assert set(spec.signature) == set(spec.kernel.arg_names)


def test_bytes_moved_models():
    topk = kernel_module("topk", interpret=False)
    shapes, k = [(16384,), (10, 10)], 10
    n = 16384 + 100
    blocks = 2
    bookkeeping = 3 * 256 * 4 + 128
    assert topk.bytes_moved(shapes, k, torch.float32) == 5 * n * 4 + 8 * k + blocks * bookkeeping
    assert topk.bytes_moved(shapes, k, torch.bfloat16) == 3 * n * 2 + 8 * k + blocks * bookkeeping
    assert topk.baseline_bytes_moved(shapes, k, torch.float32) == 7 * n * 4 + k * 12 + 32 * k
    assert topk.baseline_bytes_moved(shapes, k, torch.float16) == 5 * n * 2 + k * 10 + 32 * k


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
