"""The histogram micro-benchmark's probe kernels: right results (Triton interpreter) and compiled for sm_90."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

CHECK = textwrap.dedent("""
    import torch
    from deftx.gpucheck import probe_kernels
    from deftx.gpucheck.stages.histogram import make_data, top_digit_histogram

    for dtype in (torch.float32, torch.bfloat16):
        x = make_data("spread", 5000 + 3, dtype, torch.device("cpu"))
        expected = top_digit_histogram(x)
        hist = probe_kernels.digit_histogram(x, 24, torch.zeros(256, dtype=torch.int64))
        assert torch.equal(hist, expected), (dtype, hist.nonzero(), expected.nonzero())
        total = probe_kernels.digit_sum(x, 24, torch.zeros(1, dtype=torch.int64))
        digits = torch.arange(256)
        assert int(total) == int((expected * digits).sum()), (int(total), int((expected * digits).sum()))
        assert int(expected.sum()) == x.numel() and int((expected > 0).sum()) > 10
    print("ok")
""")


def test_probe_kernels_count_the_top_digits_exactly_under_the_interpreter():
    done = subprocess.run([sys.executable, "-c", CHECK], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TRITON_INTERPRET": "1"}, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-3000:]


@pytest.mark.parametrize("index", range(4))
def test_probe_kernels_compile_for_sm90_without_spills(index):
    from deftx.gpucheck.probe_kernels import SPECIALIZATIONS
    from deftx.perf.static.compile import compile_spec
    from deftx.perf.targets import get_target

    build = compile_spec(SPECIALIZATIONS[index], get_target("sm_90"))
    assert build.local_memory_bytes == 0
    assert build.registers <= 255
