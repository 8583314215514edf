"""Host side of the launchers: moving the tables they plan in Python onto the device.

A launcher plans on the host with Python integers (addresses, sizes, offsets: never a
read of device data) and moves each plan with one :func:`upload`. Every torch op a launcher
runs is then device work, which is what lets the tests count a launcher's launches and
host syncs on CPU tensors (see :mod:`deftx.bench.counters`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def upload(values: Sequence[int], device: torch.device, dtype: torch.dtype = torch.int64) -> torch.Tensor:
    """``values`` as a 1-D integer tensor on ``device``: one copy, and the host does not wait.

    On CUDA the host buffer is pinned and copied asynchronously (a copy from pageable memory
    makes torch wait for the stream first); the caching host allocator keeps the buffer until
    the copy has run. Elsewhere it is one ordinary copy, so the op count is the same.
    """
    host = torch.tensor(values, dtype=dtype)
    if device.type == "cuda":
        host = host.pin_memory()
    out = torch.empty(host.shape, dtype=dtype, device=device)
    out.copy_(host, non_blocking=True)
    return out
