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
    goal_lines,
    paired_study,
    read_results,
    row_differences,
    seeds_for_half_width,
    student_t_critical,
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


def test_a_method_in_no_pair_that_lacks_a_target_does_not_refuse_the_comparison():
    """A method still running (a seed without one of the targets) that no pair names: deft-x − lt-sft is
    compared as without it. (Every method's mean over the targets was taken, refusing the study.)"""
    rows = study_rows(np.random.default_rng(3), range(3))
    alone = paired_study(rows, pairs=[("deft-x", "lt-sft")], targets=TARGETS)
    running = [row("running", "acehnese", seed, 0.5) for seed in range(3)] + [row("running", "balinese", 0, 0.5)]
    assert paired_study([*rows, *running], pairs=[("deft-x", "lt-sft")], targets=TARGETS) == alone
    with pytest.raises(ResultsError, match="running, seed 1: no score on balinese"):
        paired_study([*rows, *running], pairs=[("deft-x", "running")], targets=TARGETS)


def test_results_files_merge_and_conflicts_are_refused(tmp_path):
    rows = study_rows(np.random.default_rng(2), range(4))
    first = write(tmp_path / "a.csv", [r for r in rows if int(r["seed"]) < 3])
    second = write(tmp_path / "b.csv", [r for r in rows if int(r["seed"]) >= 2])  # seed 2 in both, identical
    assert len(read_results([first, second])) == len(rows)
    changed = [dict(r, macro_f1="0.1") if r["seed"] == "2" else r for r in rows if int(r["seed"]) >= 2]
    with pytest.raises(ResultsError, match=r"conflicting scores .*'seed': '2'") as refused:
        read_results([first, write(tmp_path / "c.csv", changed)])
    seed_two = next(r for r in rows if r["seed"] == "2")
    assert str(refused.value).endswith(f"macro_f1 {seed_two['macro_f1']!r} (earlier row) vs '0.1'")


def test_a_conflict_names_each_column_that_differs_and_one_a_row_lacks():
    """The message named the key only: which of a dozen columns differed (a score, the recipe) was left to a diff."""
    earlier = {"seed": "0", "macro_f1": "0.5", "recipe": "abc"}
    assert row_differences(earlier, {"seed": "0", "macro_f1": "0.5"}) == "recipe 'abc' (earlier row) vs '(missing)'"
    assert row_differences(earlier, {"seed": "0", "macro_f1": "0.6", "recipe": "abd"}) == (
        "macro_f1 '0.5' (earlier row) vs '0.6'; recipe 'abc' (earlier row) vs 'abd'")


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
         "--pair", "deft-x:lt-sft", "--resamples", "500", "--goal", "0.5", "--out", str(tmp_path / "out")],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "| mean of 2 targets | deft-x − lt-sft | +2.00 | [+2.00, +2.00] | 12 / 0 / 0 | 12 |" in done.stdout
    assert "optimistic" not in done.stdout  # 12 seeds: no small-sample warning
    assert "- deft-x − lt-sft: ±0.00 with 12 seeds, met; " in done.stdout
    assert "- deft-x − lt-sft: ±0.00 with 12 seeds, met; " in (tmp_path / "out" / "paired.md").read_text()
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
    bad_goal = subprocess.run([sys.executable, "-m", "deftx", "paired", str(results), "--goal", "-1"],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert bad_goal.returncode == 2 and "argument --goal: expected a number > 0, got '-1'" in bad_goal.stderr


@pytest.mark.parametrize("dof, table", [(1, 12.706), (2, 4.303), (3, 3.182), (4, 2.776), (9, 2.262), (10, 2.228),
                                        (19, 2.093), (30, 2.042), (120, 1.980)])
def test_t_critical_values_match_the_published_table(dof, table):
    assert student_t_critical(0.95, dof) == pytest.approx(table, abs=6e-4)


def test_t_critical_values_match_a_simulated_t(dof=5):
    gen = np.random.default_rng(0)
    normal, chi2 = gen.standard_normal(400_000), gen.chisquare(dof, 400_000)
    simulated = np.quantile(np.abs(normal / np.sqrt(chi2 / dof)), 0.9)
    assert student_t_critical(0.9, dof) == pytest.approx(simulated, rel=0.01)


def test_seeds_for_a_half_width_is_the_fewest_whose_t_interval_fits():
    differences = [0.01, -0.005, 0.012]  # sample sd 0.009292
    needed = seeds_for_half_width(differences, 0.005)
    sd = float(np.std(differences, ddof=1))

    def half(seeds: int) -> float:
        return student_t_critical(0.95, seeds - 1) * sd / seeds**0.5

    assert needed == 16 and half(16) <= 0.005 < half(15)
    assert seeds_for_half_width([0.02, 0.02], 0.005) == 2, "no spread: two seeds"
    assert seeds_for_half_width([0.3], 0.1) is None
    assert seeds_for_half_width([1.0, -1.0], 1e-3, most=1000) == 1001
    with pytest.raises(ValueError, match="half_width must be > 0"):
        seeds_for_half_width(differences, 0.0)


def test_goal_lines_say_met_or_not_and_the_seeds_needed():
    rows = study_rows(np.random.default_rng(7), range(4))
    results = paired_study(rows, pairs=[("deft-x", "lt-sft"), ("lt-sft", "full-ft")], targets=TARGETS,
                           bootstrap=Bootstrap(resamples=200))
    lines = goal_lines(results, 0.5)
    assert lines[0] == "Goal: a 95% interval within ±0.5 (×100) on the mean over the targets."
    assert lines[2] == ("- deft-x − lt-sft: ±0.00 with 4 seeds, met; at their spread, a t interval would need "
                        "about 2 seeds.")
    assert lines[3].startswith("- lt-sft − full-ft: ±") and "with 4 seeds, not met; " in lines[3]
    assert len(lines) == 4, "the mean over the targets only, one line per pair"


@pytest.mark.parametrize(
    ("targets", "message"),
    [
        (("acehnese", "acehnese", "balinese"), "target acehnese named more than once"),
        ((), "no targets"),
        (("klingon", "acehnese"), r"no test rows for target 'klingon' \(targets with test rows: acehnese, balinese\)"),
    ],
)
def test_repeated_missing_or_unknown_targets_are_refused(targets, message):
    rows = study_rows(np.random.default_rng(7), range(2))
    with pytest.raises(ResultsError, match=message):
        paired_study(iter(rows), targets=targets, bootstrap=Bootstrap(resamples=10))


def test_a_seed_that_is_not_an_integer_is_named_by_file_line_and_column(tmp_path):
    rows = study_rows(np.random.default_rng(8), range(2))
    rows[2] = dict(rows[2], seed="1.5")
    path = write(tmp_path / "results.csv", rows)
    with pytest.raises(ResultsError, match=r"results\.csv, line 4, column seed: '1\.5', not an integer"):
        read_results([path])
    with pytest.raises(ResultsError, match=r"seed of .* is '1\.5', not an integer"):
        paired_study(rows, targets=TARGETS, bootstrap=Bootstrap(resamples=10))


def scale_sweep_rows(seeds: range) -> list[dict[str, str]]:
    """deft-x and lt-sft composed at scales 1 and 1.25 (full-ft at none), on each target and seed: at 1.25,
    deft-x = lt-sft + 0.02; at 1, deft-x = lt-sft − 0.01."""
    rows = []
    for seed in seeds:
        for t in TARGETS:
            rows.append(dict(row("full-ft", t, seed, 0.7), language_scale=""))
            for scale, gap in (("1.0", -0.01), ("1.25", 0.02)):
                plain = 0.6 + seed / 100
                rows.append(dict(row("lt-sft", t, seed, plain), language_scale=scale))
                rows.append(dict(row("deft-x", t, seed, plain + gap), language_scale=scale))
    return rows


def test_a_scale_sweep_is_compared_scale_by_scale(tmp_path):
    rows = scale_sweep_rows(range(3))
    path = tmp_path / "results.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*COLUMNS, "language_scale"])
        writer.writeheader()
        writer.writerows(rows)
    merged = read_results([path])
    assert len(merged) == len(rows)
    pairs = [("deft-x ×1.25", "lt-sft ×1.25"), ("deft-x ×1", "lt-sft ×1"), ("deft-x ×1.25", "full-ft")]
    at_125, at_1, against_full = paired_study(merged, pairs=pairs, targets=TARGETS,
                                              bootstrap=Bootstrap(resamples=50))[:3]
    assert at_125.differences == pytest.approx([0.02] * 3) and at_125.seeds == (0, 1, 2)
    assert at_1.differences == pytest.approx([-0.01] * 3)
    assert against_full.differences == pytest.approx([0.62 - 0.7, 0.63 - 0.7, 0.64 - 0.7])
    with pytest.raises(ResultsError, match=r"no test rows for method 'deft-x' .*deft-x ×1, deft-x ×1\.25, full-ft"):
        paired_study(merged, pairs=[("deft-x", "lt-sft")], targets=TARGETS, bootstrap=Bootstrap(resamples=50))


def test_two_scores_of_one_method_target_and_seed_are_refused():
    rows = [r for r in scale_sweep_rows(range(2)) if r["language_scale"] != "1.0"]
    rows.append(dict(rows[1], language_scale="1.250", macro_f1="0.9"))  # the same scale, written otherwise
    with pytest.raises(ResultsError, match=r"two macro_f1 scores of lt-sft on acehnese, seed 0"):
        paired_study(rows, pairs=[("deft-x", "lt-sft")], targets=TARGETS, bootstrap=Bootstrap(resamples=50))


def write_with_recipe(path: Path, rows: list[dict[str, str]], recipe: str) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*COLUMNS, "recipe"])
        writer.writeheader()
        writer.writerows(dict(r, recipe=recipe) for r in rows)
    return path


def test_results_of_two_recipes_are_refused_naming_their_seeds(tmp_path):
    rows = study_rows(np.random.default_rng(9), range(6))
    early = [r for r in rows if int(r["seed"]) < 3]
    late = [r for r in rows if int(r["seed"]) >= 3]
    first = write_with_recipe(tmp_path / "a.csv", early, "1f2e3d4c5b6a")
    one_recipe = read_results([first, write_with_recipe(tmp_path / "b.csv", late, "1f2e3d4c5b6a")])
    assert paired_study(one_recipe, targets=TARGETS, bootstrap=Bootstrap(resamples=20))[0].seeds == tuple(range(6))
    unstamped = read_results([first, write(tmp_path / "c.csv", late)])  # rows written before the column
    assert paired_study(unstamped, targets=TARGETS, bootstrap=Bootstrap(resamples=20))[0].seeds == tuple(range(6))
    two_recipes = read_results([first, write_with_recipe(tmp_path / "d.csv", late, "9a8b7c6d5e4f")])
    with pytest.raises(ResultsError, match=r"mix 2 recipes \(column recipe: 1f2e3d4c5b6a: seeds 0, 1, 2; "
                                           r"9a8b7c6d5e4f: seeds 3, 4, 5\)"):
        paired_study(two_recipes, targets=TARGETS, bootstrap=Bootstrap(resamples=20))


def test_one_seed_never_meets_the_goal():
    rows = study_rows(np.random.default_rng(10), range(1))
    results = paired_study(rows, pairs=[("deft-x", "lt-sft")], targets=TARGETS, bootstrap=Bootstrap(resamples=20))
    assert (results[0].low, results[0].high) == pytest.approx((0.02, 0.02)), "one seed: the interval is the point"
    assert goal_lines(results, 0.5)[2] == ("- deft-x − lt-sft: ±0.00 with 1 seeds, not met (one seed gives no "
                                           "interval); one seed cannot say how many would.")
