"""Seed aggregation, markdown / CSV tables and the bar plot."""

from __future__ import annotations

import csv
import math

import pytest

from deftx.eval.report import AVERAGE, bar_plot, markdown_tables, mean_sd, summarize, write_csv


def row(method, target, seed, f1, acc, source="indonesian"):
    return {"benchmark": "nusax", "protocol": "zero-shot", "method": method, "source": source,
            "target": target, "seed": seed, "macro_f1": f1, "accuracy": acc}


ROWS = [
    row("full-ft", "madurese", 0, 0.50, 0.60), row("full-ft", "madurese", 1, 0.54, 0.62),
    row("full-ft", "minangkabau", 0, 0.70, 0.72), row("full-ft", "minangkabau", 1, 0.74, 0.76),
    row("full-ft", "indonesian", 0, 0.90, 0.90), row("full-ft", "indonesian", 1, 0.92, 0.92),
    row("deft-x", "madurese", 0, 0.56, 0.60), row("deft-x", "madurese", 1, 0.52, 0.58),
]


def test_mean_sd():
    assert mean_sd([1.0]) == (1.0, 0.0)
    mean, sd = mean_sd([1.0, 2.0, 4.0])
    assert mean == pytest.approx(7 / 3) and sd == pytest.approx(math.sqrt(((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2
                                                                          + (4 - 7 / 3) ** 2) / 2))
    with pytest.raises(ValueError):
        mean_sd([])


def test_summarize_means_over_seeds_and_average_excludes_source():
    summary = {(r["method"], r["target"]): r for r in summarize(ROWS)}
    mad = summary[("full-ft", "madurese")]
    assert mad["seeds"] == 2 and mad["macro_f1_mean"] == pytest.approx(0.52)
    assert mad["macro_f1_sd"] == pytest.approx(math.sqrt(2 * 0.02**2))
    avg = summary[("full-ft", AVERAGE)]
    # per seed: (0.50 + 0.70) / 2 = 0.60 and (0.54 + 0.74) / 2 = 0.64 -> mean 0.62
    assert avg["macro_f1_mean"] == pytest.approx(0.62)
    assert avg["macro_f1_sd"] == pytest.approx(math.sqrt(2 * 0.02**2))


def test_markdown_table_layout():
    text = markdown_tables(summarize(ROWS), "macro_f1")
    lines = text.strip().splitlines()
    assert lines[0].startswith("### nusax — zero-shot — source: indonesian") and "(2 seeds)" in lines[0]
    assert lines[2] == "| target | full-ft | deft-x |"
    assert "| madurese | 52.0 ± 2.8 | 54.0 ± 2.8 |" in lines
    assert "| minangkabau | 72.0 ± 2.8 | — |" in lines
    assert lines[-1].startswith("| **avg** | 62.0 ± 2.8 |")


def test_write_csv_round_trip(tmp_path):
    path = tmp_path / "sub" / "rows.csv"
    write_csv([{"a": 1, "b": 2}, {"a": 3, "c": 4}], path)
    with path.open() as handle:
        rows = list(csv.DictReader(handle))
    assert rows == [{"a": "1", "b": "2", "c": ""}, {"a": "3", "b": "", "c": "4"}]


def test_bar_plot_writes_png(tmp_path):
    path = tmp_path / "plot.png"
    bar_plot(summarize(ROWS), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
