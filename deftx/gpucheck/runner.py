"""Runs the planned stages, each in its own process under its time cap, and keeps the output folder current.

Per stage: a :class:`~deftx.gpucheck.context.StageContext` (deadline = start + cap -
:data:`KILL_MARGIN_S`) is written, ``python -m deftx.gpucheck.stage`` runs it in a new
process group with its output in ``<work>/<stage>/stage.log``, and the group is killed at
the cap. The cap is the stage's budget, or less when the run's total budget is nearly spent
(a stage with under :data:`MIN_STAGE_S` left is skipped). After every stage the summary is
rewritten and the output folder refreshed (:func:`deftx.gpucheck.outputs.publish`, bundle),
so whatever finished is there even if the whole command is killed. Stopped by a signal
(:class:`~deftx.gpucheck.processes.Stopped`: the device call's time limit), the running stage
is stopped with everything it started, recorded as ``stopped`` with what it had written, and
the outputs are refreshed once more before :class:`Stopped` propagates.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deftx.gpucheck import processes
from deftx.gpucheck.context import StageContext, read_result
from deftx.gpucheck.outputs import BUNDLE_NAME, bundle, publish, returnable_problems, write_json
from deftx.gpucheck.plan import PlannedStage
from deftx.gpucheck.summary import build_summary, kernels_document, kernels_markdown, render_markdown

KILL_MARGIN_S = 3.0
"""Seconds between a stage's deadline (when it should have written its result) and its kill."""
MIN_STAGE_S = 5.0


@dataclass(frozen=True)
class RunSettings:
    """One run: where it writes, what it runs on, and its overall budget."""

    out_dir: Path
    work_dir: Path
    repo: Path
    device: str
    sizes: str
    prefix: str
    total_budget_s: float
    tools: dict[str, str | None] = field(default_factory=dict)
    test_paths: tuple[str, ...] = ("tests",)
    pytest_workers: int = 0
    command: str = ""


def stage_context(settings: RunSettings, name: str, deadline: float) -> StageContext:
    return StageContext(stage=name, repo=str(settings.repo), work_dir=str(settings.work_dir), device=settings.device,
                        sizes=settings.sizes, prefix=settings.prefix, deadline=deadline, tools=settings.tools,
                        test_paths=settings.test_paths, pytest_workers=settings.pytest_workers)


def run_process(command: list[str], cwd: Path, log: Path, cap_s: float) -> tuple[int | None, float]:
    """Run ``command`` in its own process group, output to ``log``, killed at ``cap_s``.

    Returns (exit code, or None if it was killed at the cap; seconds it ran).
    """
    start = time.monotonic()
    code = processes.run(command, cwd, log, cap_s)
    return code, time.monotonic() - start


def stage_record(planned: PlannedStage, result: dict[str, Any] | None, code: int | None, seconds: float,
                 log: Path) -> dict[str, Any]:
    """The summary's row for a stage that ran: status from its result, or from how it ended (a
    partial result saying ok, left by a process that died with another exit code, is a failure)."""
    record: dict[str, Any] = {"stage": planned.stage.name, "budget_s": planned.stage.budget_s, "seconds": seconds}
    if code is None:
        partial = (result or {}).get("headline", "")
        return {**record, "status": "timeout", "headline": f"killed at its cap; {partial or 'no result written'}"}
    if result is None:
        return {**record, "status": "failed",
                "headline": f"exited with {code} and wrote no result: {processes.last_line(log)}"}
    if code != 0 and result.get("status", "failed") == "ok":
        # a stage exits 0 exactly when its final status is ok: this is a partial result (a crash, a kill)
        return {**record, "status": "failed",
                "headline": f"exited with {code} after its partial result: {result.get('headline', '')}; "
                            f"{processes.last_line(log)}"}
    return {**record, "status": result.get("status", "failed"), "headline": result.get("headline", "")}


def stopped_record(planned: PlannedStage, result: dict[str, Any] | None, seconds: float,
                   stop: processes.Stopped) -> dict[str, Any]:
    """The summary's row for the stage running when the check was stopped, with its partial result's headline."""
    partial = (result or {}).get("headline", "")
    return {"stage": planned.stage.name, "budget_s": planned.stage.budget_s, "seconds": seconds, "status": "stopped",
            "headline": f"{stop} after {seconds:.0f} s; {partial or 'no result written'}"}


def skipped_record(planned: PlannedStage, reason: str) -> dict[str, Any]:
    return {"stage": planned.stage.name, "budget_s": planned.stage.budget_s, "seconds": 0.0, "status": "skipped",
            "headline": reason}


def refresh_outputs(settings: RunSettings, meta: dict[str, Any], records: list[dict[str, Any]]) -> dict[str, Any]:
    """Rewrite the summary and the kernels document, publish them and the benchmark documents
    to the output folder, and rebuild the bundle; returns the summary."""
    work, prefix = settings.work_dir, settings.prefix
    summary = build_summary(meta, records, work)
    write_json(work / "summary.json", summary)
    (work / "summary.md").write_text(render_markdown(summary, work))
    write_json(work / f"{prefix}_kernels.json", kernels_document(summary, work))
    (work / f"{prefix}_kernels.md").write_text(kernels_markdown(summary, work))
    copies = {"summary.json": work / "summary.json", "summary.md": work / "summary.md",
              f"{prefix}_kernels.json": work / f"{prefix}_kernels.json"}
    for document in sorted(work.glob(f"bench-*/{prefix}_*.json")):
        copies[document.name] = document
    publish(settings.out_dir, copies)
    bundle(work, settings.out_dir / BUNDLE_NAME)
    return summary


def run_check(
    settings: RunSettings, planned: list[PlannedStage], meta: dict[str, Any],
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every planned stage in order; returns the final summary. Stopped by a signal, it records the
    running stage as stopped and those after it as not started, refreshes the outputs and re-raises
    :class:`~deftx.gpucheck.processes.Stopped`."""
    start = time.monotonic()
    records: list[dict[str, Any]] = []
    started = start
    running: PlannedStage | None = None
    try:
        for p in planned:
            started, running = time.monotonic(), p
            records.append(run_planned(settings, p, settings.total_budget_s - (started - start), say))
            running = None
            if records[-1]["status"] != "skipped":
                refresh_outputs(settings, {**meta, "elapsed_s": time.monotonic() - start}, records)
    except processes.Stopped as stop:
        if running is not None and running.runs:
            records.append(stopped_record(running, read_result(settings.work_dir, running.stage.name),
                                          time.monotonic() - started, stop))
            say(f"[{running.stage.name}] stopped: {records[-1]['headline']}")
        records += [skipped_record(rest, f"not started: the check was {stop}") for rest in planned[len(records):]]
        refresh_outputs(settings, {**meta, "elapsed_s": time.monotonic() - start}, records)
        raise
    summary = refresh_outputs(settings, {**meta, "elapsed_s": time.monotonic() - start}, records)
    problems = returnable_problems(settings.out_dir)
    if problems:
        say("warning: the output folder would not come back whole from a device call: " + "; ".join(problems))
    return summary


def run_planned(settings: RunSettings, p: PlannedStage, left: float, say: Callable[[str], None]) -> dict[str, Any]:
    """Run one planned stage, or skip it (not selected, or under :data:`MIN_STAGE_S` of the ``left``
    seconds of the total budget); its record."""
    if not p.runs:
        return skipped_record(p, p.skip_reason or "")
    cap = min(float(p.stage.budget_s), left)
    if cap < MIN_STAGE_S:
        return skipped_record(p, f"the total budget of {settings.total_budget_s:g} s was spent")
    say(f"[{p.stage.name}] running (cap {cap:.0f} s): {p.stage.what}")
    ctx = stage_context(settings, p.stage.name, time.time() + cap - KILL_MARGIN_S)
    ctx_path = ctx.stage_dir / "context.json"
    ctx.save(ctx_path)
    log = ctx.stage_dir / "stage.log"
    code, seconds = run_process([sys.executable, "-m", "deftx.gpucheck.stage", str(ctx_path)], settings.repo, log,
                                cap)
    record = stage_record(p, read_result(settings.work_dir, p.stage.name), code, seconds, log)
    say(f"[{p.stage.name}] {record['status']} in {seconds:.1f} s: {record['headline']}")
    return record
