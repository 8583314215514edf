"""pytest-benchmark: global magnitude top-k: deftx.ops.topk_mask per backend vs torch.cat+topk and torch.cat+kthvalue.

Cases, inputs and cost models: ``deftx.perf.cases.topk``; options: ``benchmarks/conftest.py``.
"""

OP = "topk"


def test_topk(bench_case, run_bench) -> None:
    run_bench(OP, bench_case)
