"""pytest-benchmark suite of deftx's ops: the same cases as ``deftx bench`` (:mod:`deftx.perf.cases`).

Run with ``pytest benchmarks --benchmark-enable`` (without it each case runs once, as a
smoke test). Options::

    --bench-shapes xlmr-base|mbert|llama-7b|FILE.json   (default xlmr-base)
    --bench-scale F        fraction of layers / vocabulary rows (default 0.1 on CPU, 1 on CUDA)
    --bench-device cpu|cuda|auto
    --bench-k 0.001,0.01,0.1   (the step also runs at 0.05)
    --bench-dtype fp32|bf16|fp16
    --bench-rounds N       timed rounds per case (after one warm-up round)

Before a deftx implementation is timed, one call of it (on a copy of the weights it writes) is
checked against an independent torch reference (``mismatch`` of its case module): a fast
wrong kernel fails its test instead of reporting a speedup.

Each test is one (K, implementation); pytest-benchmark groups a K's implementations
together so its table compares deftx with the baselines directly. ``extra_info`` holds
the shape set, the cost model's bytes / flops and the achieved GB/s.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from deftx.perf.cases import CaseSpec, display_name, implementations, op_module, output_problem, runs_deftx_code
from deftx.perf.report import format_k
from deftx.perf.shapes import ShapeSet, load_shape_set
from deftx.perf.suite import SuiteConfig
from deftx.perf.timing import synchronize

DEFAULT_CPU_SCALE = 0.1


@dataclass(frozen=True)
class BenchSettings:
    shapes: ShapeSet
    device: str
    dtype: str
    k_fractions: tuple[float, ...]
    rounds: int


def k_fractions(text: str) -> tuple[float, ...]:
    """Type of ``--bench-k``: a non-empty comma-separated list of fractions in (0, 1]."""
    values = tuple(float(k) for k in text.split(",") if k.strip())
    if not values or not all(0.0 < k <= 1.0 for k in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated fractions in (0, 1], got {text!r}")
    return values


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("deftx-bench", "deftx benchmark cases")
    group.addoption("--bench-shapes", default="xlmr-base", help="shape set name or JSON file")
    group.addoption("--bench-scale", type=float, default=None, help="fraction of layers / vocab rows")
    group.addoption("--bench-device", default="auto", help="cpu, cuda or auto")
    group.addoption("--bench-k", type=k_fractions, default="0.001,0.01,0.1",
                    help="comma-separated K fractions in (0, 1]")
    group.addoption("--bench-dtype", default="fp32", choices=("fp32", "bf16", "fp16"))
    group.addoption("--bench-rounds", type=int, default=3, help="timed rounds per case")


def bench_settings(config: pytest.Config) -> BenchSettings:
    device = config.getoption("--bench-device")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    scale = config.getoption("--bench-scale")
    if scale is None:
        scale = DEFAULT_CPU_SCALE if device == "cpu" else 1.0
    return BenchSettings(
        shapes=load_shape_set(config.getoption("--bench-shapes")).scaled(scale),
        device=device,
        dtype=config.getoption("--bench-dtype"),
        k_fractions=config.getoption("--bench-k"),
        rounds=config.getoption("--bench-rounds"),
    )


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize ``bench_case`` with every (K, implementation) of the module's ``OP``."""
    if "bench_case" not in metafunc.fixturenames:
        return
    op = metafunc.module.OP
    settings = bench_settings(metafunc.config)
    suite = SuiteConfig(shapes=settings.shapes, ops=(op,), k_fractions=settings.k_fractions)
    impls = implementations(op, torch.device(settings.device))
    cases = [(k, impl) for k in suite.k_values(op) for impl in impls]
    metafunc.parametrize("bench_case", cases, ids=[f"K={format_k(k)}-{impl}" for k, impl in cases])


_INPUTS: dict[str, object] = {}


def _inputs(spec: CaseSpec) -> object:
    """The inputs of ``spec``, shared by its implementations (only the latest case is kept)."""
    key = repr(spec)
    if key not in _INPUTS:
        _INPUTS.clear()
        _INPUTS[key] = op_module(spec.op).make_inputs(spec)
    return _INPUTS[key]


@pytest.fixture
def run_bench(benchmark, request: pytest.FixtureRequest) -> Callable[[str, tuple], None]:
    """Benchmark one (K, implementation) of an op with pytest-benchmark's ``pedantic`` mode."""
    settings = bench_settings(request.config)

    def run(op: str, case: tuple[float | None, str]) -> None:
        k, impl = case
        spec = CaseSpec(op=op, shapes=settings.shapes, device=settings.device, dtype=settings.dtype, k_fraction=k)
        module = op_module(op)
        inputs = _inputs(spec)
        if runs_deftx_code(op, impl):
            problem = output_problem(op, impl, inputs)
            if problem is not None:
                pytest.fail(f"{display_name(op, impl)} is wrong at K={format_k(k)}: {problem}")
        thunk = module.bind(impl, inputs)
        device = spec.torch_device

        def call() -> None:
            thunk()
            synchronize(device)

        cost = module.traffic(impl, inputs)
        benchmark.group = f"{op} {settings.shapes.name} K={format_k(k)}"
        benchmark.extra_info.update(
            {
                "implementation": display_name(op, impl),
                "shapes": settings.shapes.name,
                "parameters": settings.shapes.numel,
                "scale_note": settings.shapes.note or "full set",
                "k_fraction": k,
                "bytes": cost.bytes,
                "flops": cost.flops,
                "cost_model": cost.model,
            }
        )
        benchmark.pedantic(call, rounds=settings.rounds, warmup_rounds=1, iterations=1)
        if benchmark.stats is not None:
            median = benchmark.stats.stats.median
            benchmark.extra_info["gbps"] = cost.bytes / median / 1e9
            benchmark.extra_info["gflops"] = cost.flops / median / 1e9

    return run
