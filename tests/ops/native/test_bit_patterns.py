"""Native top-k and scatter over arbitrary bit patterns, against their torch references.

Each seeded case draws raw bits for every tensor (every exponent, subnormals, infinities, signed
zeros and NaNs of each dtype) and mixes dtypes.
- Top-k: a base or none per tensor (a tensor with a base is its base moved by a few ulps, so the
  differences are tiny, tied or rounded), k and the candidate capacity (the two-pass path and the
  four-pass one). The NaN count must equal torch's; on NaN-free scores the selection must equal
  the stable sort of the materialised scores, entry for entry.
- Scatter: one to three diffs of random index subsets, values of any dtype and scales from zero to
  overflow. After the add, every entry equals the fp32 reference bit for bit, or both are NaN (a
  NaN's sign and payload may differ: README, "Reliability"); the saved entries and the restore
  are exact in every bit, NaNs included.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from deftx.ops import native

if native.unavailable_reason() is not None:
    pytest.skip(native.unavailable_reason(), allow_module_level=True)

from deftx.ops.native.scatter import scatter_add_, scatter_restore_
from deftx.ops.native.topk import select
from tests.helpers import assert_bitwise_equal
from tests.ops.native.test_scatter import reference_scatter_add
from tests.ops.native.test_topk import assert_same_selection, materialised, reference_topk

# dtype -> (integer dtype of the same width, number of bits)
BIT_VIEWS = {torch.float32: (torch.int32, 32), torch.bfloat16: (torch.int16, 16), torch.float16: (torch.int16, 16)}
CAPACITIES = (None, 0, 1, 7)
SCALES = (0.0, -0.0, 1.0, -1.0, 0.7, 1e-3, 3e38, -2.0**-140)
CASES = 2000


def random_bits(dtype: torch.dtype, size: int, generator: torch.Generator) -> torch.Tensor:
    """``size`` entries of ``dtype`` with uniformly random bit patterns."""
    integer, width = BIT_VIEWS[dtype]
    low, high = -(1 << (width - 1)), 1 << (width - 1)
    return torch.randint(low, high, (size,), generator=generator, dtype=torch.int64).to(integer).view(dtype)


def ulps_away(base: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """``base`` with each entry's bit pattern moved by -3 ... 3 (wrapping within the width)."""
    integer, width = BIT_VIEWS[base.dtype]
    bits = base.view(integer).to(torch.int64) + torch.randint(-3, 4, base.shape, generator=generator)
    wrapped = (bits + (1 << (width - 1))) % (1 << width) - (1 << (width - 1))
    return wrapped.to(integer).view(base.dtype)


def picker(generator: torch.Generator) -> Callable[[int], int]:
    """pick(n): a uniform integer in [0, n) from ``generator``."""
    return lambda n: int(torch.randint(n, (), generator=generator))


def draw_selection(seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor | None], int, int | None]:
    """(tensors, bases, k, candidate_capacity) of case ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    pick = picker(generator)
    dtypes = list(BIT_VIEWS)
    tensors, bases = [], []
    for _ in range(pick(5)):
        theta0 = random_bits(dtypes[pick(len(dtypes))], pick(97), generator)
        with_base = pick(2) == 1
        tensors.append(ulps_away(theta0, generator) if with_base else theta0)
        bases.append(theta0 if with_base else None)
    k = pick(sum(t.numel() for t in tensors) + 1)
    return tensors, bases, k, CAPACITIES[pick(len(CAPACITIES))]


@pytest.mark.parametrize("first", range(0, CASES, 100))
def test_any_bit_patterns_select_as_the_stable_sort(first):
    nan_free = 0
    for seed in range(first, first + 100):
        tensors, bases, k, capacity = draw_selection(seed)
        chosen = select(tensors, k, bases, candidate_capacity=capacity)
        scores = materialised(tensors, bases)
        expected_nans = sum(int(torch.isnan(s.float()).sum()) for s in scores)
        assert chosen.nan_count == expected_nans, f"case {seed}: {chosen.nan_count} NaNs counted"
        assert sum(chosen.counts) == k == chosen.indices.numel(), f"case {seed}"
        if expected_nans == 0:
            nan_free += 1
            try:
                assert_same_selection(list(chosen.indices.split(chosen.counts)), reference_topk(scores, k))
            except AssertionError as err:
                raise AssertionError(f"case {seed} (k = {k}, capacity {capacity}): {err}") from None
    assert nan_free >= 20, f"only {nan_free} of 100 cases free of NaN: the comparison hardly ran"


def draw_scatter(seed: int):
    """(dense, indices, values, scales) of scatter case ``seed``: indices[d][t], values[d][t]."""
    generator = torch.Generator().manual_seed(seed)
    pick = picker(generator)
    dtypes = list(BIT_VIEWS)
    dense = [random_bits(dtypes[pick(len(dtypes))], pick(97), generator) for _ in range(1 + pick(4))]
    n_diffs = 1 + pick(3)
    indices = [
        [torch.nonzero(torch.rand(w.numel(), generator=generator) < 0.5).flatten() for w in dense]
        for _ in range(n_diffs)
    ]
    values = [[random_bits(dtypes[pick(len(dtypes))], len(index), generator) for index in diff] for diff in indices]
    return dense, indices, values, [SCALES[pick(len(SCALES))] for _ in range(n_diffs)]


def assert_equal_or_both_nan(actual: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    both_nan = actual.float().isnan() & expected.float().isnan()
    assert_bitwise_equal(torch.where(both_nan, 0, actual), torch.where(both_nan, 0, expected), what=what)


@pytest.mark.parametrize("first", range(0, CASES, 250))
def test_any_bit_patterns_add_as_the_reference_and_restore_exactly(first):
    for seed in range(first, first + 250):
        dense, indices, values, scales = draw_scatter(seed)
        original = [w.clone() for w in dense]
        expected = reference_scatter_add(dense, indices, values, scales)
        saved = scatter_add_(dense, indices, values, scales, True)
        for t, (w, e) in enumerate(zip(dense, expected, strict=True)):
            assert_equal_or_both_nan(w, e, f"case {seed}: dense[{t}] after add")
        for d, diff in enumerate(indices):
            for t, index in enumerate(diff):
                assert_bitwise_equal(saved[d][t], original[t][index], what=f"case {seed}: saved[{d}][{t}]")
        scatter_restore_(dense, indices, saved)
        for t, (w, o) in enumerate(zip(dense, original, strict=True)):
            assert_bitwise_equal(w, o, what=f"case {seed}: dense[{t}] after restore")
