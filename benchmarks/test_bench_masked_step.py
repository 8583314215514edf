"""pytest-benchmark: sparse retraining step: deftx.ops.masked_adamw_step_ vs a dense torch.optim.AdamW step.

Cases, inputs and cost models: ``deftx.perf.cases.step``; options: ``benchmarks/conftest.py``.
"""

OP = "step"


def test_step(bench_case, run_bench) -> None:
    run_bench(OP, bench_case)
