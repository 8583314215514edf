"""deftx.perf.counters: what counts as a launch and as a host sync, on known torch code."""

from __future__ import annotations

import pytest
import torch

from deftx.kernels import kernel_module
from deftx.ops import library
from deftx.ops.settings import AdamWSettings, MaskedStepTensors
from deftx.perf.counters import count_device_work


def test_device_ops_are_launches_views_and_allocations_are_not():
    x = torch.arange(12.0)
    with count_device_work("cpu") as work:
        y = x + 1
        torch.cumsum(y, 0)
        x.view(3, 4)[1:]
        torch.empty(5)
        x.clone()
    assert work.torch_ops == {"aten::add": 1, "aten::cumsum": 1, "aten::clone": 1}
    assert work.launches == 3 and work.sync_count == 0


def test_metadata_changes_in_place_and_permuted_allocations_are_not_launches():
    """``unsqueeze_`` / ``t_`` / ``resize_as_`` only rewrite sizes and strides (torch tags them
    ``inplace_view``), ``empty_permuted`` only allocates: no kernel runs."""
    x = torch.arange(6.0).reshape(2, 3)
    y = x.clone()
    with count_device_work("cpu") as work:
        y.unsqueeze_(0).squeeze_(0).t_()
        torch.empty(0).resize_as_(x)
        torch.empty_permuted((2, 3), (1, 0))
        y.add_(1)
    assert work.torch_ops == {"aten::add_": 1}, work.summary()


def test_host_reads_are_syncs():
    x = torch.tensor([3, 1, 2])
    with count_device_work("cpu") as work:
        x[0].item()
        int(x[1])
        bool(x[2] > 1)
        float(x.sum())
        x.tolist()
        x.numpy()
    assert work.syncs == {"item": 4, "tolist": 1, "numpy": 1}


def test_data_dependent_output_sizes_are_syncs():
    x = torch.tensor([0.0, 2.0, -1.0, 3.0])
    counts = torch.tensor([1, 0, 2, 1])
    with count_device_work("cpu") as work:
        x.nonzero()
        x[x > 0]
        torch.repeat_interleave(counts)
        torch.repeat_interleave(counts, output_size=4)  # the size is given: no sync
        torch.repeat_interleave(x, 2)  # repeats known on the host: no sync
        torch.equal(x, x)
        torch.bincount(counts, minlength=8)  # CUDA reads the largest value to size the output, whatever minlength
    assert work.syncs == {"aten::nonzero": 1, "aten::index": 1, "aten::repeat_interleave": 1, "aten::equal": 1,
                          "aten::bincount": 1}


def test_ops_whose_result_the_host_reads_are_syncs():
    """``allclose`` returns a Python bool (``isclose(...).all().item()``), and the raising forms of
    ``linalg.cholesky`` / ``inv`` / ``solve`` read the error codes (``_linalg_check_errors``:
    ``infos.any().item()``): each waits for the device. The ``_ex`` forms leave the codes on it."""
    a = torch.tensor([[4.0, 1.0], [1.0, 3.0]])
    with count_device_work("cpu") as work:
        torch.allclose(a, a)
        torch.linalg.cholesky(a)
        torch.linalg.inv(a)
        torch.linalg.solve(a, a)
        torch.linalg.cholesky_ex(a)  # info stays a tensor: no sync
    assert work.syncs == {"aten::allclose": 1, "aten::_linalg_check_errors": 3}


def test_other_devices_are_not_counted():
    x = torch.ones(4)
    with count_device_work("meta") as work:
        (x * 2).tolist()
        y = torch.ones(4, device="meta") * 2
    assert work.torch_ops == {"aten::ones": 1, "aten::mul": 1} and work.sync_count == 0
    assert y.device.type == "meta"


def test_a_copy_to_another_device_is_a_launch_not_a_host_wait():
    """Only a copy to the host waits for the device; one to another device (``cuda:0`` -> ``cuda:1``,
    here ``cpu`` -> ``meta``) is queued like any other work."""
    x = torch.ones(4)
    elsewhere = torch.empty(4, device="meta")
    with count_device_work("cpu") as work:
        x.to("meta")
        elsewhere.copy_(x)
    assert work.torch_ops == {"aten::_to_copy": 1, "aten::copy_": 1} and work.sync_count == 0, work.summary()


def test_blocking_copy_to_the_device_is_a_sync():
    host = torch.ones(4)
    device = torch.empty(4, device="meta")
    with count_device_work("meta") as work:
        device.copy_(host)
        device.copy_(host, non_blocking=True)  # from pageable memory: torch waits anyway
    assert work.syncs == {"blocking host-to-device copy": 2}
    assert work.torch_ops == {"aten::copy_": 2}


def test_custom_ops_are_looked_into():
    dense = torch.zeros(6)
    index, saved = torch.tensor([1, 4]), torch.tensor([5.0, 7.0])
    with count_device_work("cpu") as work:
        library.scatter_restore([dense], [index], [saved], "torch")
    assert dense.tolist() == [0.0, 5.0, 0.0, 0.0, 7.0, 0.0]
    assert set(work.torch_ops) == {"aten::index_put_"} and "deftx::scatter_restore_" not in work.torch_ops


def test_triton_launches_count_and_the_interpreter_copies_do_not():
    masked_step = kernel_module("masked_step", interpret=True)
    param, grad = torch.randn(10), torch.randn(10)
    index = torch.tensor([1, 5, 8])
    state = [param[index].clone(), torch.zeros(3), torch.zeros(3)]
    tensors = MaskedStepTensors([param], [grad], [index], [state[0]], [state[1]], [state[2]])
    masked_step.masked_adamw_step_(tensors, AdamWSettings(1, 0.1, beta2=0.99))  # builds and uploads its tables
    with count_device_work("cpu") as work:
        masked_step.masked_adamw_step_(tensors, AdamWSettings(2, 0.1, beta2=0.99))
    assert work.triton_launches == {"_masked_adamw_kernel": 1}
    assert work.torch_op_count == 0 and work.sync_count == 0


def test_summary_names_every_count():
    x = torch.arange(4)
    with count_device_work("cpu") as work:
        (x + 1).tolist()
    assert work.summary() == "1 launches (0 Triton: none; 1 torch: aten::add x1), 1 host syncs (tolist x1)"


def test_only_a_blocking_copy_to_the_host_waits():
    """A device-to-host copy waits unless it is ``non_blocking`` into pinned memory (torch then only
    queues ``cudaMemcpyAsync``; into pageable memory the copy returns when done). Judged on stand-ins
    for a CUDA tensor and host buffers: no GPU here."""
    from types import SimpleNamespace

    from deftx.perf.counters import DeviceWork, _DispatchCounter

    cuda = torch.device("cuda", 0)
    counter = _DispatchCounter(DeviceWork(cuda))
    on_device = SimpleNamespace(device=cuda, is_pinned=lambda: False)
    pinned = SimpleNamespace(device=torch.device("cpu"), is_pinned=lambda: True)
    pageable = SimpleNamespace(device=torch.device("cpu"), is_pinned=lambda: False)
    assert counter._copy_sync("aten::copy_", (pinned, on_device, True), {}, None) is None
    assert counter._copy_sync("aten::copy_", (pinned, on_device), {"non_blocking": True}, None) is None
    assert counter._copy_sync("aten::copy_", (pageable, on_device, True), {}, None) == "device-to-host copy"
    assert counter._copy_sync("aten::copy_", (pinned, on_device), {}, None) == "device-to-host copy"


def test_the_cuda_sync_detector_keeps_the_block_s_other_warnings(monkeypatch):
    """On CUDA the block runs under torch's sync debug mode and its warnings are caught to count
    the sync reports; every other warning of the block still reaches the caller. (The mode's
    switch is stubbed: no GPU here.)"""
    import warnings

    from deftx.perf.counters import DeviceWork, _cuda_sync_reports

    modes = []
    monkeypatch.setattr(torch.cuda, "get_sync_debug_mode", lambda: 0)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", modes.append)
    work = DeviceWork(torch.device("cuda", 0))
    with pytest.warns(RuntimeWarning, match="rounding loss") as seen, _cuda_sync_reports(work):
        warnings.warn("called a synchronizing CUDA operation", UserWarning, stacklevel=1)
        warnings.warn("rounding loss in 3 entries", RuntimeWarning, stacklevel=1)
    assert work.cuda_reported_syncs == 1 and modes == ["warn", 0]
    assert [str(w.message) for w in seen] == ["rounding loss in 3 entries"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_copies_and_torch_sync_reports():
    device = torch.device("cuda")
    pinned = torch.ones(4).pin_memory()
    with count_device_work(device) as work:
        x = torch.empty(4, device=device)
        x.copy_(pinned, non_blocking=True)  # asynchronous: no sync
        x.cpu()
        x.to("cpu", non_blocking=True)  # into pinned memory torch allocates: no wait
    assert work.syncs == {"device-to-host copy": 1}
    assert work.cuda_reported_syncs is not None and work.cuda_reported_syncs >= 1
