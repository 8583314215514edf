"""Where the kernel tests run: CPU tensors with the kernels under the Triton interpreter, and
CUDA tensors with the compiled kernels (skipped where no CUDA device exists).

Tests take the ``device`` fixture (``tests/kernels/conftest.py``), which is parametrized over
:data:`DEVICES` (ids ``interpreter`` and ``cuda``; the CUDA cases carry the ``cuda`` marker).
Both runs build their inputs on the CPU from the same seeds, move them to the device, and are
compared against the same CPU references with the same tolerances.
"""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

from deftx.kernels import kernel_module

HAS_CUDA = torch.cuda.is_available()

requires_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA device (compiled Triton kernels)")

DEVICES = [
    pytest.param(torch.device("cpu"), id="interpreter"),
    pytest.param(torch.device("cuda"), id="cuda", marks=[pytest.mark.cuda, requires_cuda]),
]


def kernels_for(name: str, device: torch.device) -> ModuleType:
    """Kernel module ``name`` as launched for tensors on ``device``: compiled for CUDA,
    interpreted otherwise."""
    return kernel_module(name, interpret=device.type != "cuda")


def to_device(value, device: torch.device):
    """``value`` with every tensor moved to ``device``: a tensor, None, or (nested) lists of them.

    Tensors already on ``device`` are returned as they are (views keep their offsets).
    """
    if isinstance(value, list | tuple):
        return [to_device(item, device) for item in value]
    return None if value is None else value.to(device)


class LaunchRecorder:
    """Stands in for a kernel: records each launch's named arguments, then launches."""

    def __init__(self, kernel):
        self.kernel = kernel
        self.launches: list[dict] = []

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            self.launches.append({**dict(zip(self.kernel.arg_names, args, strict=False)), **kwargs})
            return launch(*args, **kwargs)

        return run


def record_launches(monkeypatch, module: ModuleType, names) -> dict[str, LaunchRecorder]:
    """Replace the kernels ``names`` of ``module`` by recorders for the test: {name: recorder}."""
    recorders = {name: LaunchRecorder(getattr(module, name)) for name in names}
    for name, recorder in recorders.items():
        monkeypatch.setattr(module, name, recorder)
    return recorders
