"""The op registry: one entry per accelerated op, read by every tool.

Each :class:`OpEntry` names the op once (its canonical name is also the name of its backend
modules: ``deftx.ops.reference.<name>``, ``deftx.ops.native.<name>``, ``deftx.kernels.<name>``
and of its cost model ``deftx.ops.cost.<name>``) and says which public functions run it, which
backends implement it, what settings contract it takes, and which benchmark cases measure it.
Dispatch (:mod:`deftx.ops.dispatch`), ``deftx doctor``, the static compile profile
(:data:`TRITON_OPS`), the roofline prediction and the benchmark cases all read :data:`OPS`.

Reading the registry needs no Triton and loads no backend. The backend modules, the kernel
specialisations and the cost models are loaded on request (:meth:`OpEntry.backend_module`,
:meth:`OpEntry.specializations`, :meth:`OpEntry.cost_model`); the benchmark cases are names the
perf layer resolves (``deftx.perf.cases.<case>``; lower layers never import it).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

BACKENDS: tuple[str, ...] = ("triton", "native", "torch")
"""Every backend, in the order ``auto`` prefers them."""


@dataclass(frozen=True)
class OpEntry:
    """One accelerated op.

    Attributes:
        name: canonical name (``"masked_step"``): backend, kernel and cost-model module name.
        functions: the public functions of :mod:`deftx.ops` that run it.
        backends: the backends implementing it, a subset of :data:`BACKENDS`.
        settings: ``"module:Class"`` of its settings contract (None: plain arguments only).
        bench_cases: the benchmark cases that time it (``deftx bench`` op names), the op alone
            first, then compositions that are mostly this op.
        summary: one line for ``deftx doctor`` and the docs.
        native_missing: why there is no native backend, when there is none.
    """

    name: str
    functions: tuple[str, ...]
    backends: tuple[str, ...]
    bench_cases: tuple[str, ...]
    summary: str
    settings: str | None = None
    native_missing: str | None = None

    def __post_init__(self) -> None:
        unknown = set(self.backends) - set(BACKENDS)
        if unknown:
            raise ValueError(f"op {self.name!r}: unknown backends {sorted(unknown)}")
        if ("native" in self.backends) == (self.native_missing is not None):
            raise ValueError(f"op {self.name!r}: give native_missing exactly when there is no native backend")

    def backend_module(self, backend: str, *, interpret: bool = False) -> ModuleType:
        """The module holding ``backend``'s functions (``interpret``: the Triton kernels run
        under the interpreter, for CPU tensors)."""
        if backend not in self.backends:
            raise KeyError(f"op {self.name!r} has no {backend!r} backend; it has {', '.join(self.backends)}")
        if backend == "triton":
            from deftx.kernels import kernel_module

            return kernel_module(self.name, interpret=interpret)
        package = "deftx.ops.reference" if backend == "torch" else "deftx.ops.native"
        return importlib.import_module(f"{package}.{self.name}")

    def public_functions(self) -> list[Callable[..., Any]]:
        """The public functions of :mod:`deftx.ops` that run this op."""
        ops = importlib.import_module("deftx.ops")
        return [getattr(ops, name) for name in self.functions]

    def settings_class(self) -> type | None:
        """The settings dataclass (:attr:`settings`), or None."""
        if self.settings is None:
            return None
        module, _, name = self.settings.partition(":")
        return getattr(importlib.import_module(module), name)

    def cost_model(self) -> ModuleType:
        """``deftx.ops.cost.<name>``: pure-Python bytes / FLOP models of the op and its baseline."""
        return importlib.import_module(f"deftx.ops.cost.{self.name}")

    def specializations(self) -> list[Any]:
        """The ``KernelSpec`` list its Triton kernels are compiled for (imports the kernels)."""
        return list(self.backend_module("triton").SPECIALIZATIONS) if "triton" in self.backends else []


_DENOISE_FUNCTIONS = ("lowrank_factors", "lowrank_factors_batched", "lowrank_denoise", "denoised_magnitudes",
                      "denoised_magnitudes_batched", "reconstruct_magnitudes")

OPS: dict[str, OpEntry] = {
    entry.name: entry
    for entry in (
        OpEntry("topk", ("topk_mask",), BACKENDS, ("topk",),
                "global magnitude top-k over many tensors (|x| or |x - base|)"),
        OpEntry("scatter", ("scatter_add_", "scatter_restore_", "prepare_scatter"), BACKENDS, ("scatter", "compose"),
                "scatter-add of several sparse diffs onto dense tensors, and its exact undo"),
        OpEntry("rsvd", _DENOISE_FUNCTIONS, ("triton", "torch"), ("rsvd", "scores"),
                "randomized SVD of weight differences and the DeFT-X scores |U S Vh|",
                native_missing="the native library does not implement 'rsvd' (torch is as fast on CPU)"),
        OpEntry("masked_step", ("masked_adamw_step_", "prepare_masked_step"), BACKENDS, ("step",),
                "AdamW on the selected entries only (O(K) optimizer state)",
                settings="deftx.ops.settings:AdamWSettings"),
    )
}
"""Every accelerated op, by canonical name."""


TRITON_OPS: tuple[str, ...] = tuple(name for name, entry in OPS.items() if "triton" in entry.backends)
"""The ops with Triton kernels: the op modules of :mod:`deftx.kernels`, in registry order."""


def kernel_specializations() -> list[Any]:
    """Every ``KernelSpec`` of every op's kernel module, in registry order (imports the kernels)."""
    return [spec for name in TRITON_OPS for spec in OPS[name].specializations()]


def op_of_bench_case(case: str) -> OpEntry:
    """The op a benchmark case times; KeyError naming the known cases otherwise."""
    for entry in OPS.values():
        if case in entry.bench_cases:
            return entry
    known = ", ".join(c for entry in OPS.values() for c in entry.bench_cases)
    raise KeyError(f"unknown benchmark case {case!r}; known: {known}")


def op_entry(name: str) -> OpEntry:
    """The registry entry of ``name``; KeyError naming the known ops otherwise."""
    if name not in OPS:
        raise KeyError(f"unknown op {name!r}; known: {', '.join(OPS)}")
    return OPS[name]
