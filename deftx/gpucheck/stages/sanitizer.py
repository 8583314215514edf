"""Stage ``sanitizer``: compute-sanitizer memcheck and racecheck over one small case of each kernel.

Both tools run at once (two processes on the GPU) over :mod:`deftx.gpucheck.kernel_cases` at
``small`` size. memcheck runs with ``PYTORCH_NO_CUDA_MEMORY_CACHING=1``, so every tensor is
its own allocation and an access past a tensor's end is caught rather than landing in the
caching allocator's slack. Each tool's log is parsed for its summary (``ERROR SUMMARY: N
errors``; ``RACECHECK SUMMARY: N hazards displayed (E errors, W warnings)``, one per process it
followed, summed) and for the reports naming one of deftx's kernels; the cases that ran are read
from the program's output.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

from deftx.gpucheck import processes
from deftx.gpucheck.context import StageContext
from deftx.perf.overhead import triton_kernel_names

TOOLS = ("memcheck", "racecheck")
STOP_MARGIN_S = 3.0
_ERROR_SUMMARY = re.compile(r"ERROR SUMMARY: (\d+) errors?")
_RACE_SUMMARY = re.compile(r"RACECHECK SUMMARY: (\d+) hazards? displayed \((\d+) errors?, (\d+) warnings?\)")
_RAN = re.compile(r"^ran (\S+)$", re.MULTILINE)
_TOOL_PROBLEM = re.compile(r"^=+ ((?:Internal Sanitizer )?Error:.*|.*\b(?:not supported|unable to)\b.*)$",
                           re.IGNORECASE | re.MULTILINE)
"""The tool's own failures (it did not instrument the program, or only part of it), apart from
the errors it reports in the program: with these, a 0-error summary checked nothing."""


def sanitizer_command(sanitizer: str, tool: str, python: str, log: Path) -> list[str]:
    return [sanitizer, "--tool", tool, "--target-processes", "all", "--print-limit", "100",
            "--log-file", str(log), python, "-m", "deftx.gpucheck.kernel_cases", "--size", "small"]


def parse_log(text: str, kernels: frozenset[str]) -> dict[str, Any]:
    """Errors (and for racecheck hazards and warnings) from a tool's log, summed over the summary of
    every process it followed (``--target-processes all``: a compiler the program starts writes its
    own, often first), plus the report lines that name one of ``kernels``."""
    errors = [int(count) for count in _ERROR_SUMMARY.findall(text)]
    races = [tuple(map(int, counts)) for counts in _RACE_SUMMARY.findall(text)]
    parsed: dict[str, Any] = {"errors": sum(errors) if errors else None, "summaries": len(errors) or len(races)}
    if races:
        hazards, race_errors, warnings = (sum(column) for column in zip(*races, strict=True))
        parsed.update(hazards=hazards, errors=race_errors, warnings=warnings)
    lines = [line.strip("= ").strip() for line in text.splitlines() if any(k in line for k in kernels)]
    parsed["deftx_kernel_reports"] = list(dict.fromkeys(lines))[:50]
    parsed["tool_problems"] = list(dict.fromkeys(m.strip() for m in _TOOL_PROBLEM.findall(text)))[:10]
    return parsed


def tool_status(parsed: dict[str, Any], code: int | None, ran: list[str], expected: int) -> str:
    """``ok``: the summary says 0 errors, the tool reported no failure of its own and every case ran;
    ``timeout``; else ``failed``."""
    if code is None:
        return "timeout"
    clean = parsed["errors"] == 0 and not parsed.get("hazards") and not parsed.get("tool_problems")
    return "ok" if clean and code == 0 and len(ran) == expected else "failed"


def run(ctx: StageContext) -> dict[str, Any]:
    from deftx.gpucheck.kernel_cases import CASES

    sanitizer = ctx.tools.get("compute-sanitizer")
    if not sanitizer:
        return {"status": "failed", "headline": "compute-sanitizer not found"}
    started = {}
    for tool in TOOLS:
        env = {"PYTORCH_NO_CUDA_MEMORY_CACHING": "1"} if tool == "memcheck" else {}
        command = sanitizer_command(sanitizer, tool, sys.executable, ctx.stage_dir / f"{tool}.log")
        started[tool] = (processes.start(command, ctx.repo, ctx.stage_dir / f"{tool}.out", env), command)
    codes = processes.finish_all([process for process, _ in started.values()],
                                 lambda: ctx.seconds_left() - STOP_MARGIN_S)
    kernels = triton_kernel_names()
    tools: dict[str, Any] = {}
    for (tool, (_, command)), code in zip(started.items(), codes, strict=True):
        log = ctx.stage_dir / f"{tool}.log"
        text = log.read_text() if log.is_file() else ""
        ran = _RAN.findall((ctx.stage_dir / f"{tool}.out").read_text())
        parsed = parse_log(text, kernels)
        tools[tool] = {**parsed, "exit_code": code, "cases_ran": ran, "command": command,
                       "status": tool_status(parsed, code, ran, len(CASES))}
    bad = [t for t, r in tools.items() if r["status"] != "ok"]
    headline = "; ".join(
        f"{t}: {r['status']}, {r['errors'] if r['errors'] is not None else '?'} errors"
        + (f", {r['hazards']} hazards" if r.get("hazards") is not None else "")
        + f", {len(r['cases_ran'])}/{len(CASES)} cases"
        + (f" ({r['tool_problems'][0][:150]})" if r["tool_problems"] else "")
        for t, r in tools.items()
    )
    status = "ok" if not bad else ("timeout" if all(tools[t]["status"] == "timeout" for t in bad) else "failed")
    return {"status": status, "headline": headline, "tools": tools}
