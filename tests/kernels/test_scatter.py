"""Triton sparse scatter-add / restore (kernels/scatter.py), interpreted on CPU and compiled on
CUDA, bit for bit against an explicit sequential fp32 reference."""

from __future__ import annotations

import os
import re
import subprocess
import tempfile

import pytest
import torch

from deftx.kernels import kernel_module
from tests.helpers import assert_bitwise_equal
from tests.kernels.conftest import LaunchRecorder
from tests.kernels.devices import kernels_for, to_device
from tests.ops.test_scatter import loop_reference

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SHAPES = ((37,), (0,), (5, 7, 3), (300,), (1,))


@pytest.fixture
def scatter(device):
    return kernels_for("scatter", device)


@pytest.fixture
def small_units(scatter, monkeypatch):
    """Units of 16 entries walked in chunks of 8, 4 units per search program, restore chunks
    of 8: small tensors then span many units, loop steps and programs."""
    monkeypatch.setattr(scatter, "UNIT_ENTRIES", 16)
    monkeypatch.setattr(scatter, "CHUNK", 8)
    monkeypatch.setattr(scatter, "SEARCH_BLOCK", 4)
    monkeypatch.setattr(scatter, "RESTORE_CHUNK", 8)
    return scatter


def random_diff(dense, densities, gen, value_dtype=torch.float32):
    """One diff: per tensor a sorted random subset of about density * numel positions."""
    indices, values = [], []
    for w, density in zip(dense, densities, strict=True):
        count = round(density * w.numel())
        idx = torch.randperm(w.numel(), generator=gen)[:count].sort().values
        indices.append(idx)
        values.append(torch.randn(count, generator=gen).to(value_dtype))
    return indices, values


def check_apply_and_restore(module, dense, indices, values, scales, device):
    """Apply (saving) then restore on ``device``; CPU inputs, CPU reference."""
    original = [w.clone() for w in dense]
    work = [w.to(device, copy=True) for w in dense]
    indices_on = to_device(indices, device)
    saved = module.scatter_add_(work, indices_on, to_device(values, device), scales, True)
    for t, (got, want) in enumerate(zip(work, loop_reference(original, indices, values, scales),
                                        strict=True)):
        assert_bitwise_equal(got, want, what=f"dense tensor {t} after apply")
    for d, row in enumerate(indices):
        for t, idx in enumerate(row):
            assert_bitwise_equal(saved[d][t], original[t].view(-1)[idx],
                                 what=f"saved[{d}][{t}]")
    module.scatter_restore_(work, indices_on, saved)
    for t, (got, want) in enumerate(zip(work, original, strict=True)):
        assert_bitwise_equal(got, want, what=f"dense tensor {t} after restore")


@pytest.mark.parametrize("dense_dtype", DTYPES)
@pytest.mark.parametrize("value_dtype", DTYPES)
def test_single_diff(scatter, dense_dtype, value_dtype, device):
    gen = torch.Generator().manual_seed(1)
    dense = [torch.randn(shape, generator=gen).to(dense_dtype) for shape in SHAPES]
    indices, values = random_diff(dense, (0.5, 0.0, 1.0, 0.1, 1.0), gen, value_dtype)
    check_apply_and_restore(scatter, dense, [indices], [values], [-0.3721], device)


@pytest.mark.parametrize("scale", [1.0, 3e-3, -7.25])
def test_single_diff_many_units(small_units, scale, device):
    gen = torch.Generator().manual_seed(2)
    dense = [torch.randn(shape, generator=gen).to(dtype)
             for shape, dtype in zip(SHAPES, (torch.float32, torch.bfloat16, torch.float16,
                                              torch.bfloat16, torch.float32), strict=True)]
    indices, values = random_diff(dense, (0.6, 0.0, 0.9, 0.3, 1.0), gen)
    check_apply_and_restore(small_units, dense, [indices], [values], [scale], device)


def test_overlapping_diffs_apply_in_order(small_units, device):
    """Three diffs sharing many positions, on mixed dtypes, with mixed value dtypes."""
    gen = torch.Generator().manual_seed(3)
    dense = [torch.randn(shape, generator=gen).to(dtype)
             for shape, dtype in zip(SHAPES, (torch.bfloat16, torch.float32, torch.float16,
                                              torch.float32, torch.bfloat16), strict=True)]
    diffs = [random_diff(dense, densities, gen, value_dtype)
             for densities, value_dtype in (((0.7, 0.0, 0.5, 0.4, 1.0), torch.float32),
                                            ((0.7, 0.0, 0.9, 0.05, 1.0), torch.bfloat16),
                                            ((0.2, 0.0, 0.5, 0.8, 0.0), torch.float16))]
    indices = [d[0] for d in diffs]
    values = [d[1] for d in diffs]
    check_apply_and_restore(small_units, dense, indices, values, [0.5, -1.3, 2.0], device)


def test_overlapping_diffs_default_units(scatter, device):
    gen = torch.Generator().manual_seed(4)
    dense = [torch.randn(shape, generator=gen) for shape in SHAPES]
    diffs = [random_diff(dense, (1.0, 0.0, 0.3, 0.5, 1.0), gen) for _ in range(2)]
    check_apply_and_restore(scatter, dense, [d[0] for d in diffs], [d[1] for d in diffs],
                            [1.0, 1.0], device)


def test_together_equals_one_after_another(small_units, device):
    gen = torch.Generator().manual_seed(5)
    dense = [torch.randn(200, generator=gen).bfloat16(), torch.randn(9, 11, generator=gen)]
    diffs = [random_diff(dense, (0.5, 0.7), gen) for _ in range(3)]
    dense = [w.to(device) for w in dense]
    diffs = to_device(diffs, device)
    scales = [0.1, -2.0, 0.7]
    together = [w.clone() for w in dense]
    small_units.scatter_add_(together, [d[0] for d in diffs], [d[1] for d in diffs], scales,
                             False)
    sequential = [w.clone() for w in dense]
    for (idx, val), scale in zip(diffs, scales, strict=True):
        assert small_units.scatter_add_(sequential, [idx], [val], [scale], False) is None
    for t, (a, b) in enumerate(zip(together, sequential, strict=True)):
        assert_bitwise_equal(a, b, what=f"tensor {t}")


@pytest.mark.parametrize("dense_dtype", [torch.bfloat16, torch.float16])
def test_rounding_ties_go_to_even(scatter, dense_dtype, device):
    """w + v lands exactly halfway between two representable values: round to the even one."""
    ulp = 2.0 ** (-7 if dense_dtype == torch.bfloat16 else -10)
    w = torch.tensor([1.0, 1.0 + ulp, -1.0, -(1.0 + ulp), 2.0 - ulp / 2], dtype=dense_dtype)
    v = torch.tensor([ulp / 2, ulp / 2, -ulp / 2, -ulp / 2, ulp / 4])
    indices = [[torch.arange(5)]]
    work = [w.to(device, copy=True)]
    scatter.scatter_add_(work, to_device(indices, device), [[v.to(device)]], [1.0], False)
    expected = torch.tensor([1.0, 1.0 + 2 * ulp, -1.0, -(1.0 + 2 * ulp), 2.0],
                            dtype=dense_dtype)
    assert_bitwise_equal(work[0], expected)
    assert_bitwise_equal(work[0], loop_reference([w], indices, [[v]], [1.0])[0])


@pytest.mark.filterwarnings("ignore:overflow encountered in cast:RuntimeWarning")
def test_overflow_to_infinity(scatter, device):
    w = torch.tensor([60000.0, -60000.0, 1.0], dtype=torch.float16, device=device)
    v = torch.tensor([10000.0, -10000.0, 1e30], device=device)
    work = [w.clone()]
    scatter.scatter_add_(work, [[torch.arange(3, device=device)]], [[v]], [1.0], False)
    assert_bitwise_equal(work[0], torch.tensor([float("inf"), float("-inf"), float("inf")],
                                               dtype=torch.float16))


def test_no_diffs_and_empty_diffs(scatter, device):
    dense = [torch.randn(10, device=device), torch.randn(3, device=device).half()]
    before = [w.clone() for w in dense]
    assert scatter.scatter_add_(dense, [], [], [], True) == []
    assert scatter.scatter_add_(dense, [], [], [], False) is None
    empty = [[torch.empty(0, dtype=torch.int64, device=device)] * 2] * 2
    saved = scatter.scatter_add_(dense, empty, [[torch.empty(0, device=device)] * 2] * 2, [1.0, 2.0], True)
    assert [[s.numel() for s in row] for row in saved] == [[0, 0], [0, 0]]
    assert [s.dtype for s in saved[0]] == [torch.float32, torch.float16]
    scatter.scatter_restore_(dense, empty, saved)
    for a, b in zip(dense, before, strict=True):
        assert_bitwise_equal(a, b)


def test_every_launch_is_a_declared_specialization(scatter, monkeypatch, device):
    recorders = {
        "_scatter_add_kernel": LaunchRecorder(scatter._scatter_add_kernel,
                                              ("DENSE", "VALUE", "SAVE", "CHUNK")),
        "_segment_bounds_kernel": LaunchRecorder(scatter._segment_bounds_kernel, ("BLOCK",)),
        "_scatter_restore_kernel": LaunchRecorder(scatter._scatter_restore_kernel, ("DENSE", "CHUNK")),
    }
    compiled = kernel_module("scatter", interpret=False)  # on CUDA, the module patched below
    compiled_kernels = {name: getattr(compiled, name) for name in recorders}
    for name, recorder in recorders.items():
        monkeypatch.setattr(scatter, name, recorder)
    gen = torch.Generator().manual_seed(6)
    for dense_dtype in DTYPES:
        for value_dtype in DTYPES:
            dense = [torch.randn(40, generator=gen).to(dense_dtype)]
            for num_diffs in (1, 2):
                diffs = [random_diff(dense, (0.5,), gen, value_dtype) for _ in range(num_diffs)]
                check_apply_and_restore(scatter, dense, [d[0] for d in diffs],
                                        [d[1] for d in diffs], [0.5] * num_diffs, device)
    for name, recorder in recorders.items():
        kernel = compiled_kernels[name]
        declared = [s.constexprs for s in compiled.SPECIALIZATIONS if s.kernel is kernel]
        assert recorder.launches
        for launch in recorder.launches:
            assert launch in declared, f"{name} launched with undeclared {launch}"


def test_specializations_are_unique_and_atomic_free():
    compiled = kernel_module("scatter", interpret=False)
    names = [spec.name for spec in compiled.SPECIALIZATIONS]
    assert len(names) == len(set(names)) == 10 + 1 + 3
    for spec in compiled.SPECIALIZATIONS:
        assert "no_float_atomics" in spec.promises
        assert set(spec.signature) == set(spec.kernel.arg_names)


def test_compiled_scatter_add_has_no_fma_and_no_float_atomics():
    """The product is rounded before the add even with fp fusion on (Triton's default)."""
    import triton
    from triton.backends.compiler import GPUTarget

    cuobjdump = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin",
                             "cuobjdump")
    if not os.path.exists(cuobjdump):
        pytest.skip("triton ships no cuobjdump here")
    compiled = kernel_module("scatter", interpret=False)
    spec = next(s for s in compiled.SPECIALIZATIONS if s.name == "scatter_add_fp32_values_fp32")
    source = triton.compiler.ASTSource(fn=spec.kernel, signature=spec.signature,
                                       constexprs=spec.constexprs)
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": spec.num_warps, "num_stages": spec.num_stages,
                                     "enable_fp_fusion": True})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(kernel.asm["cubin"])
        cubin.flush()
        sass = subprocess.run([cuobjdump, "-sass", cubin.name], capture_output=True, text=True,
                              check=True).stdout
    assert "FMUL" in sass and "FADD" in sass
    assert "FFMA" not in sass
    assert not re.search(r"\b(ATOM|RED)[A-Z]*\.[A-Z.0-9]*F(16|32|64)", sass)
