"""Wall-clock timing of benchmark thunks on CPU (``perf_counter``) or CUDA (events).

On CUDA every call is bracketed by CUDA events recorded on the current stream and the
device is synchronised before reading them, so the time is the GPU time of the call
(including launch overhead), not the asynchronous host time.

Implementations compared with each other are timed *interleaved*
(:func:`time_interleaved`: one call of each in turn, round after round), so a slow phase
of a shared machine hits all of them alike and their ratios stay meaningful.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TimingSettings:
    """How many calls to time.

    A call is repeated ``warmup`` times untimed, then timed until at least
    ``min_repeats`` calls and ``min_time_s`` seconds are done, or ``max_repeats`` calls.
    A call that takes longer than ``long_call_s`` (the first timed one) is not repeated:
    one sample of a multi-second call is precise enough and keeps CPU runs short.
    """

    warmup: int = 1
    min_repeats: int = 3
    max_repeats: int = 20
    min_time_s: float = 0.5
    long_call_s: float = float("inf")

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.min_repeats < 1 or self.max_repeats < self.min_repeats:
            raise ValueError(f"bad timing settings {self}: need warmup >= 0 and 1 <= min_repeats <= max_repeats")


@dataclass(frozen=True)
class Timing:
    """Seconds per call: the median (reported), the minimum and every sample."""

    median_s: float
    min_s: float
    samples: tuple[float, ...]


def synchronize(device: torch.device) -> None:
    """Wait for all queued work on ``device`` (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_cpu(thunk: Callable[[], object]) -> float:
    start = time.perf_counter()
    result = thunk()
    elapsed = time.perf_counter() - start
    del result
    return elapsed


def _time_cuda(thunk: Callable[[], object], device: torch.device) -> float:
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    synchronize(device)
    start.record()
    result = thunk()
    end.record()
    synchronize(device)
    del result
    return start.elapsed_time(end) / 1e3


def time_call(thunk: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``thunk`` takes on ``device`` (its result is dropped untimed)."""
    return _time_cuda(thunk, device) if device.type == "cuda" else _time_cpu(thunk)


def time_thunk(
    thunk: Callable[[], object], device: torch.device, settings: TimingSettings | None = None
) -> tuple[Timing, object]:
    """Time ``thunk`` per ``settings`` (default :class:`TimingSettings`); returns the timing
    and the first warm-up call's result.

    With ``warmup == 0`` the returned result is None. The first result is kept for
    quality checks (e.g. reconstruction error) without an extra call.
    """
    settings = settings or TimingSettings()
    first = None
    for i in range(settings.warmup):
        result = thunk()
        synchronize(device)
        if i == 0:
            first = result
        del result
    samples = [time_call(thunk, device)]
    if samples[0] > settings.long_call_s:
        return Timing(samples[0], samples[0], tuple(samples)), first
    while len(samples) < settings.max_repeats and (
        len(samples) < settings.min_repeats or sum(samples) < settings.min_time_s
    ):
        samples.append(time_call(thunk, device))
    return Timing(statistics.median(samples), min(samples), tuple(samples)), first


def time_interleaved(
    thunks: dict[str, Callable[[], object]], device: torch.device, settings: TimingSettings | None = None
) -> dict[str, tuple[Timing, object]]:
    """Time several thunks round-robin; per name, the timing and its first warm-up result.

    Each thunk is warmed up ``settings.warmup`` times (in turn), then timed one call per
    round until every thunk has ``min_repeats`` samples and ``min_time_s`` seconds, or
    ``max_repeats`` samples. A thunk whose first timed call exceeds ``long_call_s`` is
    not called again.
    """
    settings = settings or TimingSettings()
    first: dict[str, object] = dict.fromkeys(thunks)
    for i in range(settings.warmup):
        for name, thunk in thunks.items():
            result = thunk()
            synchronize(device)
            if i == 0:
                first[name] = result
            del result
    samples: dict[str, list[float]] = {name: [] for name in thunks}

    def wants_more(name: str) -> bool:
        taken = samples[name]
        if not taken:
            return True
        if taken[0] > settings.long_call_s or len(taken) >= settings.max_repeats:
            return False
        return len(taken) < settings.min_repeats or sum(taken) < settings.min_time_s

    while pending := [name for name in thunks if wants_more(name)]:
        for name in pending:
            samples[name].append(time_call(thunks[name], device))
    return {
        name: (Timing(statistics.median(taken), min(taken), tuple(taken)), first[name])
        for name, taken in samples.items()
    }
