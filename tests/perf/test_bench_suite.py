"""The pytest-benchmark suite (``benchmarks/``) fails a fast wrong deftx op instead of timing it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from deftx.perf.cases import backend_of, implementations

ROOT = Path(__file__).resolve().parents[2]
TINY = {
    "name": "tiny",
    "tensors": [{"name": "embed", "shape": [301, 72], "vocab": True}],
    "num_layers": 2,
    "layer_tensors": [{"name": "q", "shape": [72, 72]}, {"name": "ffn", "shape": [130, 72]}],
}


def _run_benchmarks(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    shapes = tmp_path / "tiny.json"
    shapes.write_text(json.dumps(TINY))
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-rf", "--benchmark-disable",
               "benchmarks/test_bench_topk.py", "benchmarks/test_bench_scatter.py",
               "--bench-shapes", str(shapes), "--bench-scale", "1", "--bench-device", "cpu", *extra]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)


def test_the_suite_fails_each_planted_wrong_deftx_op_and_passes_the_real_ones(tmp_path: Path) -> None:
    real = _run_benchmarks(tmp_path)
    assert real.returncode == 0, real.stdout[-3000:] + real.stderr[-3000:]
    planted = _run_benchmarks(tmp_path, "-p", "tests.perf.planted_wrong_ops")
    failed = sorted(line.split()[1] for line in planted.stdout.splitlines() if line.startswith("FAILED"))
    deftx_cases = sorted(
        f"benchmarks/test_bench_{op}.py::test_{op}[K={k}-{impl}]"
        for op in ("topk", "scatter") for k in ("0.1%", "1%", "10%")
        for impl in implementations(op, torch.device("cpu")) if backend_of(impl) is not None
    )
    assert failed == deftx_cases, planted.stdout[-3000:]
    assert "an entry of magnitude" in planted.stdout and "differ from index_add in fp32" in planted.stdout


def test_an_empty_or_out_of_range_bench_k_is_a_usage_error_not_an_empty_suite(tmp_path: Path) -> None:
    for k in ("", "10"):
        done = _run_benchmarks(tmp_path, "--collect-only", "--bench-k", k)
        assert done.returncode == 4, (k, done.stdout[-2000:], done.stderr[-2000:])
        assert "--bench-k" in done.stderr and "(0, 1]" in done.stderr, done.stderr[-2000:]
