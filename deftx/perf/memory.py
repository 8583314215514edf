"""Peak extra memory of one call: the process RSS high-water mark on CPU, torch's allocator on CUDA.

CPU: ``tracemalloc`` does not see torch's allocations, so the measure is the resident
set. Writing ``5`` to ``/proc/self/clear_refs`` resets the high-water mark ``VmHWM`` to
the current RSS (Linux >= 4.0). RSS also counts file-backed pages (the libraries' code),
which the kernel may evict during the call under memory pressure and so hide growth;
a thread therefore also samples the anonymous RSS (``RssAnon``) every millisecond::

    extra = max(VmHWM after the call - VmRSS before it,  max sampled RssAnon - RssAnon before)

Done in a worker subprocess (:mod:`deftx.perf.memory_probe`) started with
``MALLOC_MMAP_THRESHOLD_=131072`` so glibc returns every freed block above 128 KiB to
the system (a fixed threshold also turns off glibc's adaptive one): memory freed by an
earlier case is not silently reused by the next one. Blocks under the threshold come from
glibc's heap, where a block freed earlier is reused without growing the RSS: a call's
small allocations may go unseen, so the figure is a lower bound (exact for the large
buffers the ops allocate at model sizes). Where ``clear_refs`` cannot be written only
the sampled figure is available (short peaks may be missed).

CUDA: ``torch.cuda.reset_peak_memory_stats`` then ``max_memory_allocated() - memory_allocated()``
around the call (tensors only; the caching allocator's reserve is not counted).
"""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

CPU_METHOD = ("RSS growth: max(VmHWM reset via /proc/self/clear_refs, RssAnon sampled every 1 ms) in a worker "
              "subprocess; a lower bound: blocks under 128 KiB may reuse freed heap unseen")
CPU_SAMPLED_METHOD = ("RssAnon sampled every 1 ms in a worker subprocess (clear_refs unavailable); a lower bound: "
                      "blocks under 128 KiB may reuse freed heap unseen")
CUDA_METHOD = "torch.cuda.max_memory_allocated() after reset_peak_memory_stats()"
SAMPLE_INTERVAL_S = 0.001
STATUS = Path("/proc/self/status")


@dataclass(frozen=True)
class MemoryResult:
    """Peak bytes above the level before the call, and how they were measured."""

    peak_extra_bytes: int
    method: str


def status_bytes(field: str) -> int:
    """A ``/proc/self/status`` memory field (``VmRSS``, ``VmHWM``, ``RssAnon``) in bytes."""
    for line in STATUS.read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{STATUS} has no {field} line")


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS; False where the kernel does not allow it."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return status_bytes("VmHWM") <= status_bytes("VmRSS") + (1 << 20)


class _AnonSampler(threading.Thread):
    """Tracks the largest ``RssAnon`` seen until stopped."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = status_bytes("RssAnon")
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(SAMPLE_INTERVAL_S):
            self.peak = max(self.peak, status_bytes("RssAnon"))

    def stop(self) -> int:
        self.done.set()
        self.join()
        return max(self.peak, status_bytes("RssAnon"))


def peak_extra_cpu(call: Callable[[], object]) -> MemoryResult:
    """Peak RSS growth while ``call()`` runs (its result is dropped afterwards)."""
    gc.collect()
    has_hwm = reset_peak_rss()
    rss_before = status_bytes("VmRSS")
    sampler = _AnonSampler()
    anon_before = sampler.peak
    sampler.start()
    result = call()
    anon_peak = sampler.stop()
    extra = anon_peak - anon_before
    if has_hwm:
        extra = max(extra, status_bytes("VmHWM") - rss_before)
    del result
    return MemoryResult(max(0, extra), CPU_METHOD if has_hwm else CPU_SAMPLED_METHOD)


def peak_extra_cuda(call: Callable[[], object], device: torch.device) -> MemoryResult:
    """Peak growth of memory allocated by torch on ``device`` while ``call()`` runs."""
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    result = call()
    torch.cuda.synchronize(device)
    peak = torch.cuda.max_memory_allocated(device)
    del result
    return MemoryResult(max(0, peak - before), CUDA_METHOD)
