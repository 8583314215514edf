"""Host-side time of one call of a Triton-backed op at a model's shapes, the kernels not launched.

The Triton launches are replaced by no-ops and the inputs live on the CPU, so what is timed is
the host work a GPU call also pays around its launches: argument checks, allocations, the
custom-op dispatch, planning and packing the address tables. On the H200 (2026-12-04) compose
took 7-11 ms at K = 0.1% on XLM-R and Llama-7B although its bytes need 9-216 us, and the masked
step lost to fused AdamW at XLM-R size; this separates the host's share without a GPU.

* ``compose``: the public ``scatter_add_`` with two diffs, originals saved.
* ``compose-prepared``: the same composition applied and reverted, in one run: the public
  ``scatter_add_`` + ``scatter_restore_`` pair (checked and planned on every call) beside
  ``prepare_scatter``'s ``apply`` + ``restore`` (checked and planned once, when prepared).
* ``composition``: the model-level pair (README, "Composing again and again"): ``apply_diffs`` +
  ``revert`` of two SparseDiffs (checked, counted for rounding loss and planned on every call) beside
  ``prepare_composition``'s ``apply`` + ``revert`` (all of that once, when prepared; its time printed).
* ``step``: one ``MaskedAdamW.step`` (checked once when built) beside one public
  ``masked_adamw_step_`` call (checked on every call), K = ``--k`` of every parameter.

    TRITON_INTERPRET=1 python benchmarks/host_time.py compose --shapes xlmr-base --k 0.001
    TRITON_INTERPRET=1 python benchmarks/host_time.py compose-prepared --shapes xlmr-base --k 0.001
    TRITON_INTERPRET=1 python benchmarks/host_time.py composition --shapes xlmr-base --k 0.001
    TRITON_INTERPRET=1 python benchmarks/host_time.py step --shapes xlmr-base --k 0.05

The dense tensors are real CPU allocations (XLM-R base: 1.1 GB fp32; Llama-7B would need 27 GB).
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time
from collections.abc import Callable

import torch

import deftx.ops as ops
from deftx.kernels import kernel_module
from deftx.perf.shapes import load_shape_set
from deftx.sft import SparseDiff, apply_diffs, prepare_composition
from deftx.sft.format import ParamInfo
from deftx.train.retrain import MaskedAdamW

STUBBED = {"scatter": ("_segment_bounds_kernel", "_scatter_add_kernel", "_scatter_restore_kernel"),
           "masked_step": ("_masked_adamw_kernel",)}


class _NoLaunch:
    """Stands in for a jitted kernel: ``kernel[grid](...)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def random_diff(dense: list[torch.Tensor], k: float, gen: torch.Generator) -> tuple[list, list]:
    """Sorted unique indices (about ``k`` of each tensor, at least one) and fp32 values."""
    indices = [torch.randperm(w.numel(), generator=gen)[: max(1, int(k * w.numel()))].sort().values for w in dense]
    return indices, [torch.randn(i.numel(), generator=gen) for i in indices]


def stub_kernels() -> None:
    """Replace every launch of the compose and step kernels with a no-op."""
    for module_name, kernels in STUBBED.items():
        module = kernel_module(module_name, interpret=True)
        for name in kernels:
            setattr(module, name, _NoLaunch())


def compose_calls(dense: list[torch.Tensor], k: float, gen: torch.Generator) -> dict[str, Callable[[], object]]:
    (i1, v1), (i2, v2) = random_diff(dense, k, gen), random_diff(dense, k, gen)
    return {"scatter_add_ (2 diffs, save=True)":
            lambda: ops.scatter_add_(dense, [i1, i2], [v1, v2], [1.0, 0.5], save=True, backend="triton")}


def compose_prepared_calls(dense: list[torch.Tensor], k: float,
                           gen: torch.Generator) -> dict[str, Callable[[], object]]:
    (i1, v1), (i2, v2) = random_diff(dense, k, gen), random_diff(dense, k, gen)
    indices, values, scales = [i1, i2], [v1, v2], [1.0, 0.5]
    start = time.perf_counter()
    prepared = ops.prepare_scatter(dense, indices, values, scales, backend="triton")
    elapsed = 1e3 * (time.perf_counter() - start)
    print(f"prepare_scatter (checks, plans, uploads, searches units once): {elapsed:.1f} ms")

    def public_pair() -> None:
        saved = ops.scatter_add_(dense, indices, values, scales, save=True, backend="triton")
        ops.scatter_restore_(dense, indices, saved, backend="triton")

    def prepared_pair() -> None:
        prepared.apply()
        prepared.restore()

    return {"scatter_add_ + scatter_restore_ (2 diffs)": public_pair,
            "prepare_scatter: apply + restore (2 diffs)": prepared_pair}


def parameter_model(dense: list[torch.Tensor]) -> torch.nn.Module:
    """A module whose parameters ``p0``, ``p1``... are the ``dense`` tensors (shared, not copied)."""
    model = torch.nn.Module()
    for i, tensor in enumerate(dense):
        model.register_parameter(f"p{i}", torch.nn.Parameter(tensor, requires_grad=False))
    return model


def model_diff(model: torch.nn.Module, k: float, gen: torch.Generator) -> SparseDiff:
    """A SparseDiff of about ``k`` of every parameter of ``model`` (random indices, fp32 values)."""
    names, params = zip(*model.named_parameters(), strict=True)
    indices, values = random_diff(list(params), k, gen)
    return SparseDiff(dict(zip(names, indices, strict=True)), dict(zip(names, values, strict=True)),
                      {n: ParamInfo(tuple(p.shape), p.dtype) for n, p in zip(names, params, strict=True)})


def composition_calls(dense: list[torch.Tensor], k: float,
                      gen: torch.Generator) -> dict[str, Callable[[], object]]:
    """The rounding-loss count runs on every public call, unreported (``on_rounding_loss="ignore"``): the
    stubbed kernels leave the saved originals unwritten, which the revert then writes back."""
    model = parameter_model(dense)
    diffs, scales = [model_diff(model, k, gen), model_diff(model, k, gen)], [1.0, 0.5]
    start = time.perf_counter()
    prepared = prepare_composition(model, diffs, scales, on_rounding_loss="ignore", backend="triton")
    elapsed = 1e3 * (time.perf_counter() - start)
    print(f"prepare_composition (checks, rounding-loss count, copies, scatter plan once): {elapsed:.1f} ms")

    def public_pair() -> None:
        apply_diffs(model, diffs, scales, on_rounding_loss="ignore", backend="triton").revert()

    def prepared_pair() -> None:
        prepared.apply()
        prepared.revert()

    return {"apply_diffs + revert (2 diffs)": public_pair,
            "prepare_composition: apply + revert (2 diffs)": prepared_pair}


def step_calls(dense: list[torch.Tensor], k: float, gen: torch.Generator) -> dict[str, Callable[[], object]]:
    params = [w.requires_grad_() for w in dense]
    indices, _ = random_diff(params, k, gen)
    for p in params:
        p.grad = torch.zeros_like(p)
    optimizer = MaskedAdamW([{"params": params, "indices": indices}], lr=1e-4, backend="triton")
    masters = [p.detach().reshape(-1)[i].float() for p, i in zip(params, indices, strict=True)]
    moments = [[torch.zeros_like(m) for m in masters] for _ in range(2)]
    grads = [p.grad for p in params]
    detached = [p.detach() for p in params]
    return {
        "MaskedAdamW.step (checked once)": optimizer.step,
        "masked_adamw_step_ (checked per call)": lambda: ops.masked_adamw_step_(
            detached, grads, indices, masters, *moments, step=1, lr=1e-4, backend="triton"
        ),
    }


CALLS = {"compose": compose_calls, "compose-prepared": compose_prepared_calls, "composition": composition_calls,
         "step": step_calls}


def time_call(call: Callable[[], object], calls: int) -> float:
    """Mean host milliseconds per call, after one untimed call (indices are checked once)."""
    call()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    return 1e3 * (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("op", choices=tuple(CALLS), help="what to time")
    parser.add_argument("--shapes", default="xlmr-base", help="shape set (deftx.perf.shapes)")
    parser.add_argument("--k", type=float, default=0.001, help="density of each diff / of the selection")
    parser.add_argument("--calls", type=int, default=20, help="timed calls")
    parser.add_argument("--profile", action="store_true", help="also print the top host costs (cProfile)")
    args = parser.parse_args()

    stub_kernels()
    dense = [torch.zeros(s.shape) for s in load_shape_set(args.shapes).flat()]
    gen = torch.Generator().manual_seed(0)
    calls = CALLS[args.op](dense, args.k, gen)
    for name, call in calls.items():
        print(f"{args.shapes}, {len(dense)} tensors, K = {args.k:g}: {name}: host time "
              f"{time_call(call, args.calls):.2f} ms per call (mean of {args.calls}, kernels not launched)")
        if args.profile:
            profile = cProfile.Profile()
            profile.enable()
            for _ in range(5):
                call()
            profile.disable()
            text = io.StringIO()
            pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(12)
            print(text.getvalue())


if __name__ == "__main__":
    main()
