"""The ``device`` fixture of the kernel tests (see :mod:`tests.kernels.devices`)."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.devices import DEVICES


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """The device a kernel test runs on: CPU (interpreted kernels) or CUDA (compiled)."""
    return request.param
