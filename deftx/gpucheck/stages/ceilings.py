"""Stage ``ceilings``: the two roofs every other number is read against, measured here.

* copy bandwidth: ``dst.copy_(src)`` of random data, bytes read plus bytes written over
  the time (fp32 and bf16 buffers of the same size);
* matmul rate: an ``n × n × n`` product of random matrices, ``2 n³`` over the time (bf16 on
  the tensor cores; fp32 with TF32 off, the CUDA-core rate the rSVD's ieee products run at).

Each is the median of timed calls after warm-ups (device events on CUDA), also the best.
"""

from __future__ import annotations

from typing import Any

import torch

from deftx.gpucheck.context import StageContext
from deftx.perf.timing import TimingSettings, time_thunk

SIZES: dict[str, dict[str, int]] = {
    "full": {"copy_bytes": 2 << 30, "matmul_n": 8192},
    "tiny": {"copy_bytes": 16 << 20, "matmul_n": 256},
}
TIMING = TimingSettings(warmup=3, min_repeats=10, max_repeats=10, min_time_s=0.0)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def copy_bandwidth(device: torch.device, nbytes: int, dtype: torch.dtype) -> dict[str, float]:
    """GB/s (1e9 bytes/s, read + write) of a device-to-device copy of ``nbytes``: median and best."""
    src = torch.randn(nbytes // torch.empty(0, dtype=dtype).element_size(), device=device).to(dtype)
    dst = torch.empty_like(src)
    timing, _ = time_thunk(lambda: dst.copy_(src), device, TIMING)
    moved = 2 * src.numel() * src.element_size()
    return {"bytes": moved, "median_gbps": moved / timing.median_s / 1e9, "best_gbps": moved / timing.min_s / 1e9}


def matmul_rate(device: torch.device, n: int, dtype: torch.dtype) -> dict[str, float]:
    """TFLOP/s of an ``n × n × n`` product in ``dtype`` (TF32 off for fp32): median and best."""
    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        timing, _ = time_thunk(lambda: a @ b, device, TIMING)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    flops = 2.0 * n**3
    return {"n": n, "median_tflops": flops / timing.median_s / 1e12, "best_tflops": flops / timing.min_s / 1e12}


def run(ctx: StageContext) -> dict[str, Any]:
    device = torch.device(ctx.device)
    sizes = SIZES[ctx.sizes]
    copy = {name: copy_bandwidth(device, sizes["copy_bytes"], dtype) for name, dtype in DTYPES.items()}
    matmul = {name: matmul_rate(device, sizes["matmul_n"], dtype) for name, dtype in DTYPES.items()}
    headline = (
        f"copy {copy['fp32']['median_gbps']:,.0f} GB/s (bf16 buffers {copy['bf16']['median_gbps']:,.0f}), "
        f"matmul bf16 {matmul['bf16']['median_tflops']:,.1f} TFLOP/s, fp32 {matmul['fp32']['median_tflops']:,.1f}"
    )
    print(headline)
    return {"status": "ok", "headline": headline, "copy": copy, "matmul": matmul,
            "method": "median of 10 timed calls after 3 warm-ups, random data; copy counts read + write"}
