"""Seed aggregation, markdown / CSV tables and the bar plot."""

from __future__ import annotations

import csv
import math

import pytest

from deftx.eval.report import (
    AVERAGE,
    bar_plot,
    column_labels,
    grouped_bar_plot,
    markdown_tables,
    mean_sd,
    summarize,
    versions_line,
    write_csv,
)


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


def test_a_write_csv_stopped_midway_leaves_the_previous_file_whole_and_no_temporary(tmp_path, monkeypatch):
    """An error (a kill, a full disk) while the rows are written: the file is the old one, not cut short."""
    path = tmp_path / "rows.csv"
    write_csv([{"seed": 0, "target": "madurese"}, {"seed": 0, "target": "javanese"}], path)
    before = path.read_bytes()
    rows = [{"seed": 1, "target": "madurese"}, {"seed": 1, "target": "javanese"}]

    def writerow_then_fail(self, row):
        if row is rows[1]:
            raise OSError(28, "No space left on device")
        return self.writer.writerow(self._dict_to_list(row))

    monkeypatch.setattr(csv.DictWriter, "writerow", writerow_then_fail)
    monkeypatch.setattr(csv.DictWriter, "writerows", lambda self, all_rows: [self.writerow(r) for r in all_rows])
    with pytest.raises(OSError, match="No space left"):
        write_csv(rows, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rows.csv"]


def test_bar_plot_writes_png(tmp_path):
    path = tmp_path / "plot.png"
    bar_plot(summarize(ROWS), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def scaled(method, target, seed, f1, scale, split="valid"):
    return {**row(method, target, seed, f1, f1), "split": split, "language_scale": scale}


SWEEP = [
    scaled("lt-sft", "madurese", 0, 0.50, 0.5), scaled("lt-sft", "madurese", 1, 0.60, 0.5),
    scaled("lt-sft", "madurese", 0, 0.40, 1.0), scaled("lt-sft", "madurese", 1, 0.44, 1.0),
    scaled("full-ft", "madurese", 0, 0.70, None), scaled("full-ft", "madurese", 1, 0.72, None),
    scaled("lt-sft (no lang SFT)", "madurese", 0, 0.30, None),
    scaled("lt-sft (no lang SFT)", "madurese", 1, 0.34, None),
]


def test_summarize_keeps_each_scale_and_split_apart():
    summary = {(r["method"], r["language_scale"], r["target"]): r for r in summarize(SWEEP)}
    assert summary[("lt-sft", 0.5, "madurese")]["macro_f1_mean"] == pytest.approx(0.55)
    assert summary[("lt-sft", 1.0, "madurese")]["macro_f1_mean"] == pytest.approx(0.42)
    assert summary[("lt-sft", 1.0, AVERAGE)]["macro_f1_mean"] == pytest.approx(0.42)
    assert {r["split"] for r in summary.values()} == {"valid"}
    test_rows = summarize([{**r, "split": "test"} for r in SWEEP[:2]] + SWEEP[:2])
    assert sorted(r["split"] for r in test_rows if r["target"] == "madurese") == ["test", "valid"]


def test_summarize_by_extra_fields():
    rows = [{**r, "variant": v} for v in ("a", "b") for r in SWEEP[:2]]
    rows[2]["macro_f1"] = rows[3]["macro_f1"] = 0.9
    summary = summarize(rows, group_by=("variant", "source", "method", "language_scale"))
    means = {(r["variant"], r["target"]): r["macro_f1_mean"] for r in summary}
    assert means == pytest.approx({("a", "madurese"): 0.55, ("a", AVERAGE): 0.55,
                                   ("b", "madurese"): 0.9, ("b", AVERAGE): 0.9})
    assert set(summary[0]) >= {"variant", "source", "method", "language_scale", "target"}


def test_scale_sweep_gets_one_column_per_scale_and_the_table_names_the_split():
    text = markdown_tables(summarize(SWEEP), "macro_f1")
    lines = text.strip().splitlines()
    assert lines[0].startswith("### nusax — zero-shot — source: indonesian — valid split — macro-f1")
    assert lines[2] == "| target | lt-sft ×0.5 | lt-sft ×1 | full-ft | lt-sft (no lang SFT) |"
    assert "| madurese | 55.0 ± 7.1 | 42.0 ± 2.8 | 71.0 ± 1.4 | 32.0 ± 2.8 |" in lines
    single = markdown_tables(summarize([r for r in SWEEP if r["language_scale"] != 0.5]), "macro_f1")
    assert "| target | lt-sft | full-ft | lt-sft (no lang SFT) |" in single


def test_column_labels():
    assert column_labels(SWEEP) == {
        ("lt-sft", 0.5): "lt-sft ×0.5", ("lt-sft", 1.0): "lt-sft ×1",
        ("full-ft", None): "full-ft", ("lt-sft (no lang SFT)", None): "lt-sft (no lang SFT)",
    }
    assert column_labels([scaled("x", "t", 0, 0.1, 1.0)]) == {("x", 1.0): "x"}


def test_grouped_bar_plot(tmp_path):
    path = tmp_path / "bars.png"
    rows = [{"variant": v, "column": c, "macro_f1_mean": 0.5, "macro_f1_sd": 0.1} for v in "ab" for c in "xy"]
    grouped_bar_plot({"panel": rows}, path, x_key="variant", series_key="column")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="nothing to plot"):
        grouped_bar_plot({}, path, x_key="variant", series_key="column")


def test_versions_line_names_each_library_and_the_short_commit_once():
    environment = {"deftx": "0.1.0", "commit": "34db878abcdef", "python": "3.11.7", "torch": "2.11.0+cu130",
                   "threads": "16"}
    assert versions_line(environment) == ("Versions: deftx 0.1.0 (commit 34db878), python 3.11.7, "
                                          "torch 2.11.0+cu130, threads 16.")
    assert versions_line({**environment, "commit": "unknown"}).startswith("Versions: deftx 0.1.0, python")


def test_a_ledger_keeps_every_record_and_names_a_damaged_line(tmp_path):
    """Records are added as whole lines (the file is rewritten atomically); a line that is not a JSON
    record, as an in-place append stopped midway left, is named with its file and line."""
    from deftx.eval.report import append_invocation, append_records, read_ledger

    ledger = tmp_path / "invocations.jsonl"
    append_invocation(ledger, "deftx pipeline c.yaml", 1.5)
    append_records(ledger, [{"step": "a", "seconds": 2.0}, {"step": "b", "seconds": 3.0}])
    records = read_ledger(ledger)
    assert [r.get("command") or r["step"] for r in records] == ["deftx pipeline c.yaml", "a", "b"]
    assert records[0]["seconds"] == 1.5 and "finished" in records[0]
    ledger.write_text(ledger.read_text() + '{"command": "deftx pipe')
    append_invocation(ledger, "deftx pipeline c.yaml --seeds 1", 1.0)
    with pytest.raises(ValueError, match=r"invocations\.jsonl, line 4: not a JSON record"):
        read_ledger(ledger)


def test_a_seed_still_running_is_left_out_of_the_average_not_averaged_over_fewer_targets():
    """Seed 2 lacks javanese (its run is under way): its mean over two targets would pull the average
    down to 59.3; the average is over the seeds that have every target, and the cells say how many."""
    f1 = {"acehnese": 0.5, "balinese": 0.6, "javanese": 0.7, "indonesian": 0.8}
    rows = [row("lt-sft", target, seed, value + seed / 100, value) for seed in range(3) for target, value in f1.items()
            if not (seed == 2 and target == "javanese")]
    summary = {r["target"]: r for r in summarize(rows, exclude_from_average=["indonesian"])}
    per_seed = [(0.5 + 0.6 + 0.7) / 3 + seed / 100 for seed in (0, 1)]
    assert summary[AVERAGE]["seeds"] == 2 and summary[AVERAGE]["targets"] == 3
    assert summary[AVERAGE]["macro_f1_mean"] == pytest.approx(sum(per_seed) / 2)
    assert summary[AVERAGE]["macro_f1_sd"] == pytest.approx(math.sqrt(2 * 0.005**2))
    assert summary["javanese"]["seeds"] == 2 and summary["acehnese"]["targets"] == 1
    lines = markdown_tables(list(summary.values()), "macro_f1").splitlines()
    assert lines[0].endswith("macro-f1 ×100, mean ± sd over seeds (3 seeds)")
    assert "| acehnese | 51.0 ± 1.0 |" in lines
    assert "| javanese | 70.5 ± 0.7 (2 of 3 seeds) |" in lines
    assert lines[-1] == "| **avg** | 60.5 ± 0.7 (2 of 3 seeds) |"


def test_an_average_over_fewer_targets_than_its_neighbours_says_so():
    """deft-x has no minangkabau row: its average (over madurese alone) is not full-ft's (over both)."""
    summary = summarize(ROWS)
    assert {(r["method"], r["targets"]) for r in summary if r["target"] == AVERAGE} == {("full-ft", 2), ("deft-x", 1)}
    assert markdown_tables(summary, "macro_f1").strip().splitlines()[-1] == (
        "| **avg** | 62.0 ± 2.8 | 54.0 ± 2.8 (1 of 2 targets) |")
    one_seed = markdown_tables(summarize([r for r in ROWS if r["seed"] == 0]), "macro_f1").splitlines()
    assert one_seed[0].endswith("macro-f1 ×100 (1 seed)")
    assert one_seed[-1] == "| **avg** | 60.0 | 56.0 (1 of 2 targets) |"


def test_two_rows_of_one_seed_for_one_cell_are_refused_not_the_later_kept():
    """The second row of (full-ft, madurese, seed 0) replaced the first: the mean 0.52 read 0.60."""
    twice = [*ROWS, row("full-ft", "madurese", 0, 0.66, 0.70)]
    with pytest.raises(ValueError, match=r"two rows of seed 0 for \(.*method=full-ft.*target=madurese\)"):
        summarize(twice)
    other_source = [*ROWS, row("full-ft", "madurese", 0, 0.66, 0.70, source="english")]
    by_cell = {(r["source"], r["method"], r["target"]): r for r in summarize(other_source)}
    assert by_cell[("indonesian", "full-ft", "madurese")]["macro_f1_mean"] == pytest.approx(0.52)
