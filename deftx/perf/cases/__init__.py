"""The benchmarked ops, one module each: inputs, implementations, cost models.

Each module (``topk``, ``rsvd``, ``scatter``, ``step``, ``compose``, ``scores``) follows
:class:`deftx.perf.cases.base.OpBenchmark`. The pytest-benchmark suite in
``benchmarks/`` and ``deftx bench`` both build their cases here.
"""

from __future__ import annotations

from types import ModuleType

import torch

from deftx.ops.registry import op_of_bench_case
from deftx.perf.cases import compose, rsvd, scatter, scores, step, topk
from deftx.perf.cases.base import CaseSpec, Traffic, auto_choice, backend_of, deftx_backends, deftx_impl

OPS: dict[str, ModuleType] = {m.OP: m for m in (topk, rsvd, scatter, step, compose, scores)}
"""The case modules by ``deftx bench`` op name: every benchmark case of the op registry
(:data:`deftx.ops.registry.OPS`, ``bench_cases``)."""


def dispatch_op(op: str) -> str:
    """The registry op (the dispatch name) that case ``op`` times: ``"step"`` -> ``"masked_step"``."""
    return op_of_bench_case(op).name


def op_module(op: str) -> ModuleType:
    """The case module of ``op`` (``topk``, ``rsvd``, ``scatter``, ``step``, ``compose`` or ``scores``)."""
    if op not in OPS:
        raise ValueError(f"unknown op {op!r}; known: {', '.join(OPS)}")
    return OPS[op]


def implementations(op: str, device: torch.device, backends: tuple[str, ...] | None = None) -> list[str]:
    """deftx's op under each backend worth timing on ``device``, then the baselines (those the
    case module's optional ``unavailable(impl, device)`` names a reason for are left out).

    ``backends`` restricts the deftx backends (e.g. ``("native",)``); unknown or
    unusable ones are dropped.
    """
    module = op_module(op)
    usable = deftx_backends(dispatch_op(op), device)
    chosen = [b for b in usable if backends is None or b in backends]
    unavailable = getattr(module, "unavailable", lambda impl, device: None)
    return [deftx_impl(b) for b in chosen] + [i for i in module.BASELINES if unavailable(i, device) is None]


def runs_deftx_code(op: str, impl: str) -> bool:
    """Whether ``impl`` of ``op`` runs deftx's code (a backend, the op's prepared path, or another of its
    ``DEFTX_VARIANTS``: the scores' tensor-core products): the implementations whose output
    :func:`output_problem` checks before they are timed."""
    module = op_module(op)
    return (backend_of(impl) is not None or impl == getattr(module, "PREPARED", None)
            or impl in getattr(module, "DEFTX_VARIANTS", ()))


def output_problem(op: str, impl: str, inputs: object) -> str | None:
    """What is wrong with one call of deftx's ``impl`` on ``inputs`` (the case module's ``mismatch``:
    an independent torch reference, on copies of whatever the call writes), or None if nothing."""
    if not runs_deftx_code(op, impl):
        raise ValueError(f"{op}: {impl!r} is a baseline; only deftx's implementations are checked")
    return op_module(op).mismatch(impl, inputs)


def display_name(op: str, impl: str) -> str:
    """Human-readable name of an implementation (``deftx[native]``, ``torch.cat+topk``)."""
    backend = backend_of(impl)
    return f"deftx[{backend}]" if backend is not None else op_module(op).BASELINES[impl]


__all__ = [
    "OPS",
    "CaseSpec",
    "Traffic",
    "auto_choice",
    "backend_of",
    "dispatch_op",
    "display_name",
    "implementations",
    "op_module",
    "output_problem",
    "runs_deftx_code",
]
