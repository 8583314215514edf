"""``benchmarks/loop_issue.py``: the top-k count's loop path, per element, from a real compile."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from deftx.perf.static.compile import compile_spec, declared_specializations
from deftx.perf.targets import H100_SXM

SCRIPT = Path(__file__).resolve().parents[3] / "benchmarks" / "loop_issue.py"


@pytest.fixture(scope="module")
def loop_issue():
    spec = importlib.util.spec_from_file_location("loop_issue", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_count_loop_row_divides_its_path_by_the_elements_of_a_warp(loop_issue):
    declared = next(d for d in declared_specializations().specs if d.spec.name == "topk_count_fp32")
    build = compile_spec(declared.spec, H100_SXM, module=declared.module)
    row = loop_issue.loop_row(build)
    path = build.sass.vector_path_length()
    assert row["elements_per_warp"] == 1024 // build.num_warps == 256
    # one iteration loads 8 fp32 per thread with two 128-bit loads: a few dozen instructions at least
    assert path is not None and 20 <= path < len(build.sass.instructions)
    assert row["warp_instructions_per_element"] == path / 256
    issue = loop_issue.H200_WARP_ISSUE_PER_S / (path / 256) * 4
    assert row["issue_bound_pct_of_copy"] == pytest.approx(100 * issue / loop_issue.H200_COPY_BYTES_PER_S)
    doc = {"arch": "sm_90", "triton": "x", "command": "python benchmarks/loop_issue.py", "wall_s": 1.0, "rows": [row]}
    assert f"| `topk_count_fp32` | {build.num_warps} | {build.registers} | {path} | 256 |" in loop_issue.markdown(doc)
