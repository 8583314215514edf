"""Benchmark case: apply a sparse diff (K entries in all) onto a model's dense weights, in place.

* deftx: ``deftx.ops.scatter_add_(dense, [indices], [values], [1.0], backend=...)`` —
  every tensor in one call.
* ``index_add``: per tensor ``w.view(-1).index_add_(0, idx, (scale * v).to(w.dtype))``
  (for bf16 / fp16 weights the values are rounded to that dtype before the add: one
  rounding more than deftx's fp32 add).
* ``dense_add``: per tensor, densify the diff (``zeros`` + ``index_copy_``), scale it and
  ``w.add_`` it — applying a sparse diff the dense way.

The diff's positions are uniform (K draws with replacement, deduplicated), its values
fp32. The same weights receive every call, so they drift; timing does not depend on it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from deftx.ops import scatter_add_
from deftx.ops.registry import op_of_bench_case
from deftx.perf import synthetic
from deftx.perf.cases.base import CaseSpec, SparseInputs, Traffic, backend_of, sparse_inputs

OP = "scatter"
BASELINES: dict[str, str] = {"index_add": "index_add_ loop", "dense_add": "densify + add"}
ROOFLINE = "memory"

SCALE = 1.0
COST = op_of_bench_case(OP).cost_model()
"""The scatter-add's bytes model (``deftx.ops.cost.scatter``)."""


@dataclass
class ScatterInputs(SparseInputs):
    """Dense weights, and one diff: the sorted unique indices and fp32 values per tensor."""

    values: list[torch.Tensor]


def make_inputs(spec: CaseSpec) -> ScatterInputs:
    """Synthetic weights, a uniform diff (``sparse_indices``) with ``1e-3 * N(0, 1)`` fp32 values."""
    base = sparse_inputs(spec)
    gens = [synthetic.generator(t.name, spec.seed, spec.torch_device, "values:") for t in spec.shapes.flat()]
    values = [
        torch.randn(idx.numel(), generator=gen, device=spec.torch_device).mul_(1e-3)
        for idx, gen in zip(base.indices, gens, strict=True)
    ]
    return ScatterInputs(base.weights, base.indices, values)


def _index_add(inputs: ScatterInputs) -> None:
    for w, idx, val in zip(inputs.weights, inputs.indices, inputs.values, strict=True):
        w.view(-1).index_add_(0, idx, (SCALE * val).to(w.dtype))


def _dense_add(inputs: ScatterInputs) -> None:
    for w, idx, val in zip(inputs.weights, inputs.indices, inputs.values, strict=True):
        delta = torch.zeros(w.numel(), dtype=torch.float32, device=w.device).index_copy_(0, idx, val)
        w.view(-1).add_(delta.mul_(SCALE))


def bind(impl: str, inputs: ScatterInputs) -> Callable[[], object]:
    """The thunk timed for ``impl`` (in place; returns None)."""
    backend = backend_of(impl)
    if backend is not None:
        return lambda: scatter_add_(inputs.weights, [inputs.indices], [inputs.values], [SCALE], backend=backend)
    if impl == "index_add":
        return lambda: _index_add(inputs)
    if impl == "dense_add":
        return lambda: _dense_add(inputs)
    raise KeyError(f"scatter: unknown implementation {impl!r}")


def by_dtype(dense: list[torch.Tensor], entries: list[int]) -> dict[torch.dtype, tuple[list, list]]:
    """The tensors' shapes and entry counts grouped by dtype, as the cost model takes them."""
    groups: dict[torch.dtype, tuple[list, list]] = {}
    for w, count in zip(dense, entries, strict=True):
        shapes, nnz = groups.setdefault(w.dtype, ([], []))
        shapes.append(tuple(w.shape))
        nnz.append(count)
    return groups


def traffic(impl: str, inputs: ScatterInputs) -> Traffic:
    """The op's cost model (:data:`COST`): ``bytes_moved`` (deftx) / ``baseline_bytes_moved``
    (baselines), a 32-byte sector read-modify-write per sector touched plus the index/value
    payload (no flop model: the op is memory-bound)."""
    groups = by_dtype(inputs.weights, [idx.numel() for idx in inputs.indices])
    if backend_of(impl) is not None:
        total = sum(COST.bytes_moved(s, n, dtype) for dtype, (s, n) in groups.items())
        return Traffic(total, 0.0, f"{COST.__name__}.bytes_moved")
    method = "dense" if impl == "dense_add" else "index_add"
    total = sum(COST.baseline_bytes_moved(s, n, dtype, method=method) for dtype, (s, n) in groups.items())
    return Traffic(total, 0.0, f"{COST.__name__}.baseline_bytes_moved(method={method!r})")


def quality(impl: str, inputs: ScatterInputs, output: object) -> dict[str, float]:
    """Scatter is exact; nothing to report."""
    return {}


def selected(inputs: ScatterInputs) -> int:
    return sum(i.numel() for i in inputs.indices)


def mismatch(impl: str, inputs: ScatterInputs) -> str | None:
    """What is wrong with one call of deftx's ``impl`` (a backend) on a copy of the weights, or
    None if it writes, bit for bit, ``(w.float() + scale * v).to(w.dtype)`` at the diff's entries
    and leaves every other entry as it was (the shared weights are not touched)."""
    copies = ScatterInputs([w.clone() for w in inputs.weights], inputs.indices, inputs.values)
    bind(impl, copies)()
    for t, (before, after, idx, val) in enumerate(
        zip(inputs.weights, copies.weights, inputs.indices, inputs.values, strict=True)
    ):
        expected = before.reshape(-1).float().index_add(0, idx, SCALE * val).to(before.dtype)
        wrong = int((after.reshape(-1) != expected).sum())
        if wrong:
            return f"tensor {t}: {wrong} of {expected.numel()} entries differ from index_add in fp32"
    return None
