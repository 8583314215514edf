"""The ops registered with ``torch.library`` (namespace ``deftx``), with fake implementations.

Registering them makes the ops opaque, shape-aware nodes under ``torch.compile`` and
``torch.export``: the compiler never traces into a backend, and the fake (meta)
implementations give output shapes without running anything. The public functions in
:mod:`deftx.ops` validate their inputs and then call these.

Eager calls of the pure ops (``topk_indices``, ``randomized_svd``, ``difference_energy``,
``reconstruct_abs``) run their implementation directly: the first call of any
``torch.library`` custom op imports ``torch._dynamo`` (1.1-1.6 s on 2 cores), which an eager
selection does not need. Under ``torch.compile`` / ``torch.export`` tracing, a dispatch mode
(``make_fx``, fake tensors) or tensor subclasses (:func:`is_traced`), they go through the
registered op. The public scatter goes through its op always (the op bumps the version
counters of the tensors it writes, which the kernels writing through raw pointers do not); the
masked step's eager path (:func:`masked_adamw_step`) bumps them itself, in one call.

Nested per-diff lists are flattened row-major (diff-major) to ``Tensor[]``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TypeVar

import torch
from torch.autograd.graph import increment_version

from deftx.ops.dispatch import backend_for, common_device, device_guard
from deftx.ops.settings import AdamWSettings, MaskedStepTensors

Result = TypeVar("Result")


def _rows(flat: list[torch.Tensor], width: int) -> list[list[torch.Tensor]]:
    return [flat[i : i + width] for i in range(0, len(flat), width)] if width else []


def is_traced(tensors: Iterable[torch.Tensor | None]) -> bool:
    """Whether a call on ``tensors`` is being compiled or traced rather than run eagerly.

    True under ``torch.compile`` (dynamo), with a Python dispatch mode active (``make_fx``,
    ``FakeTensorMode``, functionalization) or when a tensor is a subclass that handles its own
    dispatch (fake, functional, DTensor). Checking imports nothing.
    """
    if torch.compiler.is_compiling() or torch._C._len_torch_dispatch_stack() > 0:
        return True
    python_key = torch._C.DispatchKey.Python
    return any(t is not None and torch._C._dispatch_keys(t).has(python_key) for t in tensors)


def _eager_or_op(op: Callable[..., Result], implementation: Callable[..., Result],
                 tensors: Iterable[torch.Tensor | None], *args: object) -> Result:
    """``implementation(*args)`` when eager, else the registered ``op(*args)``."""
    return op(*args) if is_traced(tensors) else implementation(*args)


def _topk_indices(
    tensors: list[torch.Tensor], bases: list[torch.Tensor | None], k: int, concatenated: bool, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    device = common_device([*tensors, *(b for b in bases if b is not None)], "topk_indices")
    with device_guard(device):
        return backend_for("topk", device, backend).topk_indices(tensors, k, bases or None, concatenated)


_topk_indices_op = torch.library.custom_op("deftx::topk_indices", mutates_args=())(_topk_indices)


@_topk_indices_op.register_fake
def _topk_indices_fake(tensors, bases, k, concatenated, backend):
    first = tensors[0] if tensors else torch.empty(0)
    return first.new_empty(k, dtype=torch.int64), first.new_empty(len(tensors) + 1, dtype=torch.int64)


def topk_indices(
    tensors: list[torch.Tensor], bases: list[torch.Tensor | None], k: int, concatenated: bool, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Global top-k of checked inputs: (all indices (k,), stats (T + 1,)), on their device.

    The score of tensor t's entries is ``|x|``, or ``|fl32(f32(x) − f32(bases[t]))|`` where
    ``bases`` (empty, or one per tensor) holds a tensor. ``indices`` holds every tensor's
    sorted flat indices in tensor order (positions in the concatenation of the flattened
    tensors when ``concatenated``); ``stats`` the number of indices of each tensor, then the
    number of NaN scores (when it is not 0 the indices are meaningless). One flat buffer
    instead of T outputs: a custom op's outputs must not alias each other, and the caller
    reads ``stats`` once.
    """
    return _eager_or_op(_topk_indices_op, _topk_indices, [*tensors, *bases], tensors, bases, k, concatenated,
                        backend)


@torch.library.custom_op("deftx::scatter_add_", mutates_args=("dense", "saved_out"))
def scatter_add(
    dense: list[torch.Tensor],
    indices: list[torch.Tensor],
    values: list[torch.Tensor],
    scales: list[float],
    saved_out: list[torch.Tensor],
    backend: str,
) -> None:
    """Scatter-add of D diffs (flattened D*T lists).

    ``saved_out`` is empty (nothing saved) or D*T preallocated tensors that the backend
    writes the original values at the indices into (outputs are written into arguments so
    that the op has no aliased return values, which functionalization under torch.compile
    requires).
    """
    device = common_device(dense, "scatter_add_")
    width = len(dense)
    with device_guard(device):
        backend_for("scatter", device, backend).scatter_add_(
            dense, _rows(indices, width), _rows(values, width), scales, bool(saved_out), _rows(saved_out, width) or None
        )


@scatter_add.register_fake
def _scatter_add_fake(dense, indices, values, scales, saved_out, backend) -> None:
    return None


@torch.library.custom_op("deftx::scatter_restore_", mutates_args=("dense",))
def scatter_restore(
    dense: list[torch.Tensor], indices: list[torch.Tensor], saved: list[torch.Tensor], backend: str
) -> None:
    """Write saved values back (flattened D*T lists)."""
    device = common_device(dense, "scatter_restore_")
    width = len(dense)
    with device_guard(device):
        backend_for("scatter", device, backend).scatter_restore_(dense, _rows(indices, width), _rows(saved, width))


@scatter_restore.register_fake
def _scatter_restore_fake(dense, indices, saved, backend) -> None:
    return None


def _masked_adamw_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    indices: list[torch.Tensor],
    masters: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    bases: list[torch.Tensor],
    step: int,
    hyperparameters: list[float],
    backend: str,
) -> None:
    tensors = MaskedStepTensors(params, grads, indices, masters, exp_avgs, exp_avg_sqs, bases or None)
    device = common_device(params, "masked_adamw_step_")
    run_step = backend_for("masked_step", device, backend).masked_adamw_step_
    with device_guard(device):
        run_step(tensors, AdamWSettings.from_op(step, hyperparameters))


_masked_adamw_step_op = torch.library.custom_op(
    "deftx::masked_adamw_step_", mutates_args=("params", "masters", "exp_avgs", "exp_avg_sqs")
)(_masked_adamw_step)


@_masked_adamw_step_op.register_fake
def _masked_adamw_step_fake(*args) -> None:
    return None


def masked_adamw_step(tensors: MaskedStepTensors, settings: AdamWSettings, backend: str) -> None:
    """Masked AdamW step of checked tensors, ``params`` non-empty.

    The op takes the tensor lists (``bases`` empty when None), ``settings.step`` and
    :meth:`~AdamWSettings.hyperparameters`. Eager: the implementation, then one call that bumps
    the version counters of the tensors written, as the op would (autograd sees the in-place
    update). Traced, or on meta tensors: the registered op (its fake does nothing).
    """
    lists = [list(t) for t in tensors[:-1]]
    args = (*lists, list(tensors.bases or []), settings.step, settings.hyperparameters(), backend)
    if tensors.params[0].is_meta or is_traced([*tensors.params, *tensors.grads]):
        _masked_adamw_step_op(*args)
        return
    _masked_adamw_step(*args)
    increment_version([*tensors.params, *tensors.masters, *tensors.exp_avgs, *tensors.exp_avg_sqs])


def _randomized_svd(
    w1s: list[torch.Tensor], w0s: list[torch.Tensor], omega: torch.Tensor, n_iter: int, precision: str, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    device = common_device([*w1s, *w0s, omega], "randomized_svd")
    with device_guard(device):
        return backend_for("rsvd", device, backend).randomized_svd_group(
            w1s, w0s or None, omega, n_iter, precision=precision
        )


_randomized_svd_op = torch.library.custom_op("deftx::randomized_svd", mutates_args=())(_randomized_svd)


@_randomized_svd_op.register_fake
def _randomized_svd_fake(w1s, w0s, omega, n_iter, precision, backend):
    (m, n), q = w1s[0].shape, omega.shape[1]
    k = min(m, n, q)
    batch = len(w1s)
    return (
        omega.new_empty(batch, m, k),
        omega.new_empty(batch, k),
        omega.new_empty(batch, k, n),
    )


def randomized_svd(
    w1s: list[torch.Tensor], w0s: list[torch.Tensor], omega: torch.Tensor, n_iter: int, precision: str, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Randomized SVD of G >= 1 same-shape differences with one shared sketch (``w0s`` empty: no base).

    Returns U (G, m, k), S (G, k), Vh (G, k, n) fp32 with k = min(m, n, q), omega (n, q).
    """
    return _eager_or_op(_randomized_svd_op, _randomized_svd, [*w1s, *w0s, omega], w1s, w0s, omega, n_iter,
                        precision, backend)


def _difference_energy(w1s: list[torch.Tensor], w0s: list[torch.Tensor], backend: str) -> torch.Tensor:
    device = common_device([*w1s, *w0s], "difference_energy")
    with device_guard(device):
        return backend_for("rsvd", device, backend).difference_energy(w1s, w0s or None)


_difference_energy_op = torch.library.custom_op("deftx::difference_energy", mutates_args=())(_difference_energy)


@_difference_energy_op.register_fake
def _difference_energy_fake(w1s, w0s, backend):
    return w1s[0].new_empty(len(w1s), dtype=torch.float64)


def difference_energy(w1s: list[torch.Tensor], w0s: list[torch.Tensor], backend: str) -> torch.Tensor:
    """``||f32(w1s[g]) − f32(w0s[g])||_F²`` of G same-shape pairs as (G,) fp64 (``w0s`` empty: no base)."""
    return _eager_or_op(_difference_energy_op, _difference_energy, [*w1s, *w0s], w1s, w0s, backend)


def _reconstruct_abs(
    us: list[torch.Tensor], ss: list[torch.Tensor], vhs: list[torch.Tensor], precision: str, backend: str
) -> list[torch.Tensor]:
    device = common_device([*us, *ss, *vhs], "reconstruct_abs")
    with device_guard(device):
        return backend_for("rsvd", device, backend).reconstruct_magnitudes(us, ss, vhs, precision=precision)


_reconstruct_abs_op = torch.library.custom_op("deftx::reconstruct_abs", mutates_args=())(_reconstruct_abs)


@_reconstruct_abs_op.register_fake
def _reconstruct_abs_fake(us, ss, vhs, precision, backend):
    return [u.new_empty(u.shape[0], vh.shape[1], dtype=torch.float32) for u, vh in zip(us, vhs, strict=True)]


def reconstruct_abs(
    us: list[torch.Tensor], ss: list[torch.Tensor], vhs: list[torch.Tensor], precision: str, backend: str
) -> list[torch.Tensor]:
    """``|us[i] diag(ss[i]) vhs[i]|`` of validated fp32 factors: one new (m_i, n_i) fp32 tensor each."""
    return _eager_or_op(_reconstruct_abs_op, _reconstruct_abs, [*us, *ss, *vhs], us, ss, vhs, precision, backend)
