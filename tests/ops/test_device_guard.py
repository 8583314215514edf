"""Every backend call runs with its tensors' device current (``deftx.ops.dispatch.device_guard``).

Triton launches on the current CUDA device's current stream, whatever its arguments' device, so a
call on ``cuda:1`` tensors made while ``cuda:0`` is current must switch devices first. Without a
second GPU, these tests check the guard itself and that each public op (and each prepared op's
calls) reaches its backend only inside a guard of its tensors' device.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest
import torch

from deftx import ops
from deftx.ops import dispatch, library
from deftx.ops import masked_step as masked_step_module
from deftx.ops import scatter as scatter_module


def test_the_guard_makes_a_cuda_device_current_and_leaves_other_devices_alone():
    guard = dispatch.device_guard(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    with dispatch.device_guard(torch.device("cpu")):
        pass


@pytest.fixture
def guarded_calls(monkeypatch):
    """Backend calls recorded with the device whose guard was open around them (None: no guard)."""
    calls: list[tuple[str, torch.device | None]] = []
    current: list[torch.device] = []

    @contextlib.contextmanager
    def guard(device):
        current.append(device)
        try:
            yield
        finally:
            current.pop()

    def recorded(module):
        def wrap(name, function):
            def call(*args, **kwargs):
                calls.append((name, current[-1] if current else None))
                return function(*args, **kwargs)
            return call
        return SimpleNamespace(**{name: wrap(name, getattr(module, name)) if callable(getattr(module, name))
                                  else getattr(module, name) for name in dir(module) if not name.startswith("__")})

    def backend_for(op, device, backend=None):
        return recorded(dispatch.backend_for(op, device, "torch"))

    for module in (library, scatter_module, masked_step_module):
        monkeypatch.setattr(module, "device_guard", guard)
        monkeypatch.setattr(module, "backend_for", backend_for)
    return calls


def test_each_public_op_calls_its_backend_inside_the_guard(guarded_calls):
    cpu = torch.device("cpu")
    gen = torch.Generator().manual_seed(0)
    w1, w0 = torch.randn(12, 10, generator=gen), torch.randn(12, 10, generator=gen)
    ops.topk_mask([w1, w0], 7)
    ops.denoised_magnitudes(w1, w0, rank=2)
    dense = [torch.zeros(6)]
    idx, val = [[torch.tensor([1, 4])]], [[torch.tensor([0.5, -1.0])]]
    saved = ops.scatter_add_(dense, idx, val, save=True)
    ops.scatter_restore_(dense, idx, saved)
    param = torch.randn(6)
    state = dict(indices=[torch.tensor([0, 3])], masters=[param[[0, 3]].clone()], exp_avgs=[torch.zeros(2)],
                 exp_avg_sqs=[torch.zeros(2)])
    ops.masked_adamw_step_([param], [torch.randn(6)], **state, step=1, lr=1e-2)
    names = {name for name, _ in guarded_calls}
    assert {"topk_indices", "randomized_svd_group", "reconstruct_magnitudes", "scatter_add_", "scatter_restore_",
            "masked_adamw_step_"} <= names, names
    outside = [name for name, device in guarded_calls if device != cpu]
    assert not outside, f"called outside a guard of the tensors' device: {outside}"


def test_prepared_ops_plan_and_run_inside_the_guard(guarded_calls):
    cpu = torch.device("cpu")
    dense = [torch.zeros(6)]
    prepared = ops.prepare_scatter(dense, [[torch.tensor([1, 4])]], [[torch.tensor([0.5, -1.0])]])
    prepared.apply()
    prepared.restore()
    param = torch.randn(6)
    step = ops.prepare_masked_step([param], [torch.tensor([0, 3])], [param[[0, 3]].clone()], [torch.zeros(2)],
                                   [torch.zeros(2)])
    step.step([torch.randn(6)], library.AdamWSettings(step=1, lr=1e-2))
    names = [name for name, _ in guarded_calls]
    assert names == ["scatter_add_", "scatter_restore_", "masked_adamw_step_"], names
    assert all(device == cpu for _, device in guarded_calls), guarded_calls
