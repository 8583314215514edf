"""Stage ``ncu``: Nsight Compute on one call of each kernel case, metrics per launch.

``ncu --clock-control none`` (the card's clocks are left as they are) with
``--profile-from-start off`` over :mod:`deftx.gpucheck.kernel_cases` at ``medium`` size,
which calls each case once between ``cudaProfilerStart``/``Stop``, filtered to deftx's
Triton kernels by name. Sections SpeedOfLight, Occupancy and LaunchStats; the report
(``kernels.ncu-rep``) goes into the bundle, and its raw page, read back as CSV, gives per
launch: duration, DRAM throughput as % of peak, memory and compute throughput (% of peak:
the larger names the limiter), achieved and theoretical occupancy and which resource limits
the latter (registers, shared memory, warps, blocks).

On a machine whose runtime blocks the counters (gVisor) ncu fails at once: the stage
records its message.
"""

from __future__ import annotations

import csv
import io
import subprocess
import sys
from pathlib import Path
from typing import Any

from deftx.gpucheck import processes
from deftx.gpucheck.context import StageContext
from deftx.perf.overhead import triton_kernel_names

SECTIONS = ("SpeedOfLight", "Occupancy", "LaunchStats")
LAUNCH_COUNT = 60
STOP_MARGIN_S = 6.0
METRICS: dict[str, tuple[str, ...]] = {
    "duration_ns": ("gpu__time_duration.sum",),
    "dram_pct_of_peak": ("gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed",
                         "dram__throughput.avg.pct_of_peak_sustained_elapsed"),
    "memory_pct_of_peak": ("gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed",),
    "compute_pct_of_peak": ("sm__throughput.avg.pct_of_peak_sustained_elapsed",),
    "achieved_occupancy_pct": ("sm__warps_active.avg.pct_of_peak_sustained_active",),
    "theoretical_occupancy_pct": ("sm__maximum_warps_per_active_cycle_pct",),
    "registers_per_thread": ("launch__registers_per_thread",),
    "grid_size": ("launch__grid_size",),
    "block_size": ("launch__block_size",),
}
OCCUPANCY_LIMITS = {
    "registers": "launch__occupancy_limit_registers",
    "shared memory": "launch__occupancy_limit_shared_mem",
    "warps": "launch__occupancy_limit_warps",
    "blocks": "launch__occupancy_limit_blocks",
}


def kernel_regex(names: frozenset[str]) -> str:
    """ncu's ``--kernel-name regex:`` value matching any of ``names``."""
    return "regex:" + "|".join(sorted(names))


def profile_command(ncu: str, python: str, report: Path, names: frozenset[str]) -> list[str]:
    sections = [arg for s in SECTIONS for arg in ("--section", s)]
    return [ncu, "--clock-control", "none", "--profile-from-start", "off", "--target-processes", "all",
            "--kernel-name", kernel_regex(names), "--launch-count", str(LAUNCH_COUNT), *sections,
            "--export", str(report), "--force-overwrite",
            python, "-m", "deftx.gpucheck.kernel_cases", "--size", "medium", "--profile-range"]


def _number(text: str | None) -> float | None:
    if text is None:
        return None
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


NANOSECONDS_PER = {"ns": 1.0, "nsecond": 1.0, "us": 1e3, "usecond": 1e3, "ms": 1e6, "msecond": 1e6,
                   "s": 1e9, "second": 1e9}
"""Time units ncu writes in its units row (it scales them to the value: ncu 13 on the H200 wrote
``us``), in nanoseconds."""


def parse_raw_csv(text: str) -> list[dict[str, Any]]:
    """One dict per profiled launch from ``ncu --import R --csv --page raw``.

    The first CSV row is the header (metric names), a second row of units may follow (its
    ``ID`` is empty); lines before the header that are not CSV (``==PROF==`` notes) are skipped.
    Durations are converted to nanoseconds by their unit (nanoseconds without a units row).
    """
    lines = [line for line in text.splitlines() if line.startswith('"')]
    rows = list(csv.reader(io.StringIO("\n".join(lines))))
    if not rows:
        return []
    header, body = rows[0], rows[1:]
    units: dict[str, str] = {}
    launches = []
    for values in body:
        record = dict(zip(header, values, strict=False))
        if not record.get("ID", "").strip():
            units = units or record
            continue
        launches.append(launch_metrics(record, units))
    return launches


def _in_nanoseconds(value: float | None, unit: str) -> float | None:
    if value is None:
        return None
    if unit not in NANOSECONDS_PER:
        raise ValueError(f"ncu wrote a duration in unknown unit {unit!r}")
    return value * NANOSECONDS_PER[unit]


def launch_metrics(record: dict[str, str], units: dict[str, str] | None = None) -> dict[str, Any]:
    """The metrics of one launch: the first of each metric's candidate names that is present
    (``duration_ns`` converted by ``units``, the units row), the throughput limiter and the
    occupancy limiter."""
    out: dict[str, Any] = {"kernel": record.get("Kernel Name") or record.get("Function Name") or "?"}
    for key, candidates in METRICS.items():
        out[key] = next((_number(record[c]) for c in candidates if c in record), None)
    duration_metric = METRICS["duration_ns"][0]
    out["duration_ns"] = _in_nanoseconds(out["duration_ns"], (units or {}).get(duration_metric) or "ns")
    memory, compute = out["memory_pct_of_peak"], out["compute_pct_of_peak"]
    out["limiter"] = None if memory is None or compute is None else ("memory" if memory >= compute else "compute")
    limits = {name: _number(record.get(metric)) for name, metric in OCCUPANCY_LIMITS.items()}
    known = {name: value for name, value in limits.items() if value is not None}
    out["occupancy_limiter"] = min(known, key=known.get) if known else None
    return out


def markdown(launches: list[dict[str, Any]]) -> str:
    lines = ["| kernel | time | DRAM % of peak | memory % | compute % | limiter | occupancy achieved / theoretical "
             "| occupancy limited by | registers |", "|---|---:|---:|---:|---:|---|---:|---|---:|"]

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    for r in launches:
        time = "-" if r["duration_ns"] is None else f"{r['duration_ns'] / 1e3:.1f} us"
        lines.append(f"| `{r['kernel']}` | {time} | {pct(r['dram_pct_of_peak'])} | {pct(r['memory_pct_of_peak'])} "
                     f"| {pct(r['compute_pct_of_peak'])} | {r['limiter'] or '-'} "
                     f"| {pct(r['achieved_occupancy_pct'])} / {pct(r['theoretical_occupancy_pct'])} "
                     f"| {r['occupancy_limiter'] or '-'} | {pct(r['registers_per_thread'])} |")
    return "\n".join(lines) + "\n"


def run(ctx: StageContext) -> dict[str, Any]:
    ncu = ctx.tools.get("ncu")
    if not ncu:
        return {"status": "failed", "headline": "ncu not found"}
    report = ctx.stage_dir / "kernels.ncu-rep"
    command = profile_command(ncu, sys.executable, report, triton_kernel_names())
    log = ctx.stage_dir / "ncu.log"
    code = processes.run(command, ctx.repo, log, ctx.seconds_left() - STOP_MARGIN_S)
    tail = log.read_text().splitlines()[-20:]
    if not report.is_file():
        ended = "was stopped at the stage deadline" if code is None else f"exited with {code}"
        return {"status": "timeout" if code is None else "failed", "headline": f"ncu {ended} and wrote no report: "
                f"{next((line for line in reversed(tail) if line.strip()), '')[:200]}", "command": command,
                "log_tail": tail}
    exported = subprocess.run([ncu, "--import", str(report), "--csv", "--page", "raw"], capture_output=True,
                              text=True, check=False, timeout=max(1.0, ctx.seconds_left() - 1))
    (ctx.stage_dir / "kernels_raw.csv").write_text(exported.stdout)
    launches = parse_raw_csv(exported.stdout)
    (ctx.stage_dir / "kernels.md").write_text(markdown(launches))
    print(markdown(launches))
    status = "ok" if code == 0 and launches else ("timeout" if code is None else "failed")
    kernels = sorted({r["kernel"] for r in launches})
    headline = f"{len(launches)} launches of {len(kernels)} kernels profiled (ncu exit {code})"
    return {"status": status, "headline": headline, "launches": launches, "command": command, "log_tail": tail}
