"""Running a native op in a child process whose calling thread flushes subnormals.

``torch.set_flush_denormal(True)`` sets flush-to-zero and denormals-are-zero on the calling
thread only, so the library's OpenMP workers (started before the call) keep subnormals while
the master thread would not: a native op must compute with subnormals on every thread.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
CANNOT_FLUSH = 77
"""Exit status of a script whose ``torch.set_flush_denormal(True)`` returned False."""


def run_flushing_caller(script: str, *args: str) -> str:
    """stdout of ``python -c script *args`` with two OpenMP threads and this checkout first on
    the path; the script flushes subnormals itself (exiting with :data:`CANNOT_FLUSH` where the
    CPU cannot). Skips the test on one CPU or such a CPU; fails it on any other error."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs for threads in both modes")
    env = {**os.environ, "OMP_NUM_THREADS": "2",
           "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    done = subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                          timeout=120)
    if done.returncode == CANNOT_FLUSH:
        pytest.skip("this CPU cannot flush denormals")
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout
