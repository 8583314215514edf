"""Interpreted kernels call ``@triton.jit`` helpers of other modules (``tl.sum``, ``kernels/_common``)
and leave Triton's language modules as they found them, so compiling still works afterwards."""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget

from deftx.kernels import kernel_module


def _language_members() -> dict[str, object]:
    return {name: getattr(module, name) for module in (tl, tl.core) for name in ("add", "load", "store", "sum")
            if hasattr(module, name)} | {"tensor.__add__": tl.core.tensor.__add__}


def test_interpreted_helpers_leave_the_language_unpatched():
    before = _language_members()
    scatter = kernel_module("scatter", interpret=True)  # _lower_bound calls tl.zeros_like
    dense = [torch.zeros(64)]
    indices = [[torch.arange(0, 64, 3)]]
    scatter.scatter_add_(dense, indices, [[torch.ones(22)]], [1.0], False, None)
    assert dense[0].sum() == 22
    topk = kernel_module("topk", interpret=True)  # tl.sum / tl.cumsum
    flat, stats = topk.topk_indices([torch.arange(10.0)], 3, None, False)
    assert flat.tolist() == [7, 8, 9] and stats.tolist() == [3, 0]
    assert _language_members() == before


def test_compiling_after_an_interpreted_launch_still_works():
    test_interpreted_helpers_leave_the_language_unpatched()
    compiled = kernel_module("scatter", interpret=False)
    spec = next(s for s in compiled.SPECIALIZATIONS if s.name == "scatter_add_fp32_values_fp32")
    source = triton.compiler.ASTSource(fn=spec.kernel, signature=spec.signature, constexprs=spec.constexprs)
    kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32),
                            options={"num_warps": spec.num_warps, "num_stages": spec.num_stages})
    assert "ttir" in kernel.asm
