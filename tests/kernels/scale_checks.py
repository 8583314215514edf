"""Exact checks of kernel results at sizes where a sorted or per-entry reference would not fit.

Everything here runs as a few O(N) torch passes on the tensors' own device (a CUDA device for
``test_cuda_scale.py``), never sorts the N inputs, and is itself tested on small CPU inputs
against the sort-based and per-entry references (``test_scale_checks.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def assert_same_bits(actual: torch.Tensor, expected: torch.Tensor, *, what: str = "result") -> None:
    """Assert two tensors hold the same bit patterns, compared on their device.

    On failure the message gives the number of differing entries and the first one.
    """
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    if actual.dtype.is_floating_point:
        view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[actual.element_size()]
        actual, expected = actual.contiguous().view(view), expected.contiguous().view(view)
    differ = actual.flatten() != expected.flatten()
    count = int(differ.sum())
    if count:
        first = int(differ.nonzero()[0])
        raise AssertionError(f"{what}: {count} of {differ.numel()} entries differ bitwise; first at flat index {first}")


def assert_exact_topk(x: torch.Tensor, k: int, indices: torch.Tensor, *, what: str = "top-k") -> None:
    """Assert ``indices`` is exactly the top-k of the flat tensor ``x`` by magnitude, ties to the
    lowest index (the kernels' rule).

    Shapes: x any float tensor (read flat), indices int64 (k,). The answer is pinned down by:
    k strictly increasing indices in ``[0, N)``; with T the smallest selected magnitude, no
    unselected entry above T; and every unselected entry equal to T after the last selected one.
    """
    n = x.numel()
    assert indices.dtype == torch.int64 and indices.shape == (k,), f"{what}: {indices.dtype} {tuple(indices.shape)}"
    if k == 0:
        return
    assert int(indices[0]) >= 0 and int(indices[-1]) < n, f"{what}: indices outside [0, {n})"
    descending = int((indices[1:] <= indices[:-1]).sum())
    assert descending == 0, f"{what}: {descending} indices not above their predecessor"
    magnitude = x.detach().flatten().abs()
    chosen = magnitude[indices]
    threshold = chosen.min()
    selected = torch.zeros(n, dtype=torch.bool, device=x.device)
    selected[indices] = True
    above = int(((magnitude > threshold) & ~selected).sum())
    assert above == 0, f"{what}: {above} unselected entries above the threshold {float(threshold)!r}"
    last_tied = int(indices[chosen == threshold].max())
    skipped = int(((magnitude[:last_tied] == threshold) & ~selected[:last_tied]).sum())
    assert skipped == 0, (
        f"{what}: {skipped} unselected entries equal to the threshold {float(threshold)!r} "
        f"precede the selected one at {last_tied}"
    )


def spread_indices(n: int, count: int, generator: torch.Generator) -> torch.Tensor:
    """About ``count`` sorted unique int64 positions spread over ``[0, n)``, the last one ``n - 1``.

    Random gaps of mean ``n / count`` on the generator's device.
    """
    gaps = torch.randint(1, 2 * max(n // count, 1), (count,), generator=generator, device=generator.device)
    positions = gaps.cumsum(0) - 1
    positions = positions[positions < n - 1]
    return torch.cat([positions, positions.new_tensor([n - 1])])


def reference_scatter_(
    flat: torch.Tensor, indices: Sequence[torch.Tensor], values: Sequence[torch.Tensor], scales: Sequence[float]
) -> None:
    """The scatter contract on one flat tensor, diff after diff, in place, with torch ops.

    Per diff: the fp32 product ``f32(scale) * f32(v)`` is one rounded op, the fp32 sum another,
    then the cast (round to nearest even). Shapes: flat (N,); indices[d] int64 (n_d,) unique;
    values[d] (n_d,) any float dtype.
    """
    for idx, val, scale in zip(indices, values, scales, strict=True):
        product = torch.tensor(scale, dtype=torch.float32, device=flat.device) * val.float()
        flat[idx] = (flat[idx].float() + product).to(flat.dtype)
