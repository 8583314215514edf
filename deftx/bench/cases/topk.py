"""Benchmark case: global magnitude top-k over all parameters of a model.

* deftx: ``deftx.ops.topk_mask(tensors, k, output="indices", backend=...)`` — exact,
  per-tensor sorted indices, no concatenation (includes the public op's NaN check).
* ``cat_topk``: ``torch.topk(torch.cat(flat tensors).abs_(), k, sorted=False)`` — one
  model-sized fp32 buffer; returns global indices, unsorted, with torch's tie choice.
* ``cat_kthvalue``: ``torch.kthvalue(torch.cat(flat tensors).abs_(), n - k + 1)`` — only
  the threshold (selecting with ``>= threshold`` can return more than k on ties).

Both baselines do less than deftx (no per-tensor split, no sorted indices, no tie rule),
so the measured speedups are conservative.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from deftx.bench import synthetic
from deftx.bench.cases.base import CaseSpec, Traffic, backend_of
from deftx.ops import topk_mask

OP = "topk"
DISPATCH_OP = "topk"
BASELINES: dict[str, str] = {"cat_topk": "torch.cat+topk", "cat_kthvalue": "torch.cat+kthvalue"}
ROOFLINE = "memory"


@dataclass
class TopkInputs:
    """Scores (synthetic Δ, any sign) for every tensor of the set, and k."""

    tensors: list[torch.Tensor]
    k: int


def make_inputs(spec: CaseSpec) -> TopkInputs:
    """Synthetic differences ``N(0, 1e-3²)`` in ``spec.dtype``; ``k = max(1, round(K * numel))``."""
    tensors = [
        synthetic.normal(t, spec.seed, spec.torch_device, spec.torch_dtype, 1e-3, salt="score:")
        for t in spec.shapes.flat()
    ]
    total = sum(t.numel() for t in tensors)
    k = min(total, max(1, round(spec.k_fraction * total)))
    return TopkInputs(tensors, k)


def _concatenated_magnitudes(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors]).abs_()


def bind(impl: str, inputs: TopkInputs) -> Callable[[], object]:
    """The thunk timed for ``impl`` (a deftx backend or a baseline)."""
    tensors, k = inputs.tensors, inputs.k
    backend = backend_of(impl)
    if backend is not None:
        return lambda: topk_mask(tensors, k, output="indices", backend=backend)
    if impl == "cat_topk":
        return lambda: torch.topk(_concatenated_magnitudes(tensors), k, sorted=False)
    if impl == "cat_kthvalue":
        total = sum(t.numel() for t in tensors)
        return lambda: torch.kthvalue(_concatenated_magnitudes(tensors), total - k + 1)
    raise KeyError(f"topk: unknown implementation {impl!r}")


def traffic(impl: str, inputs: TopkInputs) -> Traffic:
    """Bytes each implementation must move (no flops worth counting).

    deftx: read every score once, write k int64 indices: ``Σ numel·itemsize + 8k``.
    Baselines: the concatenation reads the scores and writes an fp32 copy, ``abs_``
    reads and writes it, the selection reads it (``topk`` writes k fp32 values and
    int64 indices): ``Σ numel·itemsize + 16 n (+ 12k for topk)``.
    """
    read = sum(t.numel() * t.element_size() for t in inputs.tensors)
    total = sum(t.numel() for t in inputs.tensors)
    if backend_of(impl) is not None:
        return Traffic(read + 8 * inputs.k, 0.0, "deftx.bench: read scores once + 8 B per index")
    output = 12 * inputs.k if impl == "cat_topk" else 0
    return Traffic(read + 16 * total + output, 0.0, "deftx.bench: cat + abs_ + one selection pass")


def quality(impl: str, inputs: TopkInputs, output: object) -> dict[str, float]:
    """Top-k is exact; nothing to report."""
    return {}


def selected(inputs: TopkInputs) -> int:
    return inputs.k
