"""The device's roofs, measured in the same run as the benchmarks (never a datasheet constant).

* Memory: ``dst.copy_(src)`` of a large fp32 tensor; ``2 * nbytes`` (one read, one
  write) per copy over the best time. On CPU a write may also cost a read of the
  destination line (write-allocate), which this model does not count, so the copy
  roof is the bandwidth a streaming kernel sees.
* Compute: an fp32 ``n x n`` matmul, ``2 n³`` flops over the best time (TF32 as torch's
  current setting for CUDA matmuls says; off by default).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from deftx.perf.timing import TimingSettings, time_thunk

COPY_BYTES = {"cpu": 256 << 20, "cuda": 2 << 30}
MATMUL_N = {"cpu": 2048, "cuda": 8192}
ROOF_TIMING = TimingSettings(warmup=1, min_repeats=5, max_repeats=20, min_time_s=0.5)


@dataclass(frozen=True)
class Roofline:
    """Measured roofs of one device."""

    copy_gbps: float
    matmul_gflops: float
    copy_bytes: int
    matmul_n: int
    method: str = (
        "copy: 2*nbytes / best time of dst.copy_(src) (fp32); matmul: 2*n^3 / best time of an fp32 n x n matmul"
    )

    def to_json(self) -> dict:
        return asdict(self)


def measure_copy_bandwidth(device: torch.device, nbytes: int) -> float:
    """GB/s (1e9 bytes/s) of a device-to-device copy of ``nbytes`` (read + write)."""
    src = torch.ones(nbytes // 4, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    timing, _ = time_thunk(lambda: dst.copy_(src), device, ROOF_TIMING)
    return 2 * src.numel() * 4 / timing.min_s / 1e9


def measure_matmul_flops(device: torch.device, n: int) -> float:
    """GFLOP/s of an fp32 ``n x n`` matmul."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    timing, _ = time_thunk(lambda: a @ b, device, ROOF_TIMING)
    return 2.0 * n**3 / timing.min_s / 1e9


def measure_roofline(device: torch.device, *, copy_bytes: int | None = None, matmul_n: int | None = None) -> Roofline:
    """Measure both roofs on ``device`` (sizes default per device type)."""
    copy_bytes = copy_bytes or COPY_BYTES.get(device.type, COPY_BYTES["cpu"])
    matmul_n = matmul_n or MATMUL_N.get(device.type, MATMUL_N["cpu"])
    return Roofline(
        copy_gbps=measure_copy_bandwidth(device, copy_bytes),
        matmul_gflops=measure_matmul_flops(device, matmul_n),
        copy_bytes=copy_bytes,
        matmul_n=matmul_n,
    )
