"""Two probe kernels for the histogram micro-benchmark (not ops: nothing calls them but it).

They read a tensor the way a radix pass of ``deftx.kernels.topk`` does (persistent
programs striding over 2048-element tiles, the same ``_magnitude_key``), and do less with it:

* :func:`digit_sum`: adds up the digits (one integer atomic per program): the cost of
  streaming the data and computing the keys;
* :func:`digit_histogram`: ``tl.histogram`` of the digits in registers, one integer atomic
  per bin per program: what ``tl.histogram`` itself costs, which triton 3.6 lowers to warp
  ballots and popcounts and 3.9 to shared-memory atomics.

Their times next to the real pass tell where a pass slower than the copy bandwidth loses.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from deftx.kernels._common import TL_DTYPES
from deftx.kernels.topk import _magnitude_key

TILE = 2048
RADIX = 256
WARPS = 4
PROGRAMS_PER_SM = 8
INTERPRETER_PROGRAMS = 3


@triton.jit
def _probe_digit_sum_kernel(x_ptr, out_ptr, n, DTYPE: tl.constexpr, SHIFT: tl.constexpr, TILE: tl.constexpr):
    acc = tl.full([TILE], 0, dtype=tl.int32)
    for start in range(tl.program_id(0) * TILE, n, tl.num_programs(0) * TILE):
        offsets = start + tl.arange(0, TILE)
        x = tl.load(x_ptr + offsets, mask=offsets < n, other=0.0)
        acc += ((_magnitude_key(x, DTYPE) >> SHIFT) & 255).to(tl.int32)
    tl.atomic_add(out_ptr, tl.sum(acc, 0).to(tl.int64), sem="relaxed")


@triton.jit
def _probe_histogram_kernel(x_ptr, hist_ptr, n, DTYPE: tl.constexpr, SHIFT: tl.constexpr, TILE: tl.constexpr):
    bins = tl.arange(0, 256)
    hist = tl.full([256], 0, dtype=tl.int32)
    for start in range(tl.program_id(0) * TILE, n, tl.num_programs(0) * TILE):
        offsets = start + tl.arange(0, TILE)
        valid = offsets < n
        x = tl.load(x_ptr + offsets, mask=valid, other=0.0)
        hist += tl.histogram((_magnitude_key(x, DTYPE) >> SHIFT) & 255, 256, mask=valid)
    tl.atomic_add(hist_ptr + bins, hist.to(tl.int64), mask=hist > 0, sem="relaxed")


def programs(device: torch.device) -> int:
    """Persistent programs: a few per SM, as the top-k histogram launches."""
    if device.type != "cuda":
        return INTERPRETER_PROGRAMS
    return PROGRAMS_PER_SM * torch.cuda.get_device_properties(device).multi_processor_count


def digit_sum(x: torch.Tensor, shift: int, out: torch.Tensor) -> torch.Tensor:
    """Add the sum of the digits ``(key(|x|) >> shift) & 255`` to ``out`` (int64 (1,))."""
    _probe_digit_sum_kernel[(programs(x.device),)](
        x, out, x.numel(), DTYPE=TL_DTYPES[x.dtype], SHIFT=shift, TILE=TILE, num_warps=WARPS
    )
    return out


def digit_histogram(x: torch.Tensor, shift: int, hist: torch.Tensor) -> torch.Tensor:
    """Add the 256-bin histogram of the digits to ``hist`` (int64 (256,))."""
    _probe_histogram_kernel[(programs(x.device),)](
        x, hist, x.numel(), DTYPE=TL_DTYPES[x.dtype], SHIFT=shift, TILE=TILE, num_warps=WARPS
    )
    return hist


def _specializations():
    """The four specialisations the micro-benchmark launches (for compile checks without a GPU)."""
    from deftx.kernels import KernelSpec

    specs = []
    for dtype, name in ((torch.float32, "fp32"), (torch.bfloat16, "bf16")):
        for kernel, label, out in ((_probe_digit_sum_kernel, "digit_sum", "out_ptr"),
                                   (_probe_histogram_kernel, "digit_histogram", "hist_ptr")):
            specs.append(KernelSpec(
                name=f"probe_{label}_{name}",
                kernel=kernel,
                signature={"x_ptr": f"*{name}", out: "*i64", "n": "i32", "DTYPE": "constexpr", "SHIFT": "constexpr",
                           "TILE": "constexpr"},
                constexprs={"DTYPE": TL_DTYPES[dtype], "SHIFT": 24, "TILE": TILE},
                num_warps=WARPS,
                num_stages=3,
            ))
    return specs


SPECIALIZATIONS = _specializations()
