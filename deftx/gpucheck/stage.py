"""Entry point of one stage process: ``python -m deftx.gpucheck.stage CONTEXT.json``.

Runs the stage named in the context, writes its result (``status``, ``headline``, data)
to ``result.json`` beside the context, and exits 0 when the stage's status is ``ok``. An
exception becomes a ``failed`` result with its traceback. Stopped by SIGTERM (the runner's
cap, or the runner itself stopped), it stops the programs it started (pytest, ncu, the
sanitizer: each in a session of its own) and keeps the partial result it wrote, if any.
"""

from __future__ import annotations

import os
import sys
import time
import traceback

from deftx.gpucheck.context import StageContext
from deftx.gpucheck.processes import Stopped, stopping_on_signals

INTERPRETED_ON_CPU = frozenset({"histogram"})
"""Stages that launch Triton kernels directly: on CPU they run under the Triton interpreter."""


def run_stage(ctx: StageContext) -> dict:
    """Run the context's stage; never raises (a failure is a result)."""
    from deftx.gpucheck.stages import stage_runner

    start = time.perf_counter()
    try:
        result = stage_runner(ctx.stage)(ctx)
    except Exception as err:  # a stage's crash is its result, reported in the summary
        result = {
            "status": "failed",
            "headline": f"{type(err).__name__}: {err}".splitlines()[0][:300],
            "traceback": traceback.format_exc(),
        }
    result.setdefault("status", "ok")
    result.setdefault("headline", "")
    result["seconds"] = time.perf_counter() - start
    return result


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m deftx.gpucheck.stage CONTEXT.json", file=sys.stderr)
        return 2
    ctx = StageContext.load(argv[0])
    if ctx.device == "cpu" and ctx.stage in INTERPRETED_ON_CPU:
        os.environ["TRITON_INTERPRET"] = "1"
    if not ctx.full:
        os.environ.setdefault("OMP_NUM_THREADS", "1")  # toy sizes: threads only contend (CI's cores are shared)
    print(f"[{ctx.stage}] starting, {ctx.seconds_left():.0f} s to its deadline", flush=True)
    try:
        with stopping_on_signals():
            result = run_stage(ctx)
    except Stopped as stop:
        print(f"[{ctx.stage}] {stop}", flush=True)
        return stop.exit_status
    ctx.write_result(result)
    print(f"[{ctx.stage}] {result['status']}: {result['headline']}", flush=True)
    if "traceback" in result:
        print(result["traceback"], flush=True)
    return 0 if result["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
