"""Fixtures for op tests: every backend that can run on CPU tensors here."""

from __future__ import annotations

import warnings

import pytest

from deftx.ops.dispatch import unavailable_reason


def cpu_backends(op: str) -> list:
    """pytest params: torch, native and triton (interpreter), skipped with the reason if unavailable."""
    params = []
    for backend in ("torch", "native", "triton"):
        reason = unavailable_reason(op, backend, "cpu")
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(backend, marks=marks, id=backend))
    return params


@pytest.fixture(autouse=True)
def _quiet_interpreter_notice():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="deftx: running the Triton kernel")
        yield
