"""One call of each deftx kernel through the public ops: the program ncu and the sanitizer run.

``python -m deftx.gpucheck.kernel_cases --size small|medium|tiny [--profile-range] [--device cuda]``

Cases (each with ``backend="triton"``): top-k over fp32 and over bf16 tensors (every
histogram pass and the compaction), composing two diffs with originals saved and restoring
them (segment bounds, scatter-add, restore), the DeFT-X score of an fp32 and a bf16 matrix
pair (the fused-subtraction products and ``|U S Vh|``; the bf16 one as training takes it, factors
with their energies reported, which adds the ``||Δ||²`` pass, then ``|U S Vh|``), one masked
AdamW step. Sizes: ``small``
(~100K elements a case, for compute-sanitizer), ``medium`` (~32M, several times the L2, for
ncu's DRAM figures), ``tiny`` (CPU: the Triton interpreter, to test this program without a GPU).

Each case runs once to compile, then once more; with ``--profile-range`` the second call
is between ``cudaProfilerStart`` and ``cudaProfilerStop``, so ``ncu --profile-from-start off``
profiles exactly one call of each case. Prints ``ran <case>`` per case.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import torch

ELEMENTS = {"tiny": 1 << 12, "small": 1 << 17, "medium": 1 << 25}
"""Elements of the largest tensor of a case."""
MATRIX_COLUMNS = {"tiny": 64, "small": 256, "medium": 4096}


def _tensors(numel: int, dtype: torch.dtype, device: torch.device, seed: int) -> list[torch.Tensor]:
    """Three tensors (full, quarter, odd-sized) of N(0, 1e-3²) in ``dtype``."""
    gen = torch.Generator(device=device).manual_seed(seed)
    sizes = (numel, numel // 4, numel // 8 + 3)
    return [torch.empty(n, device=device).normal_(0, 1e-3, generator=gen).to(dtype) for n in sizes]


Builder = Callable[[str, torch.device], Callable[[], object]]
"""(size name, device) -> the case's call."""


def topk_case(dtype: torch.dtype) -> Builder:
    def build(size: str, device: torch.device) -> Callable[[], object]:
        from deftx.ops import topk_mask

        tensors = _tensors(ELEMENTS[size], dtype, device, 0)
        k = max(1, sum(t.numel() for t in tensors) // 100)
        return lambda: topk_mask(tensors, k, output="indices", backend="triton")

    return build


def compose_case(size: str, device: torch.device) -> Callable[[], object]:
    from deftx.ops import scatter_add_, scatter_restore_

    dense = _tensors(ELEMENTS[size], torch.bfloat16, device, 1)
    gen = torch.Generator(device=device).manual_seed(2)
    indices = [[torch.randint(t.numel(), (max(1, t.numel() // 50),), device=device, generator=gen).unique()
                for t in dense] for _ in range(2)]
    values = [[torch.randn(i.numel(), device=device, generator=gen) * 1e-3 for i in diff] for diff in indices]

    def call() -> None:
        saved = scatter_add_(dense, indices, values, [1.0, 0.5], save=True, backend="triton")
        scatter_restore_(dense, indices, saved, backend="triton")

    return call


def scores_case(dtype: torch.dtype, *, report_energy: bool) -> Builder:
    """The score of one pair: ``denoised_magnitudes``, or with ``report_energy`` the factors
    with their energies (``lowrank_factors_batched``) then ``reconstruct_magnitudes``."""

    def build(size: str, device: torch.device) -> Callable[[], object]:
        from deftx.ops import denoised_magnitudes, lowrank_factors_batched, reconstruct_magnitudes

        columns = MATRIX_COLUMNS[size]
        rows = max(columns, ELEMENTS[size] // columns)
        gen = torch.Generator(device=device).manual_seed(3)
        w0 = torch.randn(rows, columns, device=device, generator=gen).mul_(0.02)
        w1 = w0 + torch.randn(rows, columns, device=device, generator=gen).mul_(1e-3)
        w0, w1 = w0.to(dtype), w1.to(dtype)
        if report_energy:
            return lambda: reconstruct_magnitudes(lowrank_factors_batched([w1], [w0], rank=16, backend="triton"),
                                                  backend="triton")
        return lambda: denoised_magnitudes(w1, w0, rank=16, backend="triton")

    return build


def step_case(size: str, device: torch.device) -> Callable[[], object]:
    from deftx.ops import masked_adamw_step_

    params = _tensors(ELEMENTS[size], torch.bfloat16, device, 4)
    grads = [torch.randn_like(p, dtype=torch.float32).to(p.dtype) for p in params]
    gen = torch.Generator(device=device).manual_seed(5)
    indices = [torch.randint(p.numel(), (max(1, p.numel() // 20),), device=device, generator=gen).unique()
               for p in params]
    masters = [p.view(-1)[i].float() for p, i in zip(params, indices, strict=True)]
    moments = [torch.zeros_like(m) for m in masters], [torch.zeros_like(m) for m in masters]
    return lambda: masked_adamw_step_(params, grads, indices, masters, *moments, step=1, lr=1e-4, backend="triton")


CASES: dict[str, Builder] = {
    "topk-fp32": topk_case(torch.float32),
    "topk-bf16": topk_case(torch.bfloat16),
    "compose": compose_case,
    "scores-fp32": scores_case(torch.float32, report_energy=False),
    "scores-bf16": scores_case(torch.bfloat16, report_energy=True),
    "step": step_case,
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_cases(names: list[str], size: str, device: torch.device, profile_range: bool) -> list[str]:
    """Build, warm up and run each case once more (inside a profiler range if asked); the cases run."""
    ran = []
    for name in names:
        call = CASES[name](size, device)
        call()
        synchronize(device)
        if profile_range:
            torch.cuda.profiler.start()
        call()
        synchronize(device)
        if profile_range:
            torch.cuda.profiler.stop()
        print(f"ran {name}", flush=True)
        ran.append(name)
    return ran


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m deftx.gpucheck.kernel_cases", description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=tuple(ELEMENTS), default="small")
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated subset of {','.join(CASES)}")
    parser.add_argument("--profile-range", action="store_true",
                        help="run the second call of each case between cudaProfilerStart/Stop (CUDA only)")
    args = parser.parse_args(argv)
    unknown = [c for c in args.cases.split(",") if c not in CASES]
    if unknown:
        parser.error(f"unknown case(s) {', '.join(unknown)}; known: {', '.join(CASES)}")
    if args.profile_range and args.device != "cuda":
        parser.error("--profile-range needs --device cuda")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    run_cases(args.cases.split(","), args.size, torch.device(args.device), args.profile_range)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
