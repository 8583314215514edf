"""Timing: warm-up and repeat counts, the returned first result, settings validation."""

from __future__ import annotations

import time
import weakref

import pytest
import torch

from deftx.perf.timing import (
    TimingSettings,
    time_call,
    time_interleaved,
    time_interleaved_isolating_errors,
    time_thunk,
)

CPU = torch.device("cpu")


def _counter():
    calls = []

    def thunk() -> int:
        calls.append(len(calls))
        return len(calls)

    return thunk, calls


def test_warmup_then_min_repeats_when_calls_are_fast() -> None:
    thunk, calls = _counter()
    timing, first = time_thunk(thunk, CPU, TimingSettings(warmup=2, min_repeats=3, max_repeats=3, min_time_s=0.0))
    assert len(calls) == 5
    assert first == 1  # the first warm-up call's result
    assert len(timing.samples) == 3
    assert timing.min_s <= timing.median_s
    assert all(s >= 0 for s in timing.samples)


def test_repeats_until_min_time_capped_by_max_repeats() -> None:
    thunk, calls = _counter()
    timing, _ = time_thunk(thunk, CPU, TimingSettings(warmup=0, min_repeats=1, max_repeats=7, min_time_s=60.0))
    assert len(timing.samples) == 7 and len(calls) == 7


def test_measures_wall_time() -> None:
    timing, first = time_thunk(
        lambda: time.sleep(0.02), CPU, TimingSettings(warmup=0, min_repeats=2, max_repeats=2, min_time_s=0.0)
    )
    assert first is None  # no warm-up: nothing returned
    assert 0.019 <= timing.median_s < 0.5


def test_a_long_call_is_timed_once() -> None:
    thunk, calls = _counter()
    settings = TimingSettings(warmup=1, min_repeats=5, max_repeats=5, min_time_s=0.0, long_call_s=-1.0)
    timing, _ = time_thunk(thunk, CPU, settings)
    assert len(calls) == 2 and len(timing.samples) == 1


@pytest.mark.parametrize("kwargs", [{"warmup": -1}, {"min_repeats": 0}, {"min_repeats": 5, "max_repeats": 4}])
def test_bad_settings_raise(kwargs) -> None:
    with pytest.raises(ValueError, match="bad timing settings"):
        TimingSettings(**kwargs)


def test_interleaved_timing_alternates_calls_and_drops_long_ones() -> None:
    order: list[str] = []

    def make(name: str, seconds: float):
        def thunk() -> str:
            order.append(name)
            time.sleep(seconds)
            return name

        return thunk

    settings = TimingSettings(warmup=1, min_repeats=3, max_repeats=3, min_time_s=0.0, long_call_s=0.05)
    result = time_interleaved({"fast": make("fast", 0.0), "slow": make("slow", 0.06)}, CPU, settings)
    assert order == ["fast", "slow", "fast", "slow", "fast", "fast"]  # warm-up, round 1, then only fast
    assert [len(result[n][0].samples) for n in ("fast", "slow")] == [3, 1]
    assert result["fast"][1] == "fast" and result["slow"][1] == "slow"
    assert result["slow"][0].median_s >= 0.06


class _FakeStream:
    """A CUDA stream of one device (the test machines have no GPU)."""

    def __init__(self, index: int) -> None:
        self.index = index


def test_cuda_events_are_recorded_on_the_timed_device_s_stream(monkeypatch) -> None:
    """``cuda:1`` work is timed by events on ``cuda:1``'s stream, not the current device's (``cuda:0``):
    events on an idle ``cuda:0`` stream would time the host's launches, not the GPU's work."""
    current_device = 0
    recorded: list[int] = []

    def current_stream(device=None) -> _FakeStream:
        index = current_device if device is None or torch.device(device).index is None else torch.device(device).index
        return _FakeStream(index)

    class FakeEvent:
        def __init__(self, enable_timing: bool = False) -> None:
            self.stream: _FakeStream | None = None

        def record(self, stream: _FakeStream | None = None) -> None:  # as torch.cuda.Event.record
            self.stream = stream if stream is not None else current_stream()
            recorded.append(self.stream.index)

        def elapsed_time(self, end: FakeEvent) -> float:
            return 2.0 if self.stream.index == end.stream.index else float("nan")

    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "current_stream", current_stream)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    assert time_call(lambda: None, torch.device("cuda", 1)) == 0.002
    assert recorded == [1, 1]
    recorded.clear()
    assert time_call(lambda: None, torch.device("cuda")) == 0.002  # no index: the current device
    assert recorded == [0, 0]


def test_the_scaling_step_gets_its_warm_up_and_keeps_the_configured_long_call_rule() -> None:
    """The step's one untimed call is added to the scaling study's timing, nothing else changed: a call
    over long_call_s is still timed once (it was dropped, so 10 s calls ran three times)."""
    from deftx.perf.scaling import ScalingConfig, _timing

    configured = TimingSettings(warmup=0, min_repeats=3, max_repeats=3, min_time_s=0.0, long_call_s=10.0, budget_s=7.0)
    config = ScalingConfig(timing=configured)
    assert _timing(config, "step") == TimingSettings(warmup=1, min_repeats=3, max_repeats=3, min_time_s=0.0,
                                                     long_call_s=10.0, budget_s=7.0)
    assert _timing(config, "topk") is configured


def test_interleaved_timing_keeps_what_keep_first_makes_of_a_result_and_never_the_result() -> None:
    """With ``keep_first``, no result outlives its call: each thunk's first is reduced at once."""
    alive: weakref.WeakSet = weakref.WeakSet()
    seen_alive: list[int] = []

    class Result:
        def __init__(self, value: int) -> None:
            self.value = value

    def make(value: int):
        def thunk() -> Result:
            seen_alive.append(len(alive))
            result = Result(value)
            alive.add(result)
            return result

        return thunk

    settings = TimingSettings(warmup=1, min_repeats=3, max_repeats=3, min_time_s=0.0)
    measured, errors = time_interleaved_isolating_errors({"a": make(1), "b": make(2)}, CPU, settings,
                                                         keep_first=lambda name, result: (name, 10 * result.value))
    assert errors == {}
    assert measured["a"][1] == ("a", 10) and measured["b"][1] == ("b", 20)
    assert seen_alive == [0] * 8, "an earlier result was still held when a thunk was called"
