"""What every benchmarked op provides, and the spec that rebuilds a case anywhere.

A case is one op on one shape set at one K. Its inputs (weights, scores, diffs,
gradients) are shared by every implementation timed on it: deftx's public op with an
explicit ``backend=`` and the torch baselines. ``bind`` does an implementation's own
set-up (optimizer state, a densified diff) and returns the thunk that is timed; the
memory probe measures ``bind`` plus one call, so implementation-specific buffers count
as extra memory while the shared inputs do not.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch

from deftx.ops.dispatch import auto_backend, unavailable_reason
from deftx.perf import synthetic
from deftx.perf.shapes import ShapeSet, shape_set_from_json
from deftx.perf.workload import DTYPES

DEFTX_PREFIX = "deftx:"


@dataclass(frozen=True)
class CaseSpec:
    """Everything needed to rebuild a case's inputs, e.g. in the memory-probe subprocess.

    Attributes:
        op: ``"topk" | "rsvd" | "scatter" | "step"``.
        shapes: the parameter shapes (already scaled / chunked).
        device: ``"cpu"`` or ``"cuda"`` (``"cuda:1"`` ...).
        dtype: ``"fp32" | "bf16" | "fp16"``: the weights' dtype.
        k_fraction: share of all entries selected (topk, scatter, step); None for rsvd.
        seed: base seed of the synthetic data.
        rank, oversample, n_iter: the randomized-SVD settings (rsvd only).
    """

    op: str
    shapes: ShapeSet
    device: str = "cpu"
    dtype: str = "fp32"
    k_fraction: float | None = None
    seed: int = 0
    rank: int = 32
    oversample: int = 8
    n_iter: int = 2

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.k_fraction is not None and not 0.0 < self.k_fraction <= 1.0:
            raise ValueError(f"K must be a fraction in (0, 1], got {self.k_fraction}")

    @property
    def torch_device(self) -> torch.device:
        return torch.device(self.device)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["shapes"] = self.shapes.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CaseSpec:
        return cls(**{**data, "shapes": shape_set_from_json(data["shapes"], "case spec")})



@dataclass
class SparseInputs:
    """Per tensor of a case's shape set: synthetic weights (its shape, the case's dtype) and uniform
    sorted unique flat int64 indices (:func:`~deftx.perf.synthetic.sparse_indices`), all on the case's device."""

    weights: list[torch.Tensor]
    indices: list[torch.Tensor]


def sparse_inputs(spec: CaseSpec) -> SparseInputs:
    """The weights and indices of ``spec``'s tensors (seeded per tensor: the same in any subset)."""
    flat = spec.shapes.flat()
    weights = [synthetic.weights(t, spec.seed, spec.torch_device, spec.torch_dtype) for t in flat]
    indices = [synthetic.sparse_indices(t, spec.k_fraction, spec.seed, spec.torch_device) for t in flat]
    return SparseInputs(weights, indices)


@dataclass(frozen=True)
class Traffic:
    """The work model of one call: bytes that must cross memory, flops, and the model's source."""

    bytes: float
    flops: float
    model: str


class OpBenchmark(Protocol):
    """The interface of ``deftx.perf.cases.<op>`` modules."""

    OP: str
    BASELINES: dict[str, str]
    ROOFLINE: str
    """``"memory"`` or ``"compute"``: the roof of the op's rows (a module may also define
    ``roofline_of(impl)`` for an implementation on another roof, and ``unavailable(impl,
    device)`` for a baseline that is not timed on a device)."""

    def make_inputs(self, spec: CaseSpec) -> Any: ...

    def bind(self, impl: str, inputs: Any) -> Callable[[], object]: ...

    def traffic(self, impl: str, inputs: Any) -> Traffic: ...

    def quality(self, impl: str, inputs: Any, output: object) -> dict[str, float]: ...

    def selected(self, inputs: Any) -> int: ...


def deftx_impl(backend: str) -> str:
    """The implementation name of deftx's op run with ``backend=...``."""
    return f"{DEFTX_PREFIX}{backend}"


def backend_of(impl: str) -> str | None:
    """The deftx backend of an implementation name, or None for a baseline."""
    return impl[len(DEFTX_PREFIX) :] if impl.startswith(DEFTX_PREFIX) else None


def deftx_backends(dispatch_op: str, device: torch.device) -> list[str]:
    """The deftx backends worth timing on ``device``: accelerated ones that can run, then torch.

    The Triton interpreter (Triton on CPU tensors) is a correctness tool and never timed.
    """
    accelerated = "triton" if device.type == "cuda" else "native"
    usable = unavailable_reason(dispatch_op, accelerated, device.type) is None
    return [accelerated, "torch"] if usable else ["torch"]


def auto_choice(dispatch_op: str, device: torch.device) -> str:
    """The backend ``backend="auto"`` runs for this op on this device."""
    return auto_backend(dispatch_op, device.type)[0]
