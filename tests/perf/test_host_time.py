"""benchmarks/host_time.py runs each of its modes on a small shape set and prints one line per timed call."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from deftx.perf.shapes import BUILTIN_SHAPE_SETS

REPO = Path(__file__).resolve().parents[2]
TIMED = re.compile(r"^\S+, (\d+) tensors, K = 0\.01: (.+): host time (\d+\.\d+) ms per call", re.MULTILINE)


@pytest.mark.parametrize(("mode", "calls"), [
    ("compose", ["scatter_add_ (2 diffs, save=True)"]),
    ("compose-prepared", ["scatter_add_ + scatter_restore_ (2 diffs)", "prepare_scatter: apply + restore (2 diffs)"]),
    ("composition", ["apply_diffs + revert (2 diffs)", "prepare_composition: apply + revert (2 diffs)"]),
    ("step", ["MaskedAdamW.step (checked once)", "masked_adamw_step_ (checked per call)"]),
])
def test_each_mode_times_its_calls(tmp_path, mode, calls):
    small = BUILTIN_SHAPE_SETS["e5-small"].scaled(0.02)
    shapes = tmp_path / "small.json"
    shapes.write_text(json.dumps(small.to_json()))
    done = subprocess.run([sys.executable, "benchmarks/host_time.py", mode, "--shapes", str(shapes), "--k", "0.01",
                           "--calls", "2"], cwd=REPO, capture_output=True, text=True, timeout=300, check=False,
                          env={**os.environ, "TRITON_INTERPRET": "1"})
    assert done.returncode == 0, done.stderr[-2000:]
    timed = TIMED.findall(done.stdout)
    assert [name for _, name, _ in timed] == calls, done.stdout
    assert {count for count, _, _ in timed} == {str(len(small.flat()))}
