"""Native scatter_add_ / scatter_restore_ against an fp32 torch loop, bit for bit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from deftx.ops import native
from tests.helpers import assert_bitwise_equal
from tests.ops.native.flushing import run_flushing_caller

if native.unavailable_reason() is not None:
    pytest.skip(native.unavailable_reason(), allow_module_level=True)

from deftx.ops.native.scatter import scatter_add_, scatter_restore_

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
SHAPE_SETS = {
    "small": [(5,), (33, 17), (0,)],
    "multi_block": [(70_001,), (3, 1), (65_539,)],
    "many_small": [(9,)] * 30,
}
SCALES = (0.7, -1.3, 1e-3)


def reference_scatter_add(dense, indices, values, scales) -> list[torch.Tensor]:
    """Diff after diff: w = cast(f32(w) + (f32(scale) * f32(v))), each op rounded in fp32."""
    out = [w.clone() for w in dense]
    for d, scale in enumerate(scales):
        scale32 = torch.tensor(scale, dtype=torch.float32)
        for t, w in enumerate(out):
            flat = w.view(-1)
            index = indices[d][t]
            product = scale32 * values[d][t].float()
            flat[index] = (flat[index].float() + product).to(w.dtype)
    return out


def random_indices(numel: int, density: float, generator: torch.Generator) -> torch.Tensor:
    """Sorted unique flat indices, each position kept with probability ``density``."""
    keep = torch.rand(numel, generator=generator) < density
    return torch.from_numpy(np.flatnonzero(keep.numpy()))


def make_case(shapes, dense_dtype, value_dtype, n_diffs: int, density: float, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    dense = [torch.randn(shape, generator=generator).to(dense_dtype) for shape in shapes]
    indices = [[random_indices(w.numel(), density, generator) for w in dense] for _ in range(n_diffs)]
    values = [[torch.randn(len(index), generator=generator).to(value_dtype) for index in diff] for diff in indices]
    return dense, indices, values, list(SCALES[:n_diffs])


def assert_all_bitwise_equal(actual, expected, what: str) -> None:
    assert len(actual) == len(expected)
    for t, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert_bitwise_equal(a, e, what=f"{what}[{t}]")


@pytest.mark.parametrize("density", [0.0, 0.1, 1.0])
@pytest.mark.parametrize("n_diffs", [1, 3])
@pytest.mark.parametrize("value_dtype", DTYPES.values(), ids=[f"v{n}" for n in DTYPES])
@pytest.mark.parametrize("dense_dtype", DTYPES.values(), ids=[f"w{n}" for n in DTYPES])
@pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
def test_add_save_restore_match_reference(shapes, dense_dtype, value_dtype, n_diffs, density):
    dense, indices, values, scales = make_case(shapes, dense_dtype, value_dtype, n_diffs, density)
    original = [w.clone() for w in dense]
    expected = reference_scatter_add(dense, indices, values, scales)

    saved = scatter_add_(dense, indices, values, scales, True)
    assert_all_bitwise_equal(dense, expected, "dense after add")
    assert saved is not None and len(saved) == n_diffs
    for d in range(n_diffs):
        gathered = [w.view(-1)[index] for w, index in zip(original, indices[d], strict=True)]
        assert_all_bitwise_equal(saved[d], gathered, f"saved[{d}]")

    scatter_restore_(dense, indices, saved)
    assert_all_bitwise_equal(dense, original, "dense after restore")


@pytest.mark.parametrize("dense_dtype", DTYPES.values(), ids=DTYPES.keys())
def test_diffs_together_equal_diffs_one_by_one(dense_dtype):
    dense, indices, values, scales = make_case(SHAPE_SETS["multi_block"], dense_dtype, torch.float32, 3, 0.3, seed=1)
    together = [w.clone() for w in dense]
    assert scatter_add_(together, indices, values, scales, False) is None
    for d, scale in enumerate(scales):
        scatter_add_(dense, [indices[d]], [values[d]], [scale], False)
    assert_all_bitwise_equal(together, dense, "dense")


def all_finite_16bit(dtype: torch.dtype) -> torch.Tensor:
    """Every non-NaN bit pattern of a 16-bit float dtype."""
    patterns = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    return patterns[~patterns.float().isnan()]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_every_16bit_pattern_round_trips(dtype):
    # w + 0 * 0 widens every pattern to fp32 and narrows it back (-0.0 + 0.0 gives +0.0).
    dense = all_finite_16bit(dtype)
    index = torch.arange(dense.numel())
    zeros = torch.zeros(dense.numel())
    expected = reference_scatter_add([dense], [[index]], [[zeros]], [1.0])
    scatter_add_([dense], [[index]], [[zeros]], [1.0], False)
    assert_bitwise_equal(dense, expected[0], what="round trip")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_every_16bit_value_widens_exactly(dtype):
    values = all_finite_16bit(dtype)
    dense = torch.zeros(values.numel())
    index = torch.arange(values.numel())
    scatter_add_([dense], [[index]], [[values]], [1.0], False)
    assert_bitwise_equal(dense, values.float() + 0.0, what="widened")


def rounding_boundary_floats(n: int, exponents: range, generator: torch.Generator) -> torch.Tensor:
    """fp32 values whose low bits are exactly "1 then zeros" (ties) or random (near ties)."""
    sign = torch.randint(0, 2, (n,), generator=generator, dtype=torch.int64) << 31
    exponent = torch.randint(exponents.start, exponents.stop, (n,), generator=generator) << 23
    mantissa = torch.randint(0, 2**23, (n,), generator=generator, dtype=torch.int64)
    tie_bit = torch.randint(0, 24, (n,), generator=generator, dtype=torch.int64)
    ties = (mantissa & ~((1 << (tie_bit + 1)) - 1)) | (1 << tie_bit)
    mantissa = torch.where(torch.arange(n) % 2 == 0, ties & (2**23 - 1), mantissa)
    bits = sign | exponent | mantissa
    return bits.to(torch.int64).where(bits < 2**31, bits - 2**32).to(torch.int32).view(torch.float32)


@pytest.mark.parametrize(
    ("dtype", "exponents"),
    [(torch.float16, range(95, 146)), (torch.bfloat16, range(0, 255))],
    ids=["fp16", "bf16"],
)
def test_narrowing_rounds_to_nearest_even(dtype, exponents):
    # Covers ties, subnormal results, overflow to inf and fp32 subnormals.
    generator = torch.Generator().manual_seed(2)
    values = rounding_boundary_floats(200_000, exponents, generator)
    dense = torch.zeros(values.numel(), dtype=dtype)
    index = torch.arange(values.numel())
    expected = reference_scatter_add([dense], [[index]], [[values]], [1.0])
    scatter_add_([dense], [[index]], [[values]], [1.0], False)
    assert_bitwise_equal(dense, expected[0], what=f"{dtype} cast")


def test_infinite_dense_entries_stay_infinite():
    dense = torch.tensor([float("inf"), float("-inf"), 65504.0], dtype=torch.float16)
    index = torch.tensor([0, 1, 2])
    values = torch.tensor([-1e30, 1e30, 16.0])
    scatter_add_([dense], [[index]], [[values]], [1.0], False)
    assert dense.tolist() == [float("inf"), float("-inf"), float("inf")]


@pytest.mark.parametrize("index", [torch.tensor([0, 5]), torch.tensor([-1, 2])], ids=["past_end", "negative"])
def test_out_of_range_index_is_rejected_before_writing(index):
    dense = torch.zeros(5)
    with pytest.raises(ValueError, match="out of range"):
        scatter_add_([dense], [[index]], [[torch.ones(2)]], [1.0], True)
    assert torch.equal(dense, torch.zeros(5))


def test_unsorted_indices_across_blocks_are_reported():
    dense = torch.zeros(150_000)
    index = torch.tensor([100_000, 5])
    with pytest.raises(ValueError, match="not sorted"):
        scatter_add_([dense], [[index]], [[torch.ones(2)]], [1.0], False)


def test_mismatched_list_lengths_are_rejected():
    dense = [torch.zeros(4), torch.zeros(3)]
    with pytest.raises(ValueError, match="one per dense tensor"):
        scatter_add_(dense, [[torch.tensor([1])]], [[torch.ones(1)]], [1.0], False)
    with pytest.raises(ValueError, match="entries"):
        scatter_add_(dense[:1], [[torch.tensor([1])]], [[torch.ones(2)]], [1.0], False)
    with pytest.raises(ValueError, match="scales"):
        scatter_add_(dense[:1], [[torch.tensor([1])]], [[torch.ones(1)]], [1.0, 2.0], False)


def test_unsupported_dtypes_are_rejected():
    with pytest.raises(TypeError, match="float64"):
        scatter_add_([torch.zeros(3)], [[torch.tensor([1])]], [[torch.ones(1).double()]], [1.0], False)
    with pytest.raises(ValueError, match="int64"):
        scatter_add_([torch.zeros(3)], [[torch.tensor([1], dtype=torch.int32)]], [[torch.ones(1)]], [1.0], False)


def test_overlapping_dense_tensors_are_rejected():
    storage = torch.zeros(10)
    with pytest.raises(ValueError, match="overlap"):
        scatter_add_(
            [storage[:6], storage[4:]],
            [[torch.tensor([1]), torch.tensor([0])]],
            [[torch.ones(1), torch.ones(1)]],
            [1.0],
            False,
        )


def test_restore_rejects_saved_of_another_dtype():
    dense = [torch.zeros(3, dtype=torch.bfloat16)]
    with pytest.raises(ValueError, match="dense dtype"):
        scatter_restore_(dense, [[torch.tensor([1])]], [[torch.ones(1)]])


# Subnormal dense entries and values (fp32 and bf16, 16 + 4 blocks of 2^16): a first call starts
# the OpenMP workers, then the calling thread flushes subnormals and the diffs are added again.
SUBNORMAL_SIZES = (1 << 20, 1 << 18)
FLUSHING_SCATTER = """
import sys, torch
from deftx.ops.native.scatter import scatter_add_
from tests.ops.native.test_scatter import subnormal_case
dense, indices, values = subnormal_case()
scatter_add_([w.clone() for w in dense], indices, values, [1.0], False)
if not torch.set_flush_denormal(True):
    sys.exit(77)
scatter_add_(dense, indices, values, [1.0], False)
torch.save(dense, sys.argv[1])
"""


def subnormal_case() -> tuple[list[torch.Tensor], list[list[torch.Tensor]], list[list[torch.Tensor]]]:
    """Dense fp32 and bf16 tensors of subnormals in [tiny / 4, tiny / 2], every entry of one diff
    of fp32 subnormals there too: the exact sums are subnormals, never zero; flushed ones are."""
    generator = torch.Generator().manual_seed(0)
    quarter = torch.finfo(torch.float32).tiny / 4

    def subnormals(n: int) -> torch.Tensor:
        return (torch.rand(n, generator=generator) + 1.0) * quarter

    dense = [subnormals(n).to(dtype) for n, dtype in zip(SUBNORMAL_SIZES, (torch.float32, torch.bfloat16), strict=True)]
    values = [subnormals(n) for n in SUBNORMAL_SIZES]
    return dense, [[torch.arange(n) for n in SUBNORMAL_SIZES]], [values]


def test_subnormals_are_added_whatever_the_callers_denormal_mode(tmp_path):
    """The sums keep their subnormals on every thread, also when the calling thread flushes
    them (``torch.set_flush_denormal(True)`` sets it on that thread only): the result is the
    documented fp32 sum, whichever thread adds which block."""
    dense, indices, values = subnormal_case()
    expected = reference_scatter_add(dense, indices, values, [1.0])
    assert all(bool((w != 0).all()) for w in expected)  # a flushed sum would be a zero
    run_flushing_caller(FLUSHING_SCATTER, str(tmp_path / "dense.pt"))
    got = torch.load(tmp_path / "dense.pt")
    assert_all_bitwise_equal(got, expected, "dense added by a flushing caller")


# fp32-subnormal scales, and ties and boundaries of their rounding (2.5 and 0.5 units of 2^-149
# round to even, 2^-126 (1 - 2^-30) up to the smallest normal), each added once to a zero.
SUBNORMAL_SCALES = (-(2.0**-140), 3 * 2.0**-149, 2.5 * 2.0**-149, 2.0**-150, -(2.0**-150) * (1 + 2.0**-40),
                    2.0**-126 * (1 - 2.0**-30), 1.1754942e-38)
FLUSHING_SCALES = """
import json, sys, torch
from deftx.ops.native.scatter import scatter_add_
from tests.ops.native.test_scatter import SUBNORMAL_SCALES
scatter_add_([torch.zeros(1)], [[torch.zeros(1, dtype=torch.int64)]], [[torch.ones(1)]], [1.0], False)
if not torch.set_flush_denormal(True):
    sys.exit(77)
sums = []
for scale in SUBNORMAL_SCALES:
    dense = torch.zeros(1)
    scatter_add_([dense], [[torch.zeros(1, dtype=torch.int64)]], [[torch.ones(1)]], [scale], False)
    sums.append(dense.view(torch.int32).item())
print(json.dumps(sums))
"""


def test_subnormal_scales_reach_the_library_whatever_the_callers_denormal_mode():
    """The Python float scales are rounded to fp32 on the calling thread: with flush-to-zero set
    there, a subnormal scale (-2^-140) became -0.0 before the library (which keeps subnormals)
    saw it, and the diff was not added at all."""
    got = json.loads(run_flushing_caller(FLUSHING_SCALES).splitlines()[-1])
    expected = [torch.tensor(scale, dtype=torch.float32).view(torch.int32).item() for scale in SUBNORMAL_SCALES]
    assert got == expected, [f"{s!r}: {g:#x} != {e:#x}" for s, g, e in zip(SUBNORMAL_SCALES, got, expected, strict=True)
                             if g != e]


def misaligned(values: torch.Tensor) -> torch.Tensor:
    """``values`` copied into a buffer one byte past an aligned address (as torch.frombuffer or
    torch.from_numpy can give)."""
    raw = torch.zeros(values.numel() * values.element_size() + 1, dtype=torch.uint8)
    view = np.frombuffer(raw.numpy(), dtype=np.uint8)[1:].view(np.dtype(str(values.dtype).split(".")[1]))
    out = torch.from_numpy(view)
    out.copy_(values)
    assert out.data_ptr() % values.element_size() == 1 % values.element_size() != 0
    return out


def test_misaligned_tensors_are_copied_when_read_and_refused_when_written():
    """The library loaded misaligned elements through typed pointers (undefined behaviour: UBSan
    reported 'load of misaligned address'); read operands are now copied, written ones refused."""
    generator = torch.Generator().manual_seed(0)
    dense = torch.randn(70_001, generator=generator)
    index = torch.arange(0, 70_001, 3)
    values = torch.randn(index.numel(), generator=generator).half()
    expected = reference_scatter_add([dense], [[index]], [[values]], [0.5])
    scatter_add_([dense], [[misaligned(index)]], [[misaligned(values)]], [0.5], False)
    assert_bitwise_equal(dense, expected[0])
    with pytest.raises(ValueError, match="not aligned"):
        scatter_add_([misaligned(dense)], [[index]], [[values]], [0.5], False)
