"""The ops registered with ``torch.library`` (namespace ``deftx``), with fake implementations.

Registering them makes the ops opaque, shape-aware nodes under ``torch.compile`` and
``torch.export``: the compiler never traces into a backend, and the fake (meta)
implementations give output shapes without running anything. The public functions in
:mod:`deftx.ops` validate their inputs and then call these.

Nested per-diff lists are flattened row-major (diff-major) to ``Tensor[]``.
"""

from __future__ import annotations

import torch

from deftx.ops.dispatch import backend_for, common_device


def _rows(flat: list[torch.Tensor], width: int) -> list[list[torch.Tensor]]:
    return [flat[i : i + width] for i in range(0, len(flat), width)] if width else []


@torch.library.custom_op("deftx::topk_indices", mutates_args=())
def topk_indices(tensors: list[torch.Tensor], k: int, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Global top-k |x| of checked inputs: (all indices (k,), stats (T + 1,)), on their device.

    ``indices`` holds every tensor's sorted flat indices, in tensor order; ``stats`` the
    number of indices of each tensor, then the number of NaN entries (when it is not 0 the
    indices are meaningless). One flat buffer instead of T outputs: a custom op's outputs
    must not alias each other, and the caller reads ``stats`` once.
    """
    device = common_device(tensors, "topk_indices")
    return backend_for("topk", device, backend).topk_indices(tensors, k)


@topk_indices.register_fake
def _topk_indices_fake(tensors: list[torch.Tensor], k: int, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    first = tensors[0] if tensors else torch.empty(0)
    return first.new_empty(k, dtype=torch.int64), first.new_empty(len(tensors) + 1, dtype=torch.int64)


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
    backend_for("scatter", device, backend).scatter_restore_(dense, _rows(indices, width), _rows(saved, width))


@scatter_restore.register_fake
def _scatter_restore_fake(dense, indices, saved, backend) -> None:
    return None


@torch.library.custom_op("deftx::masked_adamw_step_", mutates_args=("params", "masters", "exp_avgs", "exp_avg_sqs"))
def masked_adamw_step(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    indices: list[torch.Tensor],
    masters: list[torch.Tensor],
    exp_avgs: list[torch.Tensor],
    exp_avg_sqs: list[torch.Tensor],
    bases: list[torch.Tensor],
    step: int,
    lr: float,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    l1: float,
    backend: str,
) -> None:
    """Masked AdamW step (``bases`` empty when unused)."""
    device = common_device(params, "masked_adamw_step_")
    backend_for("masked_step", device, backend).masked_adamw_step_(
        params,
        grads,
        indices,
        masters,
        exp_avgs,
        exp_avg_sqs,
        bases or None,
        step=step,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        l1=l1,
    )


@masked_adamw_step.register_fake
def _masked_adamw_step_fake(params, grads, indices, masters, exp_avgs, exp_avg_sqs, bases, *rest) -> None:
    return None


@torch.library.custom_op("deftx::randomized_svd", mutates_args=())
def randomized_svd(
    w1s: list[torch.Tensor], w0s: list[torch.Tensor], omega: torch.Tensor, n_iter: int, precision: str, backend: str
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Randomized SVD of G >= 1 same-shape differences with one shared sketch (``w0s`` empty: no base).

    Returns U (G, m, k), S (G, k), Vh (G, k, n) fp32 with k = min(m, n, q), omega (n, q).
    """
    device = common_device([*w1s, *w0s, omega], "randomized_svd")
    return backend_for("rsvd", device, backend).randomized_svd_group(
        w1s, w0s or None, omega, n_iter, precision=precision
    )


@randomized_svd.register_fake
def _randomized_svd_fake(w1s, w0s, omega, n_iter, precision, backend):
    (m, n), q = w1s[0].shape, omega.shape[1]
    k = min(m, n, q)
    batch = len(w1s)
    return (
        omega.new_empty(batch, m, k),
        omega.new_empty(batch, k),
        omega.new_empty(batch, k, n),
    )


@torch.library.custom_op("deftx::difference_energy", mutates_args=())
def difference_energy(w1s: list[torch.Tensor], w0s: list[torch.Tensor], backend: str) -> torch.Tensor:
    """``||f32(w1s[g]) − f32(w0s[g])||_F²`` of G same-shape pairs as (G,) fp64 (``w0s`` empty: no base)."""
    device = common_device([*w1s, *w0s], "difference_energy")
    return backend_for("rsvd", device, backend).difference_energy(w1s, w0s or None)


@difference_energy.register_fake
def _difference_energy_fake(w1s, w0s, backend):
    return w1s[0].new_empty(len(w1s), dtype=torch.float64)


@torch.library.custom_op("deftx::reconstruct_abs", mutates_args=())
def reconstruct_abs(
    us: list[torch.Tensor], ss: list[torch.Tensor], vhs: list[torch.Tensor], precision: str, backend: str
) -> list[torch.Tensor]:
    """``|us[i] diag(ss[i]) vhs[i]|`` of validated fp32 factors: one new (m_i, n_i) fp32 tensor each."""
    device = common_device([*us, *ss, *vhs], "reconstruct_abs")
    return backend_for("rsvd", device, backend).reconstruct_magnitudes(us, ss, vhs, precision=precision)


@reconstruct_abs.register_fake
def _reconstruct_abs_fake(us, ss, vhs, precision, backend):
    return [u.new_empty(u.shape[0], vh.shape[1], dtype=torch.float32) for u, vh in zip(us, vhs, strict=True)]
