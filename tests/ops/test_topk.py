"""topk_mask: every CPU backend against an independent reference and hand-computed cases."""

from __future__ import annotations

import contextlib

import pytest
import torch

from deftx.ops import indices_to_mask, topk_mask
from tests.helpers import assert_bitwise_equal
from tests.ops.conftest import cpu_backends


def reference_selection(tensors: list[torch.Tensor], k: int) -> list[torch.Tensor]:
    """Stable ranking by (-|x|, tensor position, flat index) over the concatenation: the spec."""
    keys = []
    for pos, t in enumerate(tensors):
        flat = t.reshape(-1).abs().double()
        for i, v in enumerate(flat.tolist()):
            keys.append((-v, pos, i))
    chosen = sorted(keys)[:k]
    out = [[] for _ in tensors]
    for _, pos, i in chosen:
        out[pos].append(i)
    return [torch.tensor(sorted(ix), dtype=torch.int64) for ix in out]


SHAPES = [[(7,)], [(3, 5), (0,), (11,)], [(4, 4), (1,), (2, 3, 5)], [(33, 17)]]


@pytest.mark.parametrize("backend", cpu_backends("topk"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("shapes", SHAPES, ids=lambda s: "+".join("x".join(map(str, x)) for x in s))
def test_matches_reference_with_ties(backend, dtype, shapes):
    gen = torch.Generator().manual_seed(len(shapes))
    # small integers: many exact ties at the threshold, both signs, zeros
    tensors = [torch.randint(-4, 5, s, generator=gen).to(dtype) for s in shapes]
    total = sum(t.numel() for t in tensors)
    for k in sorted({0, 1, total // 3, total // 2, total}):
        got = topk_mask(tensors, k, output="indices", backend=backend)
        want = reference_selection(tensors, k)
        assert sum(int(g.numel()) for g in got) == k
        for pos, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_bitwise_equal(g.cpu(), w, what=f"k={k} tensor {pos}")


@pytest.mark.parametrize("backend", cpu_backends("topk"))
def test_mixed_dtypes_compare_by_value(backend):
    a = torch.tensor([0.5, -3.0, 2.0], dtype=torch.float32)
    b = torch.tensor([3.0, -0.5, 2.0], dtype=torch.bfloat16)
    c = torch.tensor([float("inf"), -0.0], dtype=torch.float16)
    got = topk_mask([a, b, c], 4, output="indices", backend=backend)
    # |x| order: inf (c0), 3.0 (a1), 3.0 (b0), then 2.0 tied: a2 wins over b2
    assert [g.tolist() for g in got] == [[1, 2], [0], [0]]


@pytest.mark.parametrize("backend", cpu_backends("topk"))
def test_masks_hold_exactly_the_selected_indices(backend):
    gen = torch.Generator().manual_seed(7)
    tensors = [torch.randn(3, 5, generator=gen), torch.randn(0, 2), torch.randn(2, 3, 4, generator=gen).half()]
    indices = topk_mask(tensors, 11, output="indices", backend=backend)
    masks = topk_mask(tensors, 11, backend=backend)
    for t, (mask, idx, x) in enumerate(zip(masks, indices, tensors, strict=True)):
        assert mask.shape == x.shape and mask.dtype == torch.bool, f"mask {t}"
        assert mask.reshape(-1).nonzero().flatten().tolist() == idx.tolist(), f"mask {t}"


@pytest.mark.parametrize("backend", cpu_backends("topk"))
@pytest.mark.parametrize("k", [0, 1, 9])
def test_nan_is_reported_naming_the_first_tensor_that_holds_one(backend, k):
    nan = float("nan")
    tensors = [torch.ones(3), torch.arange(4.0).bfloat16(), torch.tensor([1.0, nan, 2.0, -nan]).half(),
               torch.tensor([nan])]
    with pytest.raises(ValueError, match=r"tensor 2 \(shape \(4,\)\) contains 2 NaN"):
        topk_mask(tensors, k, backend=backend)


@contextlib.contextmanager
def flushing_denormals():
    """The CPU treating subnormals as zero in float arithmetic and comparisons
    (``torch.set_flush_denormal``, FTZ/DAZ) inside the block; skips where unsupported."""
    if not torch.set_flush_denormal(True):
        pytest.skip("this CPU cannot flush denormals")
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


@pytest.mark.parametrize("backend", cpu_backends("topk"))
def test_subnormals_rank_by_value_when_the_cpu_flushes_denormals(backend):
    """The keys are bit patterns, so the selection does not depend on the floating-point mode:
    under FTZ/DAZ every backend still takes exactly k entries, the largest subnormals."""
    gen = torch.Generator().manual_seed(5)
    x = torch.rand(4096, generator=gen) * torch.finfo(torch.float32).tiny
    k = 1024
    (want,) = reference_selection([x], k)
    with flushing_denormals():
        (got,) = topk_mask([x], k, output="indices", backend=backend)
        (mask,) = topk_mask([x], k, backend=backend)
    assert int(mask.sum()) == k
    assert_bitwise_equal(got, want, what="indices")


def materialised(tensors: list[torch.Tensor], bases: list[torch.Tensor | None]) -> list[torch.Tensor]:
    """The differences the fused path must rank as: ``fl32(f32(x) − f32(base))``, or x."""
    return [x if b is None else x.float() - b.float() for x, b in zip(tensors, bases, strict=True)]


def difference_problem(dtype: torch.dtype, seed: int) -> tuple[list[torch.Tensor], list[torch.Tensor | None]]:
    """θ1 / θ0 pairs whose differences tie often and round in the subtraction, a tensor with no
    base, ragged and empty shapes."""
    gen = torch.Generator().manual_seed(seed)
    theta0 = [torch.randint(-6, 7, s, generator=gen).to(dtype) / 4 + 300 for s in ((9, 5), (0,), (17,), (4, 3))]
    steps = [torch.randint(-3, 4, x.shape, generator=gen).to(dtype) / 8 for x in theta0]
    theta1 = [(x.float() + d.float() * (1 + 2.0**-20)).to(dtype) for x, d in zip(theta0, steps, strict=True)]
    bases: list[torch.Tensor | None] = [*theta0[:3], None]
    return theta1, bases


@pytest.mark.parametrize("backend", cpu_backends("topk"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_base_selects_as_the_materialised_differences(backend, dtype):
    theta1, bases = difference_problem(dtype, seed=3)
    diffs = materialised(theta1, bases)
    total = sum(x.numel() for x in theta1)
    for k in sorted({0, 1, total // 4, total // 2, total - 1, total}):
        got = topk_mask(theta1, k, base=bases, output="indices", backend=backend)
        want = reference_selection(diffs, k)
        for pos, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_bitwise_equal(g.cpu(), w, what=f"k={k} tensor {pos}")


@pytest.mark.parametrize("backend", cpu_backends("topk"))
def test_base_difference_rounds_in_fp32(backend):
    """1 + 2^-23 − 2^-25 is not an fp32 value: the difference rounds to 1 + 2^-23 (ties to
    even), so it ties with the exact 1 + 2^-23 of the next entry, which wins by position only
    when it comes first."""
    x = torch.tensor([1.0 + 2.0**-23, 1.0 + 2.0**-23, 1.0], dtype=torch.float32)
    b = torch.tensor([0.0, 2.0**-25, 0.0], dtype=torch.float32)
    assert float(x[1] - b[1]) == 1.0 + 2.0**-23
    got = topk_mask([x], 1, base=[b], output="indices", backend=backend)
    assert got[0].tolist() == [0]
    got = topk_mask([x[1:], x[:1]], 1, base=[b[1:], b[:1]], output="indices", backend=backend)
    assert [g.tolist() for g in got] == [[0], []]


@pytest.mark.parametrize("backend", cpu_backends("topk"))
def test_infinite_differences_rank_above_every_finite_one(backend):
    """inf − finite and finite − inf are infinite scores of either sign (fp32 and bf16, with a
    tensor without a base between them): they rank first, then the finite differences."""
    inf = float("inf")
    theta1 = [torch.tensor([1.0, inf, 3.0, -2.0, 0.0]), torch.tensor([7.0, -0.5]),
              torch.tensor([-inf, 0.5, 2.0, 1.0], dtype=torch.bfloat16)]
    bases = [torch.tensor([0.0, 5.0, -inf, 1.0, inf]), None,
             torch.tensor([0.0, 0.0, inf, 1.5], dtype=torch.bfloat16)]
    diffs = materialised(theta1, bases)
    assert sum(int(torch.isinf(d).sum()) for d in diffs) == 5
    for k in (1, 4, 5, 6, 9, 11):
        got = topk_mask(theta1, k, base=bases, output="indices", backend=backend)
        for pos, (g, w) in enumerate(zip(got, reference_selection(diffs, k), strict=True)):
            assert_bitwise_equal(g.cpu(), w, what=f"k={k} tensor {pos}")


@pytest.mark.parametrize("backend", cpu_backends("topk"))
def test_base_masks_hold_exactly_the_selected_indices(backend):
    theta1, bases = difference_problem(torch.float32, seed=8)
    indices = topk_mask(theta1, 20, base=bases, output="indices", backend=backend)
    masks = topk_mask(theta1, 20, base=bases, backend=backend)
    for t, (mask, idx, x) in enumerate(zip(masks, indices, theta1, strict=True)):
        assert mask.shape == x.shape and mask.dtype == torch.bool, f"mask {t}"
        assert mask.reshape(-1).nonzero().flatten().tolist() == idx.tolist(), f"mask {t}"


@pytest.mark.parametrize("backend", cpu_backends("topk"))
def test_nan_in_a_difference_names_the_tensor_and_its_base(backend):
    inf = float("inf")
    theta1 = [torch.ones(3), torch.tensor([inf, 2.0, -inf, 1.0])]
    theta0 = [torch.zeros(3), torch.tensor([inf, 0.0, 1.0, -inf])]  # inf - inf is NaN; -inf - 1 is not
    with pytest.raises(ValueError, match=r"tensor 1 \(shape \(4,\)\) minus its base contains 1 NaN"):
        topk_mask(theta1, 2, base=theta0, backend=backend)


def test_hand_computed_mask():
    x = torch.tensor([[1.0, -5.0], [3.0, 0.0]])
    y = torch.tensor([-4.0, 2.0, 5.0])
    mx, my = topk_mask([x, y], 3, backend="torch")
    assert mx.tolist() == [[False, True], [False, False]]
    assert my.tolist() == [True, False, True]
    assert mx.dtype == torch.bool and mx.shape == x.shape


def test_does_not_return_more_than_k_on_ties():
    t = [torch.ones(10), torch.ones(6)]
    got = topk_mask(t, 7, output="indices")
    assert got[0].tolist() == list(range(7)) and got[1].numel() == 0


def test_non_contiguous_input_uses_row_major_indices():
    base = torch.arange(12, dtype=torch.float32).view(3, 4)
    t = base.T  # not contiguous; row-major index of t[3, 2] is 3*3 + 2 = 11
    got = topk_mask([t], 1, output="indices")
    assert got[0].tolist() == [11]


@pytest.mark.parametrize(
    ("tensors", "k", "error", "match"),
    [
        ([], 0, ValueError, "empty"),
        ([torch.ones(3)], -1, ValueError, "out of range"),
        ([torch.ones(3)], 4, ValueError, "out of range"),
        ([torch.ones(3)], 1.5, TypeError, "must be an int"),
        ([torch.ones(3), torch.arange(3)], 1, TypeError, "tensor 1 has dtype torch.int64"),
        ([torch.ones(3), torch.tensor([1.0, float("nan")])], 1, ValueError, "tensor 1 .* NaN"),
        ([torch.ones(3, dtype=torch.float64)], 1, TypeError, "float64"),
    ],
)
def test_bad_input(tensors, k, error, match):
    with pytest.raises(error, match=match):
        topk_mask(tensors, k)


@pytest.mark.parametrize(
    ("base", "error", "match"),
    [
        (torch.ones(3), TypeError, "base must be a list"),
        ([torch.ones(3)], ValueError, "base has 1 items for 2 tensors"),
        ([torch.ones(3), "θ0"], TypeError, "base 1 is str"),
        ([torch.ones(4), None], ValueError, r"base 0 has shape \(4,\), its tensor \(3,\)"),
        ([None, torch.ones(2, 2, dtype=torch.float16)], TypeError, "base 1 has dtype torch.float16"),
        ([torch.empty(3, device="meta"), None], ValueError, "base 0 is a meta tensor"),
    ],
)
def test_bad_base(base, error, match):
    with pytest.raises(error, match=match):
        topk_mask([torch.ones(3), torch.ones(2, 2)], 1, base=base)


def test_single_tensor_is_rejected_with_a_hint():
    with pytest.raises(TypeError, match="wrap it"):
        topk_mask(torch.ones(3), 1)


def test_bad_options():
    with pytest.raises(ValueError, match="score"):
        topk_mask([torch.ones(2)], 1, score="raw")
    with pytest.raises(ValueError, match="output"):
        topk_mask([torch.ones(2)], 1, output="both")


def test_indices_to_mask_marks_exactly_the_indices_and_refuses_any_outside_the_shape():
    shape = torch.Size([3, 5])
    mask = indices_to_mask(torch.tensor([14, 0, 7]), shape)
    expected = torch.zeros(15, dtype=torch.bool)
    expected[[0, 7, 14]] = True
    assert torch.equal(mask, expected.view(shape))
    assert not indices_to_mask(torch.tensor([], dtype=torch.int64), shape).any()
    for outside in ([-1], [15], [2, 40]):
        with pytest.raises(IndexError, match=r"outside \[0, 15\)"):
            indices_to_mask(torch.tensor(outside), shape)
