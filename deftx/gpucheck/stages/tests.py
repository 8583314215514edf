"""Stage ``tests``: the CUDA tests, ``python -m pytest -m cuda``, selected by marker.

The kernel tests are parametrized over the device (interpreter on CPU, compiled on CUDA);
their CUDA cases, and the tests only a GPU can afford, carry the ``cuda`` marker. Selecting
by marker over ``tests/`` picks them up wherever they live. On CUDA the stage fails when no
test ran on the device: none selected (pytest's exit code 5), or every one skipped (CUDA not
seen by the tests' process); on a CPU run both are reported, not a failure. pytest runs in
its own process group, stopped before the stage's deadline, and its verbose log is parsed for
per-test outcomes, so a run cut short still reports what passed and failed. A test module that
cannot be collected does not stop the others (``--continue-on-collection-errors``): it is listed;
one that lacks a third-party package the machine does not have fails the stage only if nothing
else ran, any other (a deftx or Triton import that breaks there, a syntax error) fails it.
"""

from __future__ import annotations

import importlib.util
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from deftx.gpucheck import processes
from deftx.gpucheck.context import StageContext

NO_TESTS_SELECTED = 5
PER_TEST_TIMEOUT_S = 60
STOP_MARGIN_S = 4.0
OUTCOMES = ("PASSED", "FAILED", "ERROR", "SKIPPED", "XFAIL", "XPASS")
_SERIAL_LINE = re.compile(r"^(\S+::\S+) (" + "|".join(OUTCOMES) + r")\b")
_XDIST_LINE = re.compile(r"^\[gw\d+\] (?:\[\s*\d+%\] )?(" + "|".join(OUTCOMES) + r") (\S+::\S+)")
_COLLECTION_ERROR = re.compile(r"^ERROR (\S+\.py)(?: - (.*))?$")
_MISSING_MODULE = re.compile(r"^ModuleNotFoundError: No module named '([^'.]+)")
OWN_PACKAGES = frozenset({"deftx", "kernels", "tests"})


def pytest_command(
    python: str, paths: tuple[str, ...], junit: Path, *, workers: int, per_test_timeout: int | None
) -> list[str]:
    """``python -m pytest PATHS -m cuda -v`` with a junit report, xdist workers and a per-test timeout."""
    command = [python, "-m", "pytest", *paths, "-m", "cuda", "-v", "-rfE", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", f"--junitxml={junit}"]
    if workers > 0:
        command += ["-n", str(workers)]
    if per_test_timeout is not None:
        command += [f"--timeout={per_test_timeout}"]
    return command


def parse_outcomes(log: str) -> dict[str, str]:
    """test id -> outcome, from pytest's ``-v`` lines (serial and xdist formats)."""
    outcomes: dict[str, str] = {}
    for line in log.splitlines():
        serial, xdist = _SERIAL_LINE.match(line), _XDIST_LINE.match(line)
        if serial:
            outcomes[serial.group(1)] = serial.group(2)
        elif xdist:
            outcomes[xdist.group(2)] = xdist.group(1)
    return outcomes


def parse_collection_errors(log: str) -> dict[str, str]:
    """test module -> why it could not be collected, from the short summary's ``ERROR path.py - ...`` lines."""
    errors = {}
    for line in log.splitlines():
        match = _COLLECTION_ERROR.match(line)
        if match:
            errors[match.group(1)] = match.group(2) or ""
    return errors


def lacks_a_package(reason: str) -> bool:
    """Whether a collection error's ``reason`` is a third-party package missing on the machine (not one
    of :data:`OWN_PACKAGES`, whose import failing is a defect of deftx there)."""
    match = _MISSING_MODULE.match(reason)
    return match is not None and match.group(1) not in OWN_PACKAGES


def has_plugin(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def run_pytest(command: list[str], cwd: str, log: Path, timeout: float) -> tuple[int | None, bool]:
    """Run pytest in its own process group into ``log``; (exit code or None, timed out)."""
    code = processes.run(command, cwd, log, timeout)
    return code, code is None


RAN = ("PASSED", "FAILED", "ERROR", "XFAIL", "XPASS")
"""Outcomes of a test that ran (skipped is the one that did not)."""


def summarize(outcomes: dict[str, str], code: int | None, timed_out: bool,
              collection_errors: dict[str, str] | None = None, *, on_cuda: bool = False) -> dict[str, Any]:
    """Status, headline and counts of a pytest run: failed on a failing test, or on an exit code
    that test outcomes and collection errors do not explain; ``on_cuda``, also when no test ran
    (none selected, or all skipped: the CUDA tests did not see the GPU)."""
    collection_errors = collection_errors or {}
    counts = dict(Counter(outcomes.values()))
    failed = sorted(t for t, o in outcomes.items() if o in ("FAILED", "ERROR"))
    shown = ", ".join(f"{counts[o]} {o.lower()}" for o in OUTCOMES if counts.get(o)) or "no test outcomes"
    broken = sorted(path for path, reason in collection_errors.items() if not lacks_a_package(reason))
    lacking = sorted(path for path in collection_errors if path not in broken)
    if lacking:
        shown += f"; {len(lacking)} modules not importable here ({', '.join(lacking)})"
    if broken:
        shown += f"; {len(broken)} modules failed to import ({', '.join(broken)})"
    explained = code == 0 or (code == 1 and not failed and not broken and lacking and outcomes)
    if timed_out:
        status, headline = "timeout", f"stopped at the stage deadline after {shown}"
    elif code == NO_TESTS_SELECTED:
        status, headline = ("failed" if on_cuda else "ok"), "no tests selected by -m cuda"
    elif on_cuda and not any(o in RAN for o in outcomes.values()):
        status, headline = "failed", f"no CUDA test ran: {shown}"
    elif explained:
        status, headline = "ok", shown
    else:
        status, headline = "failed", f"pytest exited with {code}: {shown}"
    return {"status": status, "headline": headline, "counts": counts, "failed_tests": failed, "exit_code": code,
            "collection_errors": collection_errors}


def run(ctx: StageContext) -> dict[str, Any]:
    workers = ctx.pytest_workers if has_plugin("xdist") else 0
    timeout = PER_TEST_TIMEOUT_S if has_plugin("pytest_timeout") else None
    log = ctx.stage_dir / "pytest.log"
    command = pytest_command(sys.executable, ctx.test_paths, ctx.stage_dir / "junit.xml", workers=workers,
                             per_test_timeout=timeout)
    code, timed_out = run_pytest(command, ctx.repo, log, ctx.seconds_left() - STOP_MARGIN_S)
    text = log.read_text()
    result = summarize(parse_outcomes(text), code, timed_out, parse_collection_errors(text),
                       on_cuda=ctx.device == "cuda")
    result["command"] = command
    result["log_tail"] = text.splitlines()[-30:]
    return result
