"""One dispatch layer for every op: pick the triton / native / torch backend per call.

``backend`` (argument of every public op) or the environment variable
``DEFTX_BACKEND`` selects: ``"auto"`` (default), ``"triton"``, ``"native"`` or
``"torch"``.

* ``"auto"``: Triton for CUDA tensors, the native C++ library for CPU tensors when it
  was built and implements the op, otherwise the torch reference (with a warning once when
  the missing backend implements the op).
* ``"triton"`` on CPU tensors runs the kernel under the Triton interpreter (slow; for
  checking kernels anywhere) and says so once.
* An explicitly requested backend that cannot run raises :class:`BackendUnavailableError`.

The ops and their backends are those of the registry (:data:`deftx.ops.registry.OPS`). Each
backend is a module with the same functions (see ``/deftx/ops/reference``):
``deftx.ops.reference.<op>``, ``deftx.ops.native.<op>``, ``deftx.kernels.<op>``.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import os
import warnings
from types import ModuleType

import torch

from deftx.ops.registry import BACKENDS, OPS, op_entry

ENV_VAR = "DEFTX_BACKEND"


ACCELERATED_BACKEND: dict[str, str] = {"cuda": "triton", "cpu": "native"}
"""Device type -> the backend ``auto`` runs there when it can (the torch reference otherwise, with a
warning once for an op that backend implements)."""


class BackendUnavailableError(RuntimeError):
    """An explicitly requested backend cannot run this op on this device."""


def requested_backend(backend: str | None, op: str | None = None) -> str:
    """The backend asked for: the argument, else ``$DEFTX_BACKEND``, else ``"auto"``.

    ``$DEFTX_BACKEND`` is a preference for every op: for an ``op`` its backend does not implement
    at all (the native library has no rSVD) it gives ``"auto"``, with a warning once. A backend
    passed as the argument is returned as it is (one that cannot run ``op`` raises later).
    """
    if backend is not None and not isinstance(backend, str):
        raise TypeError(f"backend must be one of the strings auto, {', '.join(BACKENDS)}, got "
                        f"{type(backend).__name__} {backend!r}")
    value = backend if backend is not None else os.environ.get(ENV_VAR, "auto")
    value = value.strip().lower()
    if value not in ("auto", *BACKENDS):
        source = "backend argument" if backend is not None else f"${ENV_VAR}"
        raise ValueError(f"{source} is {value!r}; expected one of auto, {', '.join(BACKENDS)}")
    if backend is None and op is not None and value != "auto" and value not in op_entry(op).backends:
        _warn_once(f"deftx: ${ENV_VAR}={value} does not implement {op!r}; it runs on the automatic choice")
        value = "auto"
    return value


@functools.cache
def triton_unavailable_reason() -> str | None:
    """Why Triton cannot be used at all (not installed / broken), or None."""
    try:
        importlib.import_module("triton")
    except Exception as err:  # an import of a broken install raises anything
        return f"triton cannot be imported ({err.__class__.__name__}: {err})"
    return None


def native_unavailable_reason(op: str) -> str | None:
    """Why the native C++ backend cannot run ``op`` on CPU tensors, or None."""
    missing = op_entry(op).native_missing
    if missing is not None:
        return missing
    try:
        native = importlib.import_module("deftx.ops.native")
    except ImportError as err:
        return f"deftx.ops.native cannot be imported ({err})"
    return native.unavailable_reason()


def _native_origin() -> str:
    """Where the loaded native library comes from, for ``deftx doctor``."""
    native = importlib.import_module("deftx.ops.native")
    if os.environ.get(native.LIBRARY_ENV):
        return f"native C++ library (OpenMP) from ${native.LIBRARY_ENV} ({native.library_path()})"
    return "native C++ library (OpenMP) is built"


def unavailable_reason(op: str, backend: str, device_type: str) -> str | None:
    """Why ``backend`` cannot run ``op`` on ``device_type`` tensors, or None if it can."""
    op_entry(op)
    if backend == "torch":
        return None
    if backend == "triton":
        if device_type not in ("cuda", "cpu"):
            return f"Triton kernels run on CUDA tensors (or CPU via the interpreter), not {device_type}"
        return triton_unavailable_reason()
    if backend == "native":
        if device_type != "cpu":
            return f"the native backend runs on CPU tensors, not {device_type}"
        return native_unavailable_reason(op)
    raise ValueError(f"unknown backend {backend!r}")


def auto_backend(op: str, device_type: str) -> tuple[str, str]:
    """The backend ``"auto"`` picks for ``op`` on ``device_type``, and why."""
    if device_type == "cuda":
        reason = unavailable_reason(op, "triton", "cuda")
        if reason is None:
            return "triton", "CUDA tensors run the Triton kernel"
        return "torch", f"Triton unavailable: {reason}"
    if device_type == "cpu":
        reason = unavailable_reason(op, "native", "cpu")
        if reason is None:
            return "native", _native_origin()
        return "torch", reason
    return "torch", f"no accelerated backend for {device_type} tensors"


@functools.cache
def _warn_once(message: str) -> None:
    warnings.warn(message, stacklevel=4)


def resolve(op: str, device: torch.device, backend: str | None = None) -> str:
    """The backend that runs ``op`` on ``device`` for the requested ``backend`` (see
    :func:`requested_backend`); one that cannot run there raises :class:`BackendUnavailableError`."""
    wanted = requested_backend(backend, op)
    if wanted == "auto":
        chosen, why = auto_backend(op, device.type)
        accelerated = ACCELERATED_BACKEND.get(device.type)
        if chosen == "torch" and accelerated in op_entry(op).backends:
            name = "Triton" if accelerated == "triton" else accelerated
            _warn_once(f"deftx: the {name} backend is unavailable for {device.type} tensors ({why}); using the "
                       "PyTorch backend (run `deftx doctor` for details)")
        return chosen
    reason = unavailable_reason(op, wanted, device.type)
    if reason is not None:
        raise BackendUnavailableError(f"{op}: backend {wanted!r} cannot run on {device}: {reason}")
    if wanted == "triton" and device.type == "cpu":
        _warn_once(f"deftx: running the Triton kernel of {op!r} on CPU tensors under the Triton interpreter "
                   "(correct but slow; meant for checking kernels without a GPU)")
    return wanted


def implementation(op: str, backend: str, device: torch.device) -> ModuleType:
    """The module holding ``backend``'s functions for ``op``."""
    return op_entry(op).backend_module(backend, interpret=device.type != "cuda")


def backend_for(op: str, device: torch.device, backend: str | None = None) -> ModuleType:
    """Resolve and load in one step: the module whose functions run ``op`` on ``device``."""
    return implementation(op, resolve(op, device, backend), device)


def device_guard(device: torch.device) -> contextlib.AbstractContextManager:
    """A context in which ``device`` is the current CUDA device (a no-op for other devices).

    Triton launches on the current device's current stream, not on its arguments' device: a
    kernel for ``cuda:1`` tensors called while ``cuda:0`` is current would run on ``cuda:0``.
    Every backend call on CUDA tensors runs inside this guard.
    """
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def common_device(tensors: list[torch.Tensor], what: str) -> torch.device:
    """The one device all ``tensors`` live on; raises if they are spread over several."""
    devices = {t.device for t in tensors}
    if len(devices) > 1:
        names = ", ".join(sorted(str(d) for d in devices))
        raise ValueError(f"{what}: all tensors must be on one device, got {names}")
    return devices.pop() if devices else torch.device("cpu")


def call_backend(op: str, device_type: str) -> tuple[str, str]:
    """The backend a call of ``op`` on ``device_type`` tensors without a ``backend`` argument runs
    (``$DEFTX_BACKEND``, else ``auto``: :func:`resolve`), and why; one that cannot run there is named
    with the error its calls raise. An invalid ``$DEFTX_BACKEND`` gives ``auto``'s choice (every call
    raises; ``deftx doctor`` says so apart)."""
    wanted = os.environ.get(ENV_VAR, "auto").strip().lower()
    if wanted == "auto" or wanted not in BACKENDS:
        return auto_backend(op, device_type)
    if wanted not in op_entry(op).backends:
        chosen, why = auto_backend(op, device_type)
        return chosen, f"${ENV_VAR}={wanted} does not implement {op!r}, so auto: {why}"
    reason = unavailable_reason(op, wanted, device_type)
    if reason is not None:
        return wanted, f"${ENV_VAR}={wanted}, which cannot run here: calls raise BackendUnavailableError ({reason})"
    if wanted == "triton" and device_type == "cpu":
        return wanted, f"${ENV_VAR}={wanted}: the Triton kernel under the Triton interpreter (correct but slow)"
    return wanted, f"${ENV_VAR}={wanted}"


def backend_report() -> list[dict[str, str]]:
    """For ``deftx doctor``: which backend a call of each op runs on each device (:func:`call_backend`:
    ``$DEFTX_BACKEND``, else ``auto``), and why."""
    rows = []
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for op in OPS:
        for device_type in devices:
            chosen, why = call_backend(op, device_type)
            rows.append({"op": op, "device": device_type, "backend": chosen, "why": why})
        if not torch.cuda.is_available():
            chosen, why = call_backend(op, "cuda")
            rows.append({"op": op, "device": "cuda (none here)", "backend": chosen, "why": why})
    return rows
