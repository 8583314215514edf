"""Child processes that can always be stopped whole: each in its own process group.

A stage runs tools that start programs of their own (pytest's workers, the python that ncu
or compute-sanitizer profiles); killing only the direct child would leave those running on
the GPU into the next stage. So every child starts a new session and is stopped by killing
its whole group, also after it exits (anything it left behind goes with it).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Mapping
from pathlib import Path

TERM_GRACE_S = 2.0


def start(command: list[str], cwd: str | Path, output: Path, env: Mapping[str, str] | None = None
          ) -> subprocess.Popen:
    """Start ``command`` in a new process group, stdout and stderr to the file ``output``."""
    with output.open("w") as out:
        return subprocess.Popen(command, cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})


def signal_group(process: subprocess.Popen, signum: int) -> None:
    """Send ``signum`` to the process's group (it and everything it started that stayed in the group)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def finish(process: subprocess.Popen, timeout: float) -> int | None:
    """Wait up to ``timeout`` seconds, then stop the group: SIGTERM (a profiler or sanitizer then
    writes what it has), SIGKILL after :data:`TERM_GRACE_S`. Anything the process left running in
    its group is killed in any case. The exit code, or None if it ran too long."""
    try:
        code = process.wait(timeout=max(0.1, timeout))
    except subprocess.TimeoutExpired:
        code = None
        signal_group(process, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=TERM_GRACE_S)
    signal_group(process, signal.SIGKILL)
    process.wait()
    return code


def run(command: list[str], cwd: str | Path, output: Path, timeout: float,
        env: Mapping[str, str] | None = None) -> int | None:
    """:func:`start` then :func:`finish`."""
    return finish(start(command, cwd, output, env), timeout)
