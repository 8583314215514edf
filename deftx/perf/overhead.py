"""Host overhead of one call on CUDA: device->host syncs and kernel launches.

The interpreter and CPU runs hide what costs time on a GPU between kernels: a Python
loop that launches hundreds of small kernels, or an ``int(tensor)`` that waits for the
device. One call of a warmed-up thunk is counted two ways:

* syncs: with ``torch.cuda.set_sync_debug_mode("warn")`` torch warns on every
  synchronizing operation it issues (``.item()``, ``int()``/``bool()`` of a CUDA tensor,
  a device->host copy, ``nonzero``...); the warnings are counted. Syncs outside torch
  (a Triton launcher reading device memory) would not be seen; the CUDA runtime's own
  synchronize calls made during the call (inside its profiler range: not the synchronize
  that then waits for its kernels) are counted from the profiler as a cross-check.
* launches: the torch profiler's device events: kernels (deftx's Triton kernels
  by name among them), memcpys and memsets.

Kept small and self-contained on purpose; :mod:`deftx.perf.counters` (when present) is the
project-wide counter.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any

import torch

from deftx.ops.registry import kernel_specializations
from deftx.perf.counters import SYNC_WARNING, sync_reports_kept

"""Substring of the warning torch's sync debug mode emits per synchronizing operation."""

RUNTIME_SYNC_CALLS = frozenset({"cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize"})
RUNTIME_COPY_CALLS = frozenset({"cudaMemcpy", "cudaMemcpyAsync"})
COUNTED_RANGE = "deftx.count_host_overhead"
"""The profiler range around the counted call: host calls outside it (the synchronize that waits for the
call's kernels) are not the call's."""


def triton_kernel_names() -> frozenset[str]:
    """Names of deftx's ``@triton.jit`` kernels (``_band_histogram_kernel``, ...), as they
    appear in profiler traces; empty where the kernel modules cannot be imported."""
    try:
        specs = kernel_specializations()
    except ImportError:
        return frozenset()
    return frozenset(spec.kernel.fn.__name__ for spec in specs)


def classify_device_events(names: Iterable[str], triton_names: frozenset[str]) -> dict[str, int]:
    """Counts of device events by kind: ``kernels`` (all), ``triton_kernels`` (those whose
    name contains one of ``triton_names``), ``memcpy`` and ``memset``."""
    counts = {"kernels": 0, "triton_kernels": 0, "memcpy": 0, "memset": 0}
    for name in names:
        if name.startswith("Memcpy"):
            counts["memcpy"] += 1
        elif name.startswith("Memset"):
            counts["memset"] += 1
        else:
            counts["kernels"] += 1
            counts["triton_kernels"] += any(t in name for t in triton_names)
    return counts


def count_runtime_calls(names: Iterable[str]) -> dict[str, int]:
    """Counts of CUDA runtime synchronize and copy calls among host-side profiler events."""
    names = list(names)
    return {
        "runtime_syncs": sum(n in RUNTIME_SYNC_CALLS for n in names),
        "runtime_copies": sum(n in RUNTIME_COPY_CALLS for n in names),
    }


def host_names_within(events: Iterable[Any], window: str) -> list[str]:
    """Names of the host-side profiler events (torch ``FunctionEvent`` objects) that run inside the first event named
    ``window`` (the window itself left out); none when no event has that name."""
    events = [e for e in events if e.device_type != torch.autograd.DeviceType.CUDA]
    ranges = [e.time_range for e in events if e.name == window]
    if not ranges:
        return []
    start, end = ranges[0].start, ranges[0].end
    return [e.name for e in events
            if e.name != window and start <= e.time_range.start and e.time_range.end <= end]


def device_event_names(events: Iterable[Any]) -> list[str]:
    """Names of the device-side profiler events that are work on the device (kernels, memcpys, memsets):
    the device-side copies of ``record_function`` ranges (user annotations, e.g. :data:`COUNTED_RANGE`)
    left out, as torch's own tables leave them out."""
    return [e.name for e in events if e.device_type == torch.autograd.DeviceType.CUDA
            and not getattr(e, "is_user_annotation", False) and e.name != COUNTED_RANGE]


def count_sync_warnings(messages: Iterable[str]) -> int:
    """How many of the captured warning messages are torch's sync-debug warnings."""
    return sum(SYNC_WARNING in m for m in messages)


def count_host_overhead(thunk: Callable[[], object], device: torch.device) -> dict[str, Any] | None:
    """Syncs and launches of one call of ``thunk`` on ``device`` (None on CPU).

    Call it on a warmed-up thunk (compilation and caches done); its own warnings are issued
    again after the count. Returns ``syncs`` (torch sync-debug warnings), ``kernels``,
    ``triton_kernels``, ``memcpy``, ``memset``, ``runtime_syncs`` and ``runtime_copies``, or
    ``{"error": ...}`` if counting failed.
    """
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    previous = torch.cuda.get_sync_debug_mode()
    try:
        with warnings.catch_warnings(record=True) as caught, profile(
            activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]
        ) as prof:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            try:
                with torch.profiler.record_function(COUNTED_RANGE):
                    result = thunk()
            finally:
                torch.cuda.set_sync_debug_mode(previous)
            torch.cuda.synchronize(device)
            del result
    except Exception as err:  # counting is a report, never a reason to fail the benchmark
        torch.cuda.set_sync_debug_mode(previous)
        return {"error": f"{type(err).__name__}: {err}"}
    reports = sync_reports_kept(caught)
    events = list(prof.events())
    return {
        "syncs": len(reports),
        **classify_device_events(device_event_names(events), triton_kernel_names()),
        **count_runtime_calls(host_names_within(events, COUNTED_RANGE)),
        "method": "torch.cuda.set_sync_debug_mode('warn') warnings; torch.profiler device events",
    }
