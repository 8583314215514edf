"""Host-side time of one public ``scatter_add_`` call (compose 2 SFTs, originals saved) at a model's shapes.

The Triton launches are replaced by no-ops and the inputs live on the CPU, so what is timed is
the host work a GPU call also pays before its two launches: argument checks, allocating the
saved originals, the custom-op dispatch, planning and packing the address tables. On the H200
(2026-12-04) compose took 7-11 ms at K = 0.1% on XLM-R and Llama-7B although its bytes need
9-216 us; this separates the host's share on a machine without a GPU.

    TRITON_INTERPRET=1 python benchmarks/host_time_compose.py --shapes xlmr-base --k 0.001

The dense tensors are real CPU allocations (XLM-R base: 1.1 GB fp32; Llama-7B would need 27 GB).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

import torch

import deftx.ops as ops
from deftx.bench.shapes import load_shape_set
from deftx.kernels import kernel_module

STUBBED = ("_segment_bounds_kernel", "_scatter_add_kernel")


class _NoLaunch:
    """Stands in for a jitted kernel: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def random_diff(dense: list[torch.Tensor], k: float, gen: torch.Generator) -> tuple[list, list]:
    """Sorted unique indices (about ``k`` of each tensor, at least one) and fp32 values."""
    indices = [torch.randperm(w.numel(), generator=gen)[: max(1, int(k * w.numel()))].sort().values for w in dense]
    return indices, [torch.randn(i.numel(), generator=gen) for i in indices]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shapes", default="xlmr-base", help="shape set (deftx.bench.shapes)")
    parser.add_argument("--k", type=float, default=0.001, help="density of each of the two diffs")
    parser.add_argument("--calls", type=int, default=20, help="timed calls")
    args = parser.parse_args()

    module = kernel_module("scatter", interpret=True)
    for name in STUBBED:
        setattr(module, name, _NoLaunch())
    dense = [torch.zeros(s.shape) for s in load_shape_set(args.shapes).flat()]
    gen = torch.Generator().manual_seed(0)
    (i1, v1), (i2, v2) = random_diff(dense, args.k, gen), random_diff(dense, args.k, gen)

    def call():
        return ops.scatter_add_(dense, [i1, i2], [v1, v2], [1.0, 0.5], save=True, backend="triton")

    call()  # the indices are checked once, as apply_diffs does at load time
    start = time.perf_counter()
    for _ in range(args.calls):
        call()
    per_call_ms = 1e3 * (time.perf_counter() - start) / args.calls
    print(f"{args.shapes}: {len(dense)} tensors x 2 diffs, K = {args.k:g}: host time {per_call_ms:.2f} ms per call "
          f"(mean of {args.calls} calls, kernels not launched)")
    profile = cProfile.Profile()
    profile.enable()
    for _ in range(5):
        call()
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(12)
    print("top host costs over 5 calls (cProfile, inflates small calls):")
    print(text.getvalue())


if __name__ == "__main__":
    main()
