"""The ``device`` fixture of the kernel tests (see :mod:`tests.kernels.devices`), and a launch recorder."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.devices import DEVICES


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """The device a kernel test runs on: CPU (interpreted kernels) or CUDA (compiled)."""
    return request.param


class LaunchRecorder:
    """Stands in for a jitted kernel: records the constexprs ``names`` of every launch, then runs it."""

    def __init__(self, kernel, names):
        self.kernel, self.names, self.launches = kernel, names, []

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            self.launches.append({name: kwargs[name] for name in self.names})
            return self.kernel[grid](*args, **kwargs)

        return launch
