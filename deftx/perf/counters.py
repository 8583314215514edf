"""Count what a block of code asks of one device: launches, and the times the host waits for it.

``with count_device_work(device) as work: ...`` records, while the block runs:

* **torch launches** — a ``TorchDispatchMode`` sees every aten op after decomposition; an op
  that reads or writes a tensor on ``device`` counts as one launch unless it only makes a view,
  changes sizes / strides in place (``unsqueeze_``, ``t_``) or allocates (``empty``,
  ``lift_fresh``, ...). Copies count (``copy_``, ``_to_copy``). An op
  counts once even where its CUDA implementation launches several kernels (``cumsum``,
  ``repeat_interleave``), so this is a lower bound on kernels. Custom ops
  (``torch.ops.deftx.*``) are looked into: their aten ops count, not the op itself.
* **Triton launches** — every ``kernel[grid](...)``, compiled or interpreted.
* **host syncs** — every point where the host waits for the device's data:
  ``.item()`` / ``int()`` / ``bool()`` / ``float()`` of a device tensor (``_local_scalar_dense``),
  ``.tolist()`` / ``.numpy()`` of one, copies from the device to the host (``.cpu()``,
  ``.to("cpu")``; not a ``non_blocking`` one into pinned memory), blocking copies from pageable
  host memory to the device (torch waits for the stream before them), and ops whose output size
  depends on device data (``nonzero``, boolean indexing, ``repeat_interleave`` without
  ``output_size``, ``unique``...) or whose result the host reads (``equal``, ``allclose``, the
  error check of ``linalg.cholesky`` / ``inv`` / ``solve``).

Counting on ``cpu`` treats CPU tensors as device memory: a ``.tolist()`` of a CPU tensor is
then a sync, and a torch op on CPU tensors is a launch. Code that keeps its host-side
bookkeeping in Python values and moves it to the device with explicit copies (as the deftx
launchers do) therefore shows the same counts on CPU — Triton kernels run by the
interpreter, torch ops on CPU — as on a GPU, which is how the tests check the budgets here.

On CUDA, torch's own sync detector (``torch.cuda.set_sync_debug_mode``) also runs inside the
block; what it reports is kept apart in :attr:`DeviceWork.cuda_reported_syncs` as a cross-check.
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

NOT_LAUNCHES: frozenset[str] = frozenset({
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::new_empty",
    "aten::new_empty_strided", "aten::empty_permuted", "aten::lift_fresh", "aten::detach", "aten::detach_",
    "aten::alias",
    "aten::_unsafe_view", "aten::set_", "aten::resize_", "aten::is_pinned", "aten::_pin_memory",
    "aten::_local_scalar_dense",
})
"""Aten ops that allocate, alias or read metadata: no launch (views are recognised by schema, in-place
metadata changes such as ``unsqueeze_`` / ``t_`` / ``resize_as_`` by their ``inplace_view`` tag)."""

DATA_DEPENDENT_SHAPE: frozenset[str] = frozenset({
    "aten::nonzero", "aten::masked_select", "aten::_unique", "aten::_unique2", "aten::unique_dim",
    "aten::unique_consecutive", "aten::equal", "aten::allclose", "aten::is_nonzero", "aten::bincount",
    "aten::_linalg_check_errors",
})
"""Aten ops whose result size (or value) the host needs: they wait for the device. ``allclose`` returns
``isclose(...).all().item()``; ``_linalg_check_errors`` (the raising ``linalg.cholesky`` / ``inv`` /
``solve``...) reads ``infos.any().item()``."""

_BACKEND_KEYS = {"cpu": torch._C.DispatchKey.CPU, "cuda": torch._C.DispatchKey.CUDA, "meta": torch._C.DispatchKey.Meta}
"""Where a custom op's kernel is re-dispatched to, by device type."""

HOST_READS: frozenset[str] = frozenset({"tolist", "numpy"})
"""Tensor methods that hand device data to Python without an aten op the dispatcher sees."""


@dataclass
class DeviceWork:
    """What the code inside :func:`count_device_work` asked of :attr:`device`.

    Attributes:
        device: the counted device.
        torch_ops: launches by aten op name (``"aten::add"``).
        triton_launches: launches by Triton kernel name.
        syncs: host waits by cause (``"item"``, ``"tolist"``, ``"device-to-host copy"``,
            ``"blocking host-to-device copy"``, ``"aten::nonzero"``...).
        cuda_reported_syncs: on CUDA, how many syncs torch's sync debug mode reported; None
            elsewhere.
    """

    device: torch.device
    torch_ops: Counter[str] = field(default_factory=Counter)
    triton_launches: Counter[str] = field(default_factory=Counter)
    syncs: Counter[str] = field(default_factory=Counter)
    cuda_reported_syncs: int | None = None

    @property
    def launches(self) -> int:
        """Torch launches plus Triton launches."""
        return self.torch_op_count + self.triton_launch_count

    @property
    def torch_op_count(self) -> int:
        return sum(self.torch_ops.values())

    @property
    def triton_launch_count(self) -> int:
        return sum(self.triton_launches.values())

    @property
    def sync_count(self) -> int:
        return sum(self.syncs.values())

    def summary(self) -> str:
        """One line: totals, then the launches and syncs by name, most frequent first."""

        def listing(counter: Counter[str]) -> str:
            return ", ".join(f"{name} x{n}" for name, n in counter.most_common()) or "none"

        return (
            f"{self.launches} launches ({self.triton_launch_count} Triton: {listing(self.triton_launches)}; "
            f"{self.torch_op_count} torch: {listing(self.torch_ops)}), "
            f"{self.sync_count} host syncs ({listing(self.syncs)})"
        )


def _normalized(device: torch.device | str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def _tensors(tree: Any) -> list[torch.Tensor]:
    return [leaf for leaf in tree_leaves(tree) if isinstance(leaf, torch.Tensor)]


def _is_bool_index(func_name: str, args: tuple) -> bool:
    """``x[mask]`` / ``x[mask] = v``: an index list holding a boolean tensor."""
    if func_name not in ("aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"):
        return False
    indices = args[1] if len(args) > 1 else ()
    return any(isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices or ())


def _only_metadata(func) -> bool:
    """Whether an aten op only allocates, makes a view or changes sizes / strides in place: no kernel."""
    return func._schema.name in NOT_LAUNCHES or func.is_view or torch.Tag.inplace_view in func.tags


class _DispatchCounter(TorchDispatchMode):
    """Counts aten ops touching the device as launches, and those that wait for it as syncs."""

    def __init__(self, work: DeviceWork) -> None:
        super().__init__()
        self.work = work
        self.quiet_syncs = 0  # > 0 inside a host read already counted by the function mode
        self.in_kernel = 0  # > 0 inside a Triton launch: the interpreter's own copies are not the code's

    def _on_device(self, tensor: torch.Tensor) -> bool:
        return tensor.device == self.work.device

    def _copy_sync(self, name: str, args: tuple, kwargs: dict, out: Any) -> str | None:
        """Cause of the host wait of a copy, or None when the copy does not wait."""
        if name == "aten::copy_":
            dst, src = args[0], args[1]
            non_blocking = bool(args[2]) if len(args) > 2 else bool(kwargs.get("non_blocking", False))
        elif name == "aten::_to_copy" and isinstance(out, torch.Tensor):
            src, dst = args[0], out
            non_blocking = bool(kwargs.get("non_blocking", False))
        else:
            return None
        if self._on_device(src) and not self._on_device(dst) and dst.device.type == "cpu":
            return None if non_blocking and dst.is_pinned() else "device-to-host copy"
        host_to_device = self.work.device.type != "cpu" and self._on_device(dst) and src.device.type == "cpu"
        if host_to_device and not (non_blocking and src.is_pinned()):
            return "blocking host-to-device copy"
        return None

    def _sync_cause(self, func, args: tuple, kwargs: dict, out: Any) -> str | None:
        name = func._schema.name
        if name == "aten::_local_scalar_dense":
            return "item"
        if name in DATA_DEPENDENT_SHAPE or _is_bool_index(name, args):
            return name
        if func is torch.ops.aten.repeat_interleave.Tensor and kwargs.get("output_size") is None:
            return name  # repeats given as a tensor: the output size is their sum
        return self._copy_sync(name, args, kwargs, out)

    def _run_custom_op(self, func, args: tuple, kwargs: dict) -> Any:
        """Run a non-aten op's kernel with this mode active, so that its aten ops are counted.

        (Inside ``__torch_dispatch__`` the mode is off: a plain call would hide them.)
        """
        tensors = _tensors((args, kwargs))
        key = _BACKEND_KEYS.get(tensors[0].device.type) if tensors else None
        if key is None:
            return func(*args, **kwargs)
        with self:
            return func.redispatch(torch._C.DispatchKeySet(key), *args, **kwargs)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace != "aten":
            return self._run_custom_op(func, args, kwargs)
        out = func(*args, **kwargs)
        if self.in_kernel or not any(self._on_device(t) for t in _tensors((args, kwargs, out))):
            return out
        name = func._schema.name
        cause = self._sync_cause(func, args, kwargs, out)
        if not _only_metadata(func) and cause != "device-to-host copy":
            self.work.torch_ops[name] += 1
        if cause is not None and not self.quiet_syncs:
            self.work.syncs[cause] += 1
        return out


class _HostReadCounter(TorchFunctionMode):
    """Counts ``.tolist()`` / ``.numpy()`` of device tensors (the dispatcher may see no op)."""

    def __init__(self, dispatch: _DispatchCounter) -> None:
        super().__init__()
        self.dispatch = dispatch

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        if name not in HOST_READS or not args or not isinstance(args[0], torch.Tensor):
            return func(*args, **kwargs)
        if not self.dispatch._on_device(args[0]):
            return func(*args, **kwargs)
        self.dispatch.work.syncs[name] += 1
        self.dispatch.quiet_syncs += 1
        try:
            return func(*args, **kwargs)
        finally:
            self.dispatch.quiet_syncs -= 1


@contextlib.contextmanager
def _count_triton_launches(work: DeviceWork, dispatch: _DispatchCounter) -> Iterator[None]:
    """Count every ``kernel[grid](...)`` (``KernelInterface.__getitem__``, shared by compiled
    and interpreted kernels) while the block runs; the torch ops the interpreter runs to move
    a kernel's arguments are part of the launch, not counted."""
    try:
        from triton.runtime.jit import KernelInterface
    except ImportError:
        yield
        return
    original = KernelInterface.__getitem__

    def counted_getitem(kernel, grid):
        launch = original(kernel, grid)
        name = getattr(getattr(kernel, "fn", None), "__name__", type(kernel).__name__)

        def counted_launch(*args, **kwargs):
            work.triton_launches[name] += 1
            dispatch.in_kernel += 1
            try:
                return launch(*args, **kwargs)
            finally:
                dispatch.in_kernel -= 1

        return counted_launch

    KernelInterface.__getitem__ = counted_getitem
    try:
        yield
    finally:
        KernelInterface.__getitem__ = original


SYNC_WARNING = "synchronizing CUDA operation"
"""What torch's sync debug mode (``torch.cuda.set_sync_debug_mode("warn")``) says at each host sync."""


def sync_reports_kept(caught: Sequence[warnings.WarningMessage]) -> list[warnings.WarningMessage]:
    """Torch's sync-debug reports among the ``caught`` warnings; the others (the counted code's own) are
    issued again, the caller's to see."""
    reports = [w for w in caught if SYNC_WARNING in str(w.message)]
    for w in caught:
        if w not in reports:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    return reports


@contextlib.contextmanager
def _cuda_sync_reports(work: DeviceWork) -> Iterator[None]:
    """On CUDA, let torch's sync debug mode warn inside the block and count its warnings; the
    block's other warnings are issued again to the caller."""
    if work.device.type != "cuda":
        yield
        return
    previous = torch.cuda.get_sync_debug_mode()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            yield
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    work.cuda_reported_syncs = len(sync_reports_kept(caught))


@contextlib.contextmanager
def count_device_work(device: torch.device | str) -> Iterator[DeviceWork]:
    """Record the launches and host syncs on ``device`` of the code inside the block.

    Example::

        with count_device_work("cuda") as work:
            masked_adamw_step_(...)
        print(work.summary())     # work.launches, work.sync_count, work.syncs ...

    The record is complete when the block exits. Python-level work (argument checks,
    building lists) is not counted: only what reaches the device or waits for it.
    """
    work = DeviceWork(device=_normalized(device))
    dispatch = _DispatchCounter(work)
    with _cuda_sync_reports(work), _count_triton_launches(work, dispatch), _HostReadCounter(dispatch), dispatch:
        yield work
