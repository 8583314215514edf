"""Loss trends of run logs (deftx.train.losses): windows, verdicts, torn lines, folders, the command."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from deftx.cli import main
from deftx.train.checkpoint import read_log
from deftx.train.losses import FELL, FLAT, NON_FINITE, folder_trends, loss_trends, phase_trend, read_run_log


def sawtooth(steps: int, start: float, end: float, climb: float = 1.2, every: int = 10,
             period: int = 50) -> list[tuple[int, float]]:
    """Logged points of a loss going linearly from ``start`` to ``end`` with a +0..+``climb`` rise
    through every ``period``-step megabatch (as group_by_length's longest-first order gives)."""
    return [(s, start + (end - start) * s / steps + climb * ((s - 1) % period) / period)
            for s in range(every, steps + 1, every)]


def write_log(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(record) + "\n" for record in records))


def test_a_phase_compares_whole_megabatch_windows_so_the_climb_within_them_cancels():
    points = sawtooth(100, 8.0, 7.0)
    trend = phase_trend("full", points)
    first = [loss for step, loss in points if step <= 50]
    last = [loss for step, loss in points if step > 50]
    assert (trend.window, trend.steps, trend.points) == (50, 100, 10)
    assert trend.first == pytest.approx(sum(first) / 5) and trend.last == pytest.approx(sum(last) / 5)
    climb = 1.2 * (9 + 19 + 29 + 39 + 49) / 5 / 50
    assert trend.fall == pytest.approx(0.5 / (8.0 - 0.3 + climb), rel=1e-9), "the linear fall, the climb cancelling"
    assert trend.verdict == FELL
    endpoints = (points[0][1] - points[-1][1]) / points[0][1]
    assert endpoints < 0, "the first and last points alone would say the loss rose"


@pytest.mark.parametrize(("start", "end", "verdict"), [(8.0, 7.7, FLAT), (8.0, 8.6, FLAT), (1.1, 0.9, FELL)])
def test_a_phase_that_took_off_less_than_5_percent_or_rose_hardly_trained(start, end, verdict):
    trend = phase_trend("full", sawtooth(100, start, end, climb=0.0))
    assert trend.verdict == verdict, trend


def test_a_nan_or_inf_loss_anywhere_makes_the_phase_non_finite():
    points = sawtooth(100, 2.0, 1.0)
    points[3] = (points[3][0], math.nan)
    assert phase_trend("full", points).verdict == NON_FINITE
    points[3] = (points[3][0], math.inf)
    assert phase_trend("full", points).verdict == NON_FINITE


def test_short_phases_use_half_their_length_and_a_single_point_gives_no_trend():
    trend = phase_trend("full", [(1, 1.0), (2, 0.5)])
    assert (trend.window, trend.first, trend.last, trend.verdict) == (1, 1.0, 0.5, FELL)
    assert phase_trend("full", [(30, 1.0), (60, 0.5), (90, 0.4)]).window == 45
    assert phase_trend("full", [(10, 1.0)]) is None
    sparse = phase_trend("full", [(60, 1.0), (120, 0.9)])
    assert (sparse.first, sparse.last) == (1.0, 0.9), "a first point past the window is the first window alone"


def test_records_group_by_phase_in_order_and_summaries_are_skipped():
    records = [{"phase": "full", "step": s, "loss": 2.0 - s / 100} for s in (10, 20, 30, 40)]
    records += [{"phase": "full", "step": 40, "train_loss": 1.8, "train_runtime": 3.0}]
    records += [{"phase": "sparse:lt-sft", "step": s, "loss": 1.0} for s in (20, 10)]
    records += [{"phase": "sparse:x", "step": True, "loss": 1.0}, {"phase": "sparse:x", "step": 2, "loss": "1"}]
    trends = loss_trends(records)
    assert [t.phase for t in trends] == ["full", "sparse:lt-sft"]
    assert (trends[0].first, trends[0].last) == (pytest.approx(1.85), pytest.approx(1.65))
    assert (trends[1].steps, trends[1].verdict) == (20, FLAT), "points put in step order"


def test_read_log_leaves_torn_lines_out(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"phase": "full", "step": 1, "loss": 1.0}\n[1, 2]\n{"phase": "full", "st')
    assert read_log(log) == [{"phase": "full", "step": 1, "loss": 1.0}]


def test_folder_trends_names_each_run_by_its_folder(tmp_path):
    write_log(tmp_path / "lang" / "x" / "log.jsonl", [{"phase": "full", "step": s, "loss": 5.0} for s in (1, 2)])
    write_log(tmp_path / "log.jsonl", [{"phase": "full", "step": s, "loss": 2.0 / s} for s in (1, 2)])
    trends = folder_trends(tmp_path)
    assert [(run, trend.phase, trend.verdict) for run, trend in trends] == [("lang/x", "full", FLAT),
                                                                           (".", "full", FELL)]


def test_the_losses_command_prints_every_phase_and_strict_fails_on_a_flat_one(tmp_path, capsys):
    write_log(tmp_path / "a" / "log.jsonl", [{"phase": "full", "step": s, "loss": 2.0 / s} for s in (1, 2)])
    assert main(["losses", str(tmp_path), "--strict"]) == 0
    assert "| a | full | 2 | 2.0000 | 1.0000 | +50.0% | fell |" in capsys.readouterr().out
    write_log(tmp_path / "b" / "log.jsonl", [{"phase": "full", "step": s, "loss": 3.0} for s in (1, 2)])
    assert main(["losses", str(tmp_path)]) == 0
    assert main(["losses", str(tmp_path), "--strict"]) == 1
    assert "1 of 2 phases hardly trained" in capsys.readouterr().out
    assert main(["losses", str(tmp_path / "none")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_read_run_log_leaves_out_a_torn_last_line_and_names_a_whole_line_that_is_not_a_record(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"phase": "full", "step": 1, "loss": 1.0}\n\n{"phase": "full", "st')
    assert read_run_log(log) == [{"phase": "full", "step": 1, "loss": 1.0}]
    log.write_text('{"phase": "full", "step": 1, "loss": 1.0}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"log\.jsonl, line 2: unreadable run log, not a JSON object: '\[1, 2\]'"):
        read_run_log(log)
    assert folder_trends(tmp_path) == [], "without strict (the pipeline's report) such lines are left out"
    with pytest.raises(ValueError, match="line 2"):
        folder_trends(tmp_path, strict=True)


def test_the_pipeline_report_refuses_a_run_log_with_a_damaged_line_rather_than_averaging_around_it(tmp_path):
    """The pipeline wrote its logs and a restarted phase drops its torn lines, so a whole line that is
    not JSON is damage: loss_rows names it instead of leaving it out of the windows' means."""
    from deftx.pipeline.outputs import loss_rows

    log = tmp_path / "seed-0" / "lang" / "mad" / "log.jsonl"
    records = [{"phase": "full", "step": step, "loss": loss} for step, loss in sawtooth(100, 8.0, 7.0)]
    write_log(log, records)
    runs = {"lang/mad": ["full"]}
    assert [row["phase"] for row in loss_rows(tmp_path, [0], runs)] == ["full"]
    lines = log.read_text().splitlines()
    log.write_text("\n".join([*lines[:3], lines[3][:-7], *lines[4:]]) + "\n")
    with pytest.raises(ValueError, match=r"log\.jsonl, line 4: unreadable run log"):
        loss_rows(tmp_path, [0], runs)
    log.write_text("\n".join(lines) + "\n" + lines[0][:-7])
    assert [row["points"] for row in loss_rows(tmp_path, [0], runs)] == [10], "a torn last line is a kill, left out"
