"""Fixtures for op tests: every backend that can run on CPU tensors here."""

from __future__ import annotations

import warnings

import pytest
import torch

from deftx.ops.dispatch import unavailable_reason
from deftx.ops.registry import OPS

DTYPE_SETS: dict[str, list[torch.dtype]] = {
    "fp32": [torch.float32],
    "bf16": [torch.bfloat16],
    "fp16": [torch.float16],
    "mixed": [torch.float32, torch.bfloat16, torch.float16],
}
"""Tensor dtypes of a multi-tensor op's inputs: one dtype, or the three cycled over the tensors."""


def one_param_step_tensors() -> dict[str, list[torch.Tensor]]:
    """The masked AdamW step's tensor lists for one 5-element fp32 parameter with entries 0, 2
    and 4 selected, all zeros (a valid call, for the argument-check tests to break one way)."""
    return {
        "params": [torch.zeros(5)],
        "grads": [torch.zeros(5)],
        "indices": [torch.tensor([0, 2, 4])],
        "masters": [torch.zeros(3)],
        "exp_avgs": [torch.zeros(3)],
        "exp_avg_sqs": [torch.zeros(3)],
    }


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
