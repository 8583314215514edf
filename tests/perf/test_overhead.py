"""deftx.perf.overhead: what one counted call leaves to its caller (CUDA only; its switches stubbed here)."""

from __future__ import annotations

import warnings

import pytest
import torch

from deftx.perf import overhead


def test_the_call_s_own_warnings_reach_the_caller_and_sync_reports_are_counted(monkeypatch):
    """The sync debug mode's warnings are caught to count them; any other warning of the call
    (a rounding loss, an interpreter notice) is issued again, not swallowed."""
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda mode: None)

    def call() -> torch.Tensor:
        warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
        warnings.warn("rounding loss in 3 entries", RuntimeWarning, stacklevel=1)
        return torch.ones(3) + 1

    with pytest.warns(RuntimeWarning, match="rounding loss") as seen:
        counts = overhead.count_host_overhead(call, torch.device("cuda"))
    assert counts is not None and "error" not in counts, counts
    assert counts["syncs"] == 1
    messages = [str(w.message) for w in seen]  # (a CPU-only torch adds its profiler's notice)
    assert "rounding loss in 3 entries" in messages and not any(overhead.SYNC_WARNING in m for m in messages)
