"""topk_mask: every CPU backend against an independent reference and hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from deftx.ops import topk_mask
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


def test_single_tensor_is_rejected_with_a_hint():
    with pytest.raises(TypeError, match="wrap it"):
        topk_mask(torch.ones(3), 1)


def test_bad_options():
    with pytest.raises(ValueError, match="score"):
        topk_mask([torch.ones(2)], 1, score="raw")
    with pytest.raises(ValueError, match="output"):
        topk_mask([torch.ones(2)], 1, output="both")
