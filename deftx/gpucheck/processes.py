"""Child processes that can always be stopped whole: each in its own process group.

A stage runs tools that start programs of their own (pytest's workers, the python that ncu
or compute-sanitizer profiles); killing only the direct child would leave those running on
the GPU into the next stage. So every child starts a new session and is stopped by killing
its whole group, also after it exits (anything it left behind goes with it).

A new session is out of reach of a signal sent to the parent's group (the device call's time
limit stops the command's group), so a parent that runs children under
:func:`stopping_on_signals` turns SIGTERM and SIGHUP into :class:`Stopped`: the wait in
:func:`finish` is interrupted, the child's group is stopped, and the parent can write what it
has before it exits, instead of leaving the child running on the machine.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

TERM_GRACE_S = 2.0
STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGTERM, signal.SIGHUP)
"""The signals :func:`stopping_on_signals` turns into :class:`Stopped`."""


def last_line(log: Path, limit: int = 300) -> str:
    """The last non-blank line of ``log`` (a failed process's error, as a whole log comes back only in
    the bundle), at most ``limit`` characters; empty without one."""
    lines = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()] \
        if log.is_file() else []
    return lines[-1][:limit] if lines else ""


class Stopped(BaseException):
    """A stop signal reached this process (a BaseException, as KeyboardInterrupt: no ``except
    Exception`` swallows it). ``signum``: the signal's number."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum

    @property
    def exit_status(self) -> int:
        """The shell's status of a process ended by the signal: 128 + its number."""
        return 128 + self.signum


@contextlib.contextmanager
def stopping_on_signals() -> Iterator[None]:
    """Within the block, the first SIGTERM or SIGHUP raises :class:`Stopped` in the main thread; later
    ones are ignored, so the writing that follows the first is not cut short by another."""

    def stop(signum: int, frame: object) -> None:
        for each in STOP_SIGNALS:
            signal.signal(each, signal.SIG_IGN)
        raise Stopped(signum)

    previous = {each: signal.signal(each, stop) for each in STOP_SIGNALS}
    try:
        yield
    finally:
        for each, handler in previous.items():
            signal.signal(each, handler)


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
    its group is killed in any case. The exit code, or None if it ran too long. An exception
    while waiting (:class:`Stopped`, KeyboardInterrupt) stops the group the same way, then propagates."""
    try:
        code = process.wait(timeout=max(0.1, timeout))
    except subprocess.TimeoutExpired:
        code = None
        terminate_group(process)
    except BaseException:
        terminate_group(process)
        raise
    finally:
        signal_group(process, signal.SIGKILL)
        process.wait()
    return code


def finish_all(started: Sequence[subprocess.Popen], timeout: Callable[[], float]) -> list[int | None]:
    """:func:`finish` each of the processes ``started`` together, in order, each given ``timeout()`` seconds
    when its wait begins. An exception while waiting for one (:class:`Stopped`) stops every other
    one's group as well, then propagates: none runs on after the caller."""
    try:
        return [finish(process, timeout()) for process in started]
    except BaseException:
        for process in started:
            terminate_group(process)
            signal_group(process, signal.SIGKILL)
            process.wait()
        raise


def terminate_group(process: subprocess.Popen) -> None:
    """SIGTERM to the process's group, then up to :data:`TERM_GRACE_S` seconds for the process to exit."""
    signal_group(process, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=TERM_GRACE_S)


def run(command: list[str], cwd: str | Path, output: Path, timeout: float,
        env: Mapping[str, str] | None = None) -> int | None:
    """:func:`start` then :func:`finish`."""
    return finish(start(command, cwd, output, env), timeout)
