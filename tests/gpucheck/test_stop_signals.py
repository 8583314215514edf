"""A check or a study stopped by SIGTERM (a device call's time limit signals the command's process
group; stages and units run in sessions of their own, out of its reach): nothing it started runs
on, and the output folder says what was running and keeps what had been written."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.gpucheck.test_study import VALID_CONFIG

REPO = Path(__file__).resolve().parents[2]
SLOW_TEST = """
import os, pathlib, time
import pytest

from tests.gpucheck.test_study import VALID_CONFIG

@pytest.mark.cuda
def test_runs_long():
    pathlib.Path({pid_file!r}).write_text(str(os.getpid()))
    time.sleep(120)
"""
STUDY_WITH_ONE_LONG_UNIT = """
import sys
from pathlib import Path
from deftx.gpucheck import study

work = Path({work!r})
program = "import os, pathlib, time; pathlib.Path({pid_file!r}).write_text(str(os.getpid())); time.sleep(120)"
study.pipeline_units = lambda config, seeds, device, work: [
    study.Unit("pipeline", f"seed-{{s}}", (sys.executable, "-c", program), work / "pipeline" / f"seed-{{s}}")
    for s in seeds]
sys.exit(study.main([{config!r}, "--seeds", "0", "1", "--out", {out!r}, "--budget", "300", "--work-dir",
                     str(work), "--min-unit-seconds", "0"]))
"""


def running(pid: int) -> bool:
    """Whether ``pid`` is a live process (a zombie left for init to reap is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


def wait_for(path: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not path.is_file() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} was not written in {seconds} s"
        time.sleep(0.2)


def stop_and_reap(process: subprocess.Popen, child_pid: int) -> int:
    """SIGTERM to ``process`` (as the call's time limit sends it); its exit code once ``child_pid`` had
    up to 10 s to end."""
    process.send_signal(signal.SIGTERM)
    code = process.wait(timeout=60)
    deadline = time.monotonic() + 10
    while running(child_pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return code


def stop_once_started(process: subprocess.Popen, pid_file: Path, wait_s: float) -> tuple[int, str]:
    """Once the child ``process`` started has written its pid to ``pid_file`` (within ``wait_s``), stop
    ``process`` (:func:`stop_and_reap`); its exit code and output. ``process`` is killed in any case."""
    try:
        wait_for(pid_file, wait_s)
        code = stop_and_reap(process, int(pid_file.read_text()))
    finally:
        process.kill()
    return code, process.stdout.read()


def test_a_check_stopped_by_sigterm_stops_its_stage_and_records_it(tmp_path):
    suite, pid_file = tmp_path / "suite", tmp_path / "pytest.pid"
    suite.mkdir()
    (suite / "test_slow.py").write_text(textwrap.dedent(SLOW_TEST.format(pid_file=str(pid_file))))
    out = tmp_path / "out"
    check = subprocess.Popen(
        [sys.executable, "-m", "deftx.gpucheck", "--device", "cpu", "--only", "environment,tests,bench-xlmr",
         "--test-paths", str(suite), "--pytest-workers", "0", "--out", str(out), "--work-dir", str(tmp_path / "work")],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    code, output = stop_once_started(check, pid_file, 240)
    assert not running(int(pid_file.read_text())), "pytest, started by the stage, ran on after the check stopped"
    assert code == 128 + signal.SIGTERM, output[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    statuses = {s["stage"]: s["status"] for s in summary["stages"]}
    assert (statuses["environment"], statuses["tests"], statuses["bench-xlmr"]) == ("ok", "stopped", "skipped")
    assert "SIGTERM" in summary["stages"][2]["headline"]
    assert "not started: the check was stopped by SIGTERM" in summary["stages"][5]["headline"]
    assert (out / "gpucheck-logs.tar.gz").is_file()


def test_a_study_stopped_by_sigterm_stops_its_unit_and_records_it(tmp_path):
    pid_file, out, config = tmp_path / "unit.pid", tmp_path / "out", tmp_path / "study.yaml"
    config.write_text(VALID_CONFIG)
    script = STUDY_WITH_ONE_LONG_UNIT.format(work=str(tmp_path / "work"), pid_file=str(pid_file), config=str(config),
                                             out=str(out))
    visit = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    code, output = stop_once_started(visit, pid_file, 120)
    assert not running(int(pid_file.read_text())), "the unit ran on after the visit stopped"
    assert code == 128 + signal.SIGTERM, output[-3000:]
    records = json.loads((out / "study.json").read_text())["records"]
    assert [(r["label"], r["status"]) for r in records] == [("seed-0", "stopped"), ("seed-1", "not started")]
    assert records[0]["why"] == "stopped by SIGTERM" and records[0]["wall_s"] > 0
    assert records[1]["why"] == "the visit was stopped by SIGTERM before it"


def test_a_stop_while_the_outputs_are_written_leaves_the_stage_that_finished_as_it_ended(tmp_path, monkeypatch):
    """The stop arrives after the first stage ended, while its outputs are written: that stage keeps its
    own record, and the next one is "not started", never "stopped" with the first one's time."""
    from deftx.gpucheck import runner
    from deftx.gpucheck.plan import PlannedStage, Stage
    from deftx.gpucheck.processes import Stopped

    planned = [PlannedStage(Stage(name, 10, name)) for name in ("first", "second")]
    written: list[list[dict]] = []

    def refresh(settings, meta, records):
        written.append([dict(r) for r in records])
        if len(written) == 1:
            raise Stopped(signal.SIGTERM)
        return {}

    monkeypatch.setattr(runner, "run_planned", lambda settings, p, left, say: {
        "stage": p.stage.name, "budget_s": 10, "seconds": 1.0, "status": "ok", "headline": "done"})
    monkeypatch.setattr(runner, "refresh_outputs", refresh)
    settings = runner.RunSettings(tmp_path / "out", tmp_path / "work", tmp_path, "cpu", "tiny", "cpu", 60.0)
    with pytest.raises(Stopped):
        runner.run_check(settings, planned, {}, say=lambda line: None)
    assert [(r["stage"], r["status"]) for r in written[-1]] == [("first", "ok"), ("second", "skipped")]
    assert written[-1][1]["headline"] == "not started: the check was stopped by SIGTERM"


FAKE_SANITIZER = """#!/bin/sh
echo $$ >> {pids}
exec sleep 120
"""


def test_a_sanitizer_stage_stopped_while_waiting_for_memcheck_stops_racecheck_too(tmp_path):
    """Both tools run at once; a stop during the wait for the first must not leave the second running."""
    from deftx.gpucheck.context import StageContext
    from deftx.gpucheck.processes import Stopped, stopping_on_signals
    from deftx.gpucheck.stages import sanitizer

    pids, fake = tmp_path / "pids", tmp_path / "compute-sanitizer"
    fake.write_text(FAKE_SANITIZER.format(pids=pids))
    fake.chmod(0o755)
    ctx = StageContext(stage="sanitizer", repo=str(REPO), work_dir=str(tmp_path / "work"), deadline=time.time() + 300,
                       tools={"compute-sanitizer": str(fake)})
    ctx.stage_dir.mkdir(parents=True, exist_ok=True)

    def stop_once_both_started(signum: int, frame: object) -> None:
        if pids.is_file() and len(pids.read_text().split()) == len(sanitizer.TOOLS):
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.raise_signal(signal.SIGTERM)

    previous = signal.signal(signal.SIGALRM, stop_once_both_started)
    signal.setitimer(signal.ITIMER_REAL, 0.2, 0.2)
    try:
        with stopping_on_signals(), pytest.raises(Stopped):
            sanitizer.run(ctx)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    started = [int(pid) for pid in pids.read_text().split()]
    assert len(started) == 2
    assert [running(pid) for pid in started] == [False, False]
