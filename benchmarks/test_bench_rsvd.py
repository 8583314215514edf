"""pytest-benchmark: truncated SVD of weight differences: deftx.ops.lowrank_factors vs torch baselines.

Baselines: torch.svd_lowrank and torch.linalg.svd. Cases, inputs and cost models: ``deftx.perf.cases.rsvd``;
options: ``benchmarks/conftest.py``.
"""

OP = "rsvd"


def test_rsvd(bench_case, run_bench) -> None:
    run_bench(OP, bench_case)
