"""Wall-clock timing of benchmark thunks on CPU (``perf_counter``) or CUDA (events).

On CUDA every call is bracketed by CUDA events recorded on the timed device's current stream
and the device is synchronised before reading them, so the time is the GPU time of the call
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
    ``budget_s`` caps the wall time of the timed rounds of :func:`time_interleaved` (a time
    cap per case): once every implementation has one sample, no further round starts past it.
    """

    warmup: int = 1
    min_repeats: int = 3
    max_repeats: int = 20
    min_time_s: float = 0.5
    long_call_s: float = float("inf")
    budget_s: float = float("inf")

    def __post_init__(self) -> None:
        if self.warmup < 0 or self.min_repeats < 1 or self.max_repeats < self.min_repeats:
            raise ValueError(f"bad timing settings {self}: need warmup >= 0 and 1 <= min_repeats <= max_repeats")
        if self.budget_s <= 0:
            raise ValueError(f"bad timing settings {self}: budget_s must be positive")


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
    """GPU seconds of one call: events on ``device``'s current stream (not the current device's:
    ``cuda:1`` work is timed on ``cuda:1`` when ``cuda:0`` is the current device)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    stream = torch.cuda.current_stream(device)
    synchronize(device)
    start.record(stream)
    result = thunk()
    end.record(stream)
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
    ``max_repeats`` samples, or the rounds have run ``budget_s``. A thunk whose first timed
    call exceeds ``long_call_s`` is not called again. The first exception of any thunk is
    raised (:func:`time_interleaved_isolating_errors` records it and goes on instead).
    """
    measured, errors = time_interleaved_isolating_errors(thunks, device, settings)
    if errors:
        raise next(iter(errors.values()))
    return measured


def time_interleaved_isolating_errors(
    thunks: dict[str, Callable[[], object]],
    device: torch.device,
    settings: TimingSettings | None = None,
    keep_first: Callable[[str, object], object] | None = None,
) -> tuple[dict[str, tuple[Timing, object]], dict[str, Exception]]:
    """:func:`time_interleaved`, but a thunk that raises (out of memory, an index limit) is
    dropped with its exception and the others are timed on.

    ``keep_first(name, result)`` is what is kept of a thunk's first warm-up result (default: the
    result itself), called as soon as the result is made: a caller that only reports a figure of
    a model-sized result (its error) keeps that figure, and no result outlives its call, where
    one kept per thunk would hold them all on the device while the others are timed.

    Returns:
        (name -> (timing, what is kept of its first warm-up result) for the thunks that never
        failed, name -> exception for those that did). On CUDA the caching allocator's free blocks
        are released after a failure, so an out-of-memory baseline leaves room for the rest.
    """
    settings = settings or TimingSettings()
    live = dict(thunks)
    errors: dict[str, Exception] = {}
    first: dict[str, object] = dict.fromkeys(thunks)

    def attempt(name: str, call: Callable[[], object]) -> object:
        try:
            return call()
        except Exception as err:  # recorded per implementation; the others go on
            errors[name] = err
            live.pop(name, None)
            first.pop(name, None)
            if device.type == "cuda":
                torch.cuda.empty_cache()
            return None

    def warm_call(thunk: Callable[[], object]) -> Callable[[], object]:
        def call() -> object:
            result = thunk()
            synchronize(device)
            return result

        return call

    for i in range(settings.warmup):
        for name, thunk in list(live.items()):
            result = attempt(name, warm_call(thunk))
            if i == 0 and name in live:
                first[name] = result if keep_first is None else keep_first(name, result)
            del result
    samples: dict[str, list[float]] = {name: [] for name in live}
    start = time.perf_counter()

    def wants_more(name: str) -> bool:
        taken = samples[name]
        if not taken:
            return True
        if taken[0] > settings.long_call_s or len(taken) >= settings.max_repeats:
            return False
        if time.perf_counter() - start > settings.budget_s:
            return False
        return len(taken) < settings.min_repeats or sum(taken) < settings.min_time_s

    while pending := [name for name in live if wants_more(name)]:
        for name in pending:
            seconds = attempt(name, lambda name=name: time_call(live[name], device))
            if name in live:
                samples[name].append(seconds)
    measured = {
        name: (Timing(statistics.median(taken), min(taken), tuple(taken)), first[name])
        for name, taken in samples.items()
        if name in live
    }
    return measured, errors
