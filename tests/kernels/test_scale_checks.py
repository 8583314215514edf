"""The O(N) checks of ``scale_checks.py`` agree with the sort-based and per-entry references on
small CPU inputs, and reject wrong answers (so the CUDA scale tests that rely on them can fail)."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.scale_checks import assert_exact_topk, assert_same_bits, reference_scatter_, spread_indices
from tests.kernels.test_topk import reference_topk
from tests.ops.test_scatter import loop_reference


def tied_values(dtype: torch.dtype, seed: int) -> torch.Tensor:
    """600 values on a coarse grid of both signs and zeros: many ties at every threshold."""
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(-6, 7, (600,), generator=gen).float() / 4).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_exact_topk_accepts_the_reference(dtype):
    x = tied_values(dtype, seed=1)
    for k in (0, 1, 37, 300, 599, 600):
        (want,) = reference_topk([x], k)
        assert_exact_topk(x, k, want)


def test_exact_topk_rejects_wrong_selections():
    x = tied_values(torch.float32, seed=2)
    k = 250
    (right,) = reference_topk([x], k)
    threshold = x.abs()[right].min()
    outside = torch.ones(x.numel(), dtype=torch.bool)
    outside[right] = False
    later_tie = int((outside & (x.abs() == threshold)).nonzero()[-1])
    smaller = int((outside & (x.abs() < threshold)).nonzero()[0])
    last_tied = int(right[x.abs()[right] == threshold].max())
    first_above = int(right[x.abs()[right] > threshold][0])
    tie_taken_late = sorted([i for i in right.tolist() if i != last_tied] + [later_tie])
    with pytest.raises(AssertionError, match="equal to the threshold"):
        assert_exact_topk(x, k, torch.tensor(tie_taken_late))
    below_taken = sorted([i for i in right.tolist() if i != first_above] + [smaller])
    with pytest.raises(AssertionError, match="above the threshold"):
        assert_exact_topk(x, k, torch.tensor(below_taken))
    with pytest.raises(AssertionError, match="predecessor"):
        assert_exact_topk(x, k, right.flip(0))
    with pytest.raises(AssertionError, match="predecessor"):
        assert_exact_topk(x, k, torch.cat([right[:1], right[:-1]]))
    with pytest.raises(AssertionError, match="outside"):
        assert_exact_topk(x, k, torch.cat([right[1:], right.new_tensor([x.numel()])]))
    with pytest.raises(AssertionError, match=r"\(250,\)"):
        assert_exact_topk(x, k - 1, right)


def test_spread_indices_are_sorted_unique_and_reach_the_end():
    gen = torch.Generator().manual_seed(3)
    for n, count in ((10, 3), (1000, 100), (1 << 20, 1000)):
        idx = spread_indices(n, count, gen)
        assert idx.dtype == torch.int64 and int(idx[0]) >= 0 and int(idx[-1]) == n - 1
        assert bool((idx[1:] > idx[:-1]).all())
        assert count // 4 <= idx.numel() <= count + 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_reference_scatter_equals_the_per_entry_reference(dtype):
    gen = torch.Generator().manual_seed(4)
    dense = torch.randn(500, generator=gen).to(dtype)
    first = spread_indices(500, 200, gen)
    second = torch.cat([spread_indices(500, 150, gen), first[::3]]).unique()
    values = [torch.randn(first.numel(), generator=gen), torch.randn(second.numel(), generator=gen).to(dtype)]
    scales = [0.37, -1.25]
    got = dense.clone()
    reference_scatter_(got, [first, second], values, scales)
    (want,) = loop_reference([dense], [[first], [second]], [[values[0]], [values[1]]], scales)
    assert_same_bits(got, want)
    assert not torch.equal(got, dense)


def test_same_bits_tells_signed_zeros_apart_and_counts():
    a = torch.tensor([0.0, 1.0, 2.0, 3.0])
    b = torch.tensor([-0.0, 1.0, 2.5, 3.0])
    with pytest.raises(AssertionError, match="2 of 4 entries differ bitwise; first at flat index 0"):
        assert_same_bits(a, b)
    assert_same_bits(a.bfloat16(), a.bfloat16())
