"""deftx.eval.paired and ``deftx paired``: per-seed differences, bootstrap intervals, merged results files."""

from __future__ import annotations

import csv
import itertools
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from deftx.eval.paired import (
    KEY_COLUMNS,
    Bootstrap,
    ResultsError,
    bootstrap_interval,
    paired_study,
    read_results,
)

ROOT = Path(__file__).resolve().parents[2]
TARGETS = ("acehnese", "balinese")
COLUMNS = [*KEY_COLUMNS, "macro_f1", "accuracy"]


def row(method: str, target: str, seed: int, f1: float, split: str = "test") -> dict[str, str]:
    return {"benchmark": "nusax", "protocol": "zero-shot", "source": "indonesian", "method": method,
            "target": target, "seed": str(seed), "split": split, "macro_f1": repr(f1), "accuracy": "0.5"}


def write(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def study_rows(gen: np.random.Generator, seeds: range) -> list[dict[str, str]]:
    """Three methods on two targets; deft-x = lt-sft + 0.01 on acehnese, + 0.03 on balinese, per seed."""
    rows = []
    for seed in seeds:
        base = {t: float(gen.uniform(0.5, 0.8)) for t in TARGETS}
        rows += [row("lt-sft", t, seed, base[t]) for t in TARGETS]
        rows += [row("deft-x", "acehnese", seed, base["acehnese"] + 0.01),
                 row("deft-x", "balinese", seed, base["balinese"] + 0.03)]
        rows += [row("full-ft", t, seed, float(gen.uniform(0.5, 0.8))) for t in TARGETS]
        rows += [row("full-ft", t, seed, 0.0, split="valid") for t in TARGETS]  # another split: ignored
    return rows


def exact_bootstrap_quantiles(differences: list[float], qs: tuple[float, float]) -> tuple[float, float]:
    """Quantiles of the mean over every one of the n^n equally likely resamples (the exact distribution)."""
    n = len(differences)
    means = sorted(sum(c) / n for c in itertools.product(differences, repeat=n))
    return tuple(float(np.quantile(means, q)) for q in qs)


def test_paired_differences_are_per_seed_and_the_counts_add_up():
    rows = study_rows(np.random.default_rng(0), range(6))
    results = paired_study(rows, pairs=[("deft-x", "lt-sft")], targets=TARGETS)
    overall, acehnese, balinese = results
    assert overall.target == "mean of 2 targets" and overall.seeds == tuple(range(6))
    assert overall.differences == pytest.approx([0.02] * 6)
    assert (overall.mean, overall.low, overall.high) == pytest.approx((0.02, 0.02, 0.02))
    assert (overall.a_better, overall.b_better, overall.ties) == (6, 0, 0)
    assert acehnese.mean == pytest.approx(0.01) and balinese.mean == pytest.approx(0.03)


def test_bootstrap_interval_matches_the_exact_resampling_distribution():
    differences = [0.031, -0.012, 0.004, 0.022, -0.005]
    low, high = bootstrap_interval(differences, resamples=200_000, seed=3)
    exact_low, exact_high = exact_bootstrap_quantiles(differences, (0.025, 0.975))
    spread = max(differences) - min(differences)
    assert low == pytest.approx(exact_low, abs=0.01 * spread), (low, exact_low)
    assert high == pytest.approx(exact_high, abs=0.01 * spread), (high, exact_high)
    assert bootstrap_interval(differences, seed=3) == bootstrap_interval(differences, seed=3)


def test_unpaired_seeds_are_left_out_and_named(tmp_path):
    rows = study_rows(np.random.default_rng(1), range(4))
    rows = [r for r in rows if not (r["method"] == "lt-sft" and r["seed"] == "3")]
    overall = paired_study(rows, pairs=[("deft-x", "lt-sft")], targets=TARGETS)[0]
    assert overall.seeds == (0, 1, 2) and overall.unpaired == (3,)


def test_results_files_merge_and_conflicts_are_refused(tmp_path):
    rows = study_rows(np.random.default_rng(2), range(4))
    first = write(tmp_path / "a.csv", [r for r in rows if int(r["seed"]) < 3])
    second = write(tmp_path / "b.csv", [r for r in rows if int(r["seed"]) >= 2])  # seed 2 in both, identical
    assert len(read_results([first, second])) == len(rows)
    changed = [dict(r, macro_f1="0.1") if r["seed"] == "2" else r for r in rows if int(r["seed"]) >= 2]
    with pytest.raises(ResultsError, match=r"conflicting scores .*'seed': '2'"):
        read_results([first, write(tmp_path / "c.csv", changed)])


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda rows: [r for r in rows
                       if not (r["method"] == "deft-x" and r["target"] == "balinese" and r["seed"] == "1")],
         "deft-x, seed 1: no score on balinese"),
        (lambda rows: [r for r in rows if r["method"] != "full-ft"], "no test rows for method 'full-ft'"),
        (lambda rows: [dict(r, macro_f1="nan") if r["seed"] == "0" else r for r in rows], "is 'nan'"),
        (lambda rows: [*rows, dict(rows[0], source="english")], "mix 2 settings"),
    ],
)
def test_incomplete_or_mixed_results_are_refused(mutate, message):
    rows = mutate(study_rows(np.random.default_rng(4), range(3)))
    with pytest.raises(ResultsError, match=message):
        paired_study(rows, targets=TARGETS, bootstrap=Bootstrap(resamples=100))


def test_command_writes_the_table_csv_and_plot(tmp_path):
    results = write(tmp_path / "results.csv", study_rows(np.random.default_rng(5), range(12)))
    done = subprocess.run(
        [sys.executable, "-m", "deftx", "paired", str(results), "--targets", ",".join(TARGETS),
         "--pair", "deft-x:lt-sft", "--resamples", "500", "--out", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "| mean of 2 targets | deft-x − lt-sft | +2.00 | [+2.00, +2.00] | 12 / 0 / 0 | 12 |" in done.stdout
    assert "optimistic" not in done.stdout  # 12 seeds: no small-sample warning
    with (tmp_path / "out" / "paired.csv").open() as handle:
        assert len(list(csv.DictReader(handle))) == 3 * 12
    assert (tmp_path / "out" / "paired.png").stat().st_size > 0


def test_command_names_a_bad_pair_and_a_missing_column(tmp_path):
    results = write(tmp_path / "results.csv", study_rows(np.random.default_rng(6), range(2)))
    bad_pair = subprocess.run([sys.executable, "-m", "deftx", "paired", str(results), "--pair", "deft-x"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad_pair.returncode == 2 and "expected A:B" in bad_pair.stderr
    no_metric = subprocess.run([sys.executable, "-m", "deftx", "paired", str(results), "--metric", "f2",
                                "--targets", ",".join(TARGETS)], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert no_metric.returncode == 2 and "deftx paired: error: no column 'f2'" in no_metric.stderr
    assert "Traceback" not in no_metric.stderr
