"""scatter_add_ / scatter_restore_: every CPU backend, bit-exact against an explicit loop."""

from __future__ import annotations

import pytest
import torch

from deftx.ops import scatter_add_, scatter_restore_
from tests.helpers import assert_bitwise_equal
from tests.ops.conftest import cpu_backends

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def loop_reference(dense, indices, values, scales):
    """Entry by entry: f32 add of an f32-rounded product, one rounding to the dense dtype."""
    out = [w.clone() for w in dense]
    for row_idx, row_val, scale in zip(indices, values, scales, strict=True):
        s = torch.tensor(scale, dtype=torch.float32)
        for w, idx, val in zip(out, row_idx, row_val, strict=True):
            flat = w.view(-1)
            for i, v in zip(idx.tolist(), val, strict=True):
                product = (s * v.float()).float()
                flat[i] = (flat[i].float() + product).to(w.dtype)
    return out


def random_diff(shapes, density, gen, dtype):
    row_idx, row_val = [], []
    for shape in shapes:
        numel = torch.Size(shape).numel()
        keep = torch.rand(numel, generator=gen) < density
        idx = keep.nonzero().flatten()
        row_idx.append(idx)
        row_val.append(torch.randn(idx.numel(), generator=gen).to(dtype))
    return row_idx, row_val


@pytest.mark.parametrize("backend", cpu_backends("scatter"))
@pytest.mark.parametrize("dense_dtype", DTYPES)
@pytest.mark.parametrize("value_dtype", [torch.float32, torch.bfloat16])
def test_two_overlapping_diffs_bit_exact_and_restore(backend, dense_dtype, value_dtype):
    gen = torch.Generator().manual_seed(7)
    shapes = [(5, 7), (0,), (13,), (3, 3, 3)]
    dense = [torch.randn(s, generator=gen).to(dense_dtype) for s in shapes]
    original = [w.clone() for w in dense]
    diff_a = random_diff(shapes, 0.5, gen, value_dtype)
    diff_b = random_diff(shapes, 0.5, gen, value_dtype)
    indices, values, scales = [diff_a[0], diff_b[0]], [diff_a[1], diff_b[1]], [1.0, 0.3]
    want = loop_reference(dense, indices, values, scales)
    saved = scatter_add_(dense, indices, values, scales, save=True, backend=backend)
    for t, (w, e) in enumerate(zip(dense, want, strict=True)):
        assert_bitwise_equal(w, e, what=f"tensor {t}")
    for d in range(2):
        for t in range(len(shapes)):
            assert_bitwise_equal(saved[d][t], original[t].view(-1)[indices[d][t]], what=f"saved {d},{t}")
    scatter_restore_(dense, indices, saved, backend=backend)
    for t, (w, o) in enumerate(zip(dense, original, strict=True)):
        assert_bitwise_equal(w, o, what=f"restored tensor {t}")


@pytest.mark.parametrize("backend", cpu_backends("scatter"))
def test_together_equals_one_after_another(backend):
    gen = torch.Generator().manual_seed(3)
    shapes = [(17,), (4, 9)]
    dense = [torch.randn(s, generator=gen).bfloat16() for s in shapes]
    a = random_diff(shapes, 0.6, gen, torch.float32)
    b = random_diff(shapes, 0.6, gen, torch.float32)
    sequential = [w.clone() for w in dense]
    scatter_add_(sequential, [a[0]], [a[1]], [0.7], backend=backend)
    scatter_add_(sequential, [b[0]], [b[1]], [-1.3], backend=backend)
    scatter_add_(dense, [a[0], b[0]], [a[1], b[1]], [0.7, -1.3], backend=backend)
    for t in range(len(shapes)):
        assert_bitwise_equal(dense[t], sequential[t], what=f"tensor {t}")


def test_hand_computed():
    w = torch.tensor([1.0, 2.0, 3.0, 4.0])
    scatter_add_(
        [w],
        [[torch.tensor([0, 3])], [torch.tensor([3])]],
        [[torch.tensor([0.5, 1.0])], [torch.tensor([2.0])]],
        [1.0, 0.5],
    )
    assert w.tolist() == [1.5, 2.0, 3.0, 6.0]


def test_no_diffs_is_a_no_op():
    w = torch.ones(3)
    assert scatter_add_([w], [], [], [], save=True) == []
    assert torch.equal(w, torch.ones(3))


@pytest.mark.parametrize(
    ("idx", "val", "error", "match"),
    [
        (torch.tensor([2, 1]), torch.ones(2), ValueError, "sorted"),
        (torch.tensor([1, 1]), torch.ones(2), ValueError, "unique"),
        (torch.tensor([0, 5]), torch.ones(2), IndexError, "outside"),
        (torch.tensor([-1]), torch.ones(1), IndexError, "outside"),
        (torch.tensor([0, 1], dtype=torch.int32), torch.ones(2), TypeError, "int64"),
        (torch.tensor([0, 1]), torch.ones(3), ValueError, "does not match"),
        (torch.tensor([0, 1]), torch.ones(2, dtype=torch.float64), TypeError, "float64"),
    ],
)
def test_bad_input_leaves_dense_untouched(idx, val, error, match):
    w = torch.arange(5, dtype=torch.float32)
    with pytest.raises(error, match=match):
        scatter_add_([w], [[idx]], [[val]], [1.0])
    assert torch.equal(w, torch.arange(5, dtype=torch.float32))


@pytest.mark.parametrize("backend", cpu_backends("scatter"))
@pytest.mark.parametrize("dense_dtype", DTYPES)
def test_strided_indices_values_and_saved_read_as_their_contiguous_copies(backend, dense_dtype):
    """Views with a stride of 2 (every other entry of a buffer) are read by value on every backend."""
    gen = torch.Generator().manual_seed(3)
    dense = [torch.randn(6, 5, generator=gen).to(dense_dtype), torch.randn(9, generator=gen).to(dense_dtype)]
    original = [w.clone() for w in dense]
    indices = [torch.tensor([1, 99, 4, 99, 17, 99, 29, 99])[::2], torch.tensor([0, -5, 8, -5])[::2]]
    values = [torch.randn(8, generator=gen)[::2], torch.randn(4, generator=gen).bfloat16()[::2]]
    want = loop_reference(dense, [indices], [values], [0.5])
    saved = scatter_add_(dense, [indices], [values], [0.5], save=True, backend=backend)
    for t, (w, e) in enumerate(zip(dense, want, strict=True)):
        assert_bitwise_equal(w, e, what=f"tensor {t}")
    strided_saved = [[torch.stack([s, torch.full_like(s, 7.0)], dim=1)[:, 0] for s in saved[0]]]
    assert not strided_saved[0][0].is_contiguous()
    scatter_restore_(dense, [indices], strided_saved, backend=backend)
    for t, (w, o) in enumerate(zip(dense, original, strict=True)):
        assert_bitwise_equal(w, o, what=f"restored tensor {t}")


@pytest.mark.parametrize("scale", [float("nan"), float("inf"), -float("inf"), 3.5e38, -1e39])
def test_a_scale_not_finite_in_fp32_is_refused_before_any_write(scale):
    w = torch.arange(4, dtype=torch.float32)
    with pytest.raises(ValueError, match="scales must be finite in fp32"):
        scatter_add_([w], [[torch.tensor([1])]], [[torch.ones(1)]], [scale])
    assert torch.equal(w, torch.arange(4, dtype=torch.float32))
    scatter_add_([w], [[torch.tensor([1])]], [[torch.ones(1)]], [3.4e38])  # the largest fp32 is still a scale
    assert w[1].item() == torch.tensor(3.4e38).item()


def test_a_diff_not_wrapped_in_its_own_list_is_named():
    """``[idx]`` for ``[[idx]]``: the message says how the lists nest, not a shape mismatch."""
    w = torch.zeros(4)
    with pytest.raises(TypeError, match=r"indices must be one list of tensors per diff .*\[\[t0, t1, \.\.\.\]\]"):
        scatter_add_([w], [torch.tensor([1])], [torch.ones(1)])
    with pytest.raises(TypeError, match=r"values must be one list of tensors per diff"):
        scatter_add_([w], [[torch.tensor([1])]], [torch.ones(1)])


def test_non_contiguous_dense_is_rejected():
    w = torch.zeros(4, 4).T
    with pytest.raises(ValueError, match="contiguous"):
        scatter_add_([w], [[torch.tensor([0])]], [[torch.ones(1)]], [1.0])


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # numpy, in Triton's interpreter
@pytest.mark.parametrize("backend", cpu_backends("scatter"))
def test_a_finite_scale_can_still_overflow_to_inf_and_restore_undoes_it(backend):
    """Only the scales are checked: 60000 + 1.0 * 10000 = 70000 is past fp16's 65504 and rounds
    to +Inf, 3.4e38 * -2.0 is past fp32's range and writes -Inf, in every dense dtype; the other
    entries and the restore are exact."""
    dense = [torch.tensor([60000.0, 1.0], dtype=torch.float16), torch.tensor([1.0, 2.0], dtype=torch.bfloat16),
             torch.tensor([1.0, 2.0])]
    original = [w.clone() for w in dense]
    indices = [[torch.tensor([0, 1]), torch.tensor([1]), torch.tensor([0])],
               [torch.empty(0, dtype=torch.int64), torch.tensor([0]), torch.tensor([1])]]
    values = [[torch.tensor([10000.0, 1.0]), torch.tensor([0.5]), torch.tensor([0.25])],
              [torch.empty(0), torch.tensor([-2.0]), torch.tensor([-2.0])]]
    saved = scatter_add_(dense, indices, values, [1.0, 3.4e38], save=True, backend=backend)
    inf = float("inf")
    assert dense[0].tolist() == [inf, 2.0]
    assert dense[1].tolist() == [-inf, 2.5]
    assert dense[2].tolist() == [1.25, -inf]
    scatter_restore_(dense, indices, saved, backend=backend)
    for t, (w, o) in enumerate(zip(dense, original, strict=True)):
        assert_bitwise_equal(w, o, what=f"restored tensor {t}")
