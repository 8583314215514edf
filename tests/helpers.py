"""Comparison helpers shared by the tests: tolerances derived from dtype and reduction length."""

from __future__ import annotations

import math
from pathlib import Path

import torch

UNIT_ROUNDOFF = {
    torch.float32: 2.0**-24,
    torch.bfloat16: 2.0**-8,
    torch.float16: 2.0**-11,
    torch.float64: 2.0**-53,
}


def tolerance(dtype: torch.dtype, reduction_length: int = 1, *, factor: float = 4.0) -> float:
    """Relative error bound for a result of ``dtype`` that summed ``reduction_length`` terms.

    Uses the probabilistic bound ``factor * sqrt(n) * u`` (Higham & Mary), with ``u`` the
    unit roundoff of ``dtype`` and ``n = max(reduction_length, 1)``.
    """
    return factor * math.sqrt(max(reduction_length, 1)) * UNIT_ROUNDOFF[dtype]


def assert_close(
    actual: torch.Tensor,
    expected: torch.Tensor,
    *,
    rtol: float,
    atol: float = 0.0,
    what: str = "result",
) -> None:
    """Assert ``|actual - expected| <= atol + rtol * |expected|`` elementwise.

    On failure the message gives the max absolute error, the number of mismatches and
    the first mismatching flat index.
    """
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    a = actual.detach().double().cpu()
    e = expected.detach().double().cpu()
    err = (a - e).abs()
    bad = err > atol + rtol * e.abs()
    if bool(bad.any()):
        first = int(bad.flatten().nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} entries mismatch "
            f"(max abs error {float(err.max()):.3e}, rtol {rtol:.1e}, atol {atol:.1e}; "
            f"first at flat index {first}: {float(a.flatten()[first])!r} vs {float(e.flatten()[first])!r})"
        )


def assert_bitwise_equal(actual: torch.Tensor, expected: torch.Tensor, *, what: str = "result") -> None:
    """Assert two tensors are identical bit for bit (dtype, shape and every bit pattern)."""
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if actual.dtype.is_floating_point:
        view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[actual.element_size()]
        a = actual.detach().cpu().contiguous().view(view)
        e = expected.detach().cpu().contiguous().view(view)
    else:
        a, e = actual.detach().cpu(), expected.detach().cpu()
    bad = a != e
    if bool(bad.any()):
        first = int(bad.flatten().nonzero()[0])
        raise AssertionError(
            f"{what}: {int(bad.sum())} of {bad.numel()} entries differ bitwise; first at flat index {first}"
        )


def assert_same_entries(actual, expected) -> None:
    """Assert two SparseDiffs hold the same parameters, and their indices, values and dense tensors bit for bit."""
    assert actual.names == expected.names and actual.params == expected.params
    for name in expected.indices:
        assert_bitwise_equal(actual.indices[name], expected.indices[name], what=f"indices {name}")
        assert_bitwise_equal(actual.values[name], expected.values[name], what=f"values {name}")
    assert set(actual.dense) == set(expected.dense)
    for name in expected.dense:
        assert_bitwise_equal(actual.dense[name], expected.dense[name], what=f"dense {name}")


def nusax_plan_root(tmp_path) -> Path:
    """A NusaX-shaped data root of header-only CSVs for plans: indonesian has train and test, madurese test
    only, buginese no split (not evaluated)."""
    for language, splits in {"indonesian": ("train", "test"), "madurese": ("test",), "buginese": ()}.items():
        folder = tmp_path / "data" / "nusax" / "datasets" / "sentiment" / language
        folder.mkdir(parents=True)
        for split in splits:
            (folder / f"{split}.csv").write_text("id,text,label\n")
    return tmp_path / "data"
