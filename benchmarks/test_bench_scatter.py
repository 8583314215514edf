"""pytest-benchmark: sparse diff application: deftx.ops.scatter_add_ vs an index_add_ loop and densify + add.

Cases, inputs and cost models: ``deftx.perf.cases.scatter``; options: ``benchmarks/conftest.py``.
"""

OP = "scatter"


def test_scatter(bench_case, run_bench) -> None:
    run_bench(OP, bench_case)
