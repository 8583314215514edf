"""Compiling a spec for a target without a GPU and reading its cubin back."""

from __future__ import annotations

import importlib

import pytest
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from deftx.kernels import KernelSpec
from deftx.perf.static import compile as compile_module
from deftx.perf.static.compile import (
    BuildFailure,
    DeclaredSpec,
    KernelBuild,
    ResourceUsage,
    analyse_cubin,
    compile_all,
    compile_spec,
    declared_specializations,
    histogram_bins,
    launch_attrs,
    parse_resource_usage,
)
from deftx.perf.targets import A100_80GB_SXM, H100_SXM
from tests.kernels import bad_kernels
from tests.kernels.bad_kernels import vector_copy_kernel as copy_kernel

RESOURCE_TEXT = """\

Resource usage:
 Common:
  GLOBAL:0
 Function _delta_matmul_kernel:
  REG:114 STACK:16 SHARED:1024 LOCAL:8 CONSTANT[0]:600 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function other_kernel:
  REG:32 STACK:0 SHARED:0 LOCAL:0 CONSTANT[0]:392 TEXTURE:0 SURFACE:0 SAMPLER:0
"""


@triton.jit
def broken_kernel(x_ptr, BLOCK: tl.constexpr):
    tl.store(x_ptr + tl.arange(0, BLOCK), undefined_name)  # noqa: F821


COPY = KernelSpec("copy_fp32", copy_kernel, {"x_ptr": "*fp32", "out_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"},
                  {"BLOCK": 1024}, num_stages=1, promises=frozenset({"vectorized_loads"}))
BROKEN = KernelSpec("broken", broken_kernel, {"x_ptr": "*fp32", "BLOCK": "constexpr"}, {"BLOCK": 32})


def test_parse_resource_usage():
    usage = parse_resource_usage(RESOURCE_TEXT)
    assert usage == {
        "_delta_matmul_kernel": ResourceUsage(registers=114, stack_bytes=16, local_bytes=8, static_shared_bytes=1024),
        "other_kernel": ResourceUsage(registers=32, stack_bytes=0, local_bytes=0, static_shared_bytes=0),
    }
    assert parse_resource_usage("") == {}


@pytest.mark.parametrize("missing", ["REG", "STACK", "LOCAL", "SHARED"])
def test_resource_line_without_a_field_is_an_error_not_zero(missing):
    line = " ".join(f for f in ("REG:40", "STACK:24", "SHARED:0", "LOCAL:0", "CONSTANT[0]:400")
                    if not f.startswith(f"{missing}:"))
    with pytest.raises(ValueError, match=f"resource usage of spilling_kernel: no {missing}"):
        parse_resource_usage(f" Function spilling_kernel:\n  {line}\n")


def test_compile_spec_fails_on_sass_it_cannot_read(tmp_path, monkeypatch):
    monkeypatch.setenv("DEFTX_CACHE", str(tmp_path))
    usage, sass = compile_module.analyse_cubin(triton.compile(
        ASTSource(fn=copy_kernel, signature=COPY.signature, constexprs=COPY.constexprs, attrs=launch_attrs(COPY)),
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": 4, "num_stages": 1},
    ).asm["cubin"])
    spaced = sass.replace("/*", "/* ").replace("*/", " */")
    monkeypatch.setattr(compile_module, "analyse_cubin", lambda cubin: (usage, spaced))
    with pytest.raises(ValueError, match="instruction this parser cannot read"):
        compile_spec(COPY, H100_SXM)
    failed = compile_all([DeclaredSpec("tests_unreadable", 0, COPY)], "sm_90", workers=1)
    assert isinstance(failed[0], BuildFailure) and "cannot read" in failed[0].error


def test_launch_attrs_mark_pointers_16_byte_aligned():
    assert launch_attrs(COPY) == {(0,): [["tt.divisibility", 16]], (1,): [["tt.divisibility", 16]]}


def test_histogram_bins_from_constexpr_module_constant_or_none():
    with_constexpr = KernelSpec("h", copy_kernel, COPY.signature, {"NUM_BINS": 128, "BLOCK": 16})
    assert histogram_bins(with_constexpr) == 128
    radix = KernelSpec("h", copy_kernel, COPY.signature, {"RADIX_SIZE": 16, "BLOCK": 16})
    assert histogram_bins(radix) == 16
    assert histogram_bins(BROKEN) is None, "no bins constexpr, no bins constant in the kernel's module"
    assert histogram_bins(bad_kernels.BAD[3][0]) == 256


@pytest.mark.parametrize("target", [A100_80GB_SXM, H100_SXM], ids=lambda t: t.arch)
def test_compile_spec_reads_cubin(target, tmp_path, monkeypatch):
    monkeypatch.setenv("DEFTX_CACHE", str(tmp_path))
    build = compile_spec(COPY, target, module="tests")
    assert isinstance(build, KernelBuild)
    assert (build.name, build.module, build.arch) == ("copy_fp32", "tests", target.arch)
    assert build.function == copy_kernel.__name__
    assert 0 < build.registers <= 255
    assert build.local_memory_bytes == 0 and build.user_shared_bytes == 0
    assert build.sass.of_class("global_load"), "the copy loads from global memory"
    assert 128 in build.sass.width_counts("global_load")
    assert f"SM{target.capability}" in build.sass_text.upper().replace("SM_", "SM")
    assert len(list((tmp_path / "sass").glob("*.json"))) == 1


def test_analysis_is_cached_on_disk(tmp_path, monkeypatch):
    monkeypatch.setenv("DEFTX_CACHE", str(tmp_path))
    build = compile_spec(COPY, H100_SXM)
    cubin = triton.compile(
        ASTSource(fn=copy_kernel, signature=COPY.signature, constexprs=COPY.constexprs, attrs=launch_attrs(COPY)),
        target=GPUTarget("cuda", 90, 32),
        options={"num_warps": 4, "num_stages": 1},
    ).asm["cubin"]

    def no_tools(*args, **kwargs):
        raise AssertionError("the cached analysis should not run the tools again")

    monkeypatch.setattr(compile_module, "_run_tool", no_tools)
    usage, sass = analyse_cubin(cubin)
    assert usage[copy_kernel.__name__].registers == build.registers
    assert sass == build.sass_text


def test_compile_all_reports_a_failing_spec_and_memoises(monkeypatch):
    declared = [DeclaredSpec("tests_compile", 0, BROKEN), DeclaredSpec("tests_compile", 1, COPY)]
    first = compile_all(declared, "sm_90", workers=1)
    assert isinstance(first[0], BuildFailure) and "undefined_name" in first[0].error
    assert isinstance(first[1], KernelBuild)

    def fail(*args, **kwargs):
        raise AssertionError("memoised results should not be rebuilt")

    monkeypatch.setattr(compile_module, "compile_spec", fail)
    assert compile_all(declared, "sm_90", workers=1) == first


def test_declared_specializations_lists_absent_and_broken_modules(monkeypatch):
    real_import = importlib.import_module

    def fake_import(name, *args):
        if name == "deftx.kernels.broken_one":
            raise SyntaxError("invalid syntax")
        return real_import(name, *args)

    monkeypatch.setattr(compile_module, "TRITON_OPS", ("topk", "not_written_yet", "broken_one"))
    monkeypatch.setattr(compile_module.importlib, "import_module", fake_import)
    registry = declared_specializations()
    assert registry.absent == ["not_written_yet"]
    assert list(registry.broken) == ["broken_one"] and "SyntaxError" in registry.broken["broken_one"]
    assert registry.specs and {d.module for d in registry.specs} == {"topk"}
    assert [d.index for d in registry.specs] == list(range(len(registry.specs)))


def test_missing_tool_raises(monkeypatch):
    with pytest.raises(FileNotFoundError, match="no_such_tool"):
        compile_module.tool_path("no_such_tool")
