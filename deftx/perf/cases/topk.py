"""Benchmark case: global magnitude top-k over all parameters of a model.

* deftx: ``deftx.ops.topk_mask(tensors, k, output="indices", backend=...)`` — exact,
  per-tensor sorted indices, no concatenation (includes the public op's NaN check).
* ``cat_topk``: ``torch.topk(torch.cat(flat tensors).abs_(), k, sorted=False)`` — one
  model-sized buffer in the scores' dtype; returns global indices, unsorted, with torch's
  tie choice. torch's CUDA top-k fails a device-side assert on a slice of 2^31 entries or
  more (seen on an H200 with Llama-2-7B's 6.7B), so past that the baseline does what a
  user would: ``torch.topk`` on each 2^30-entry chunk, then on the chunks' candidates
  (refused with a clear error when the candidates are themselves 2^31 or more).
* ``cat_kthvalue``: ``torch.kthvalue(torch.cat(flat tensors).abs_(), n - k + 1)`` — only
  the threshold (selecting with ``>= threshold`` can return more than k on ties).

Both baselines do less than deftx (no per-tensor split, no sorted indices, no tie rule),
so the measured speedups are conservative.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from deftx.ops import topk_mask
from deftx.ops.cost import topk as topk_cost
from deftx.perf import synthetic
from deftx.perf.cases.base import CaseSpec, Traffic, backend_of

OP = "topk"
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


TORCH_TOPK_LIMIT = 2**31
"""Entries of one slice from which torch's CUDA top-k asserts on the device."""
CHUNK = 2**30
"""Entries per ``torch.topk`` call of the chunked baseline."""


def _concatenated_magnitudes(tensors: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in tensors]).abs_()


def chunked_topk(
    flat: torch.Tensor, k: int, *, limit: int = TORCH_TOPK_LIMIT, chunk: int = CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.topk(flat, k, sorted=False)``, in chunks when ``flat`` has ``limit`` entries or more.

    Args:
        flat: (n,) scores of any floating dtype.
        k: ``0 <= k <= n``.
        limit, chunk: the slice size torch cannot take, and the size of each chunk (< limit).

    Returns:
        values (k,) in ``flat``'s dtype and int64 indices (k,) into ``flat``, unsorted.

    Raises:
        ValueError: the chunks' candidates (``min(k, chunk)`` per chunk) reach ``limit``.
    """
    if flat.numel() < limit:
        return torch.topk(flat, k, sorted=False)
    values, indices = [], []
    for start in range(0, flat.numel(), chunk):
        part = flat[start : start + chunk]
        part_values, part_indices = torch.topk(part, min(k, part.numel()), sorted=False)
        values.append(part_values)
        indices.append(part_indices + start)
    candidates = torch.cat(values)
    if candidates.numel() >= limit:
        raise ValueError(
            f"torch.topk cannot take {candidates.numel():,} candidates (k={k:,} from each of "
            f"{len(values)} chunks): one slice must stay under {limit:,} entries"
        )
    top_values, picked = torch.topk(candidates, k, sorted=False)
    return top_values, torch.cat(indices)[picked]


def bind(impl: str, inputs: TopkInputs) -> Callable[[], object]:
    """The thunk timed for ``impl`` (a deftx backend or a baseline)."""
    tensors, k = inputs.tensors, inputs.k
    backend = backend_of(impl)
    if backend is not None:
        return lambda: topk_mask(tensors, k, output="indices", backend=backend)
    if impl == "cat_topk":
        return lambda: chunked_topk(_concatenated_magnitudes(tensors), k)
    if impl == "cat_kthvalue":
        total = sum(t.numel() for t in tensors)
        return lambda: torch.kthvalue(_concatenated_magnitudes(tensors), total - k + 1)
    raise KeyError(f"topk: unknown implementation {impl!r}")


def traffic(impl: str, inputs: TopkInputs) -> Traffic:
    """Bytes each implementation moves, by the work it does (no flops worth counting).

    deftx (every backend): :func:`deftx.ops.cost.topk.bytes_moved`, the Triton plan's two full
    reads of the scores (count, partition), its candidate list and the 8 B int64 indices (the
    native top-k also reads the scores twice and then only its candidates).
    ``cat_topk``: :func:`deftx.ops.cost.topk.cat_abs_topk_bytes_moved`, cat (read, write the
    copy) + ``abs_`` (read, write) + torch's radix top-k (a read per 8-bit digit and a gathering
    read) + k values and indices: ``4 N e + (e + 1) N e + k (e + 8)``, no sort.
    ``cat_kthvalue``: cat + ``abs_`` + one selection read, ``5 N e`` (a lower bound).
    """
    shapes = [t.shape for t in inputs.tensors]
    dtype = inputs.tensors[0].dtype
    if backend_of(impl) is not None:
        return Traffic(float(topk_cost.bytes_moved(shapes, inputs.k, dtype)), 0.0,
                       "deftx.ops.cost.topk.bytes_moved: 2 full reads + candidate list + 8 B per index")
    if impl == "cat_topk":
        return Traffic(float(topk_cost.cat_abs_topk_bytes_moved(shapes, inputs.k, dtype)), 0.0,
                       "deftx.ops.cost.topk.cat_abs_topk_bytes_moved: cat + abs_ + radix topk, no sort")
    read = sum(t.numel() * t.element_size() for t in inputs.tensors)
    return Traffic(5.0 * read, 0.0, "deftx.perf: cat + abs_ + one selection read (a lower bound)")


def quality(impl: str, inputs: TopkInputs, output: object) -> dict[str, float]:
    """Top-k is exact; nothing to report."""
    return {}


def selected(inputs: TopkInputs) -> int:
    return inputs.k


def mismatch(impl: str, inputs: TopkInputs) -> str | None:
    """What is wrong with one call of deftx's ``impl`` (a backend), or None if it selects a top-k.

    A set of k entries is a top-k by magnitude iff no entry left out is larger than the
    smallest one taken; checked per tensor (no concatenation), in the scores' dtype.
    """
    chosen = bind(impl, inputs)()
    if len(chosen) != len(inputs.tensors):
        return f"{len(chosen)} index tensors for {len(inputs.tensors)} tensors"
    count = sum(idx.numel() for idx in chosen)
    if count != inputs.k:
        return f"{count} entries selected, k = {inputs.k}"
    smallest_taken, largest_left = float("inf"), float("-inf")
    for t, (scores, idx) in enumerate(zip(inputs.tensors, chosen, strict=True)):
        flat = scores.reshape(-1)
        if idx.numel() and (idx.min() < 0 or idx.max() >= flat.numel() or idx.unique().numel() != idx.numel()):
            return f"tensor {t}: indices out of range or repeated"
        taken = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
        taken[idx] = True
        if idx.numel():
            smallest_taken = min(smallest_taken, float(flat[idx].abs().min()))
        if idx.numel() < flat.numel():
            largest_left = max(largest_left, float(flat[~taken].abs().max()))
    if largest_left > smallest_taken:
        return f"an entry of magnitude {largest_left:g} is left out while {smallest_taken:g} is selected"
    return None
