"""Fixtures for op tests: every backend that can run on CPU tensors here."""

from __future__ import annotations

import warnings

import pytest

from deftx.ops.dispatch import unavailable_reason
from deftx.ops.registry import OPS


def cpu_backends(op: str) -> list:
    """pytest params: torch, native (where it implements ``op``) and triton (interpreter).

    A backend that implements the op but cannot run here is skipped with the reason.
    """
    params = []
    for backend in ("torch", "native", "triton"):
        if backend not in OPS[op].backends:
            continue
        reason = unavailable_reason(op, backend, "cpu")
        marks = [pytest.mark.skip(reason=reason)] if reason else []
        params.append(pytest.param(backend, marks=marks, id=backend))
    return params


@pytest.fixture(autouse=True)
def _quiet_interpreter_notice():
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="deftx: running the Triton kernel")
        yield
