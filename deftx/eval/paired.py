"""Paired comparison of methods over seeds: per-seed differences and a bootstrap interval.

A study trains every method once per seed, and methods of one seed share what they can (LT-SFT
and DeFT-X branch from one phase 1). Comparing their means over seeds throws that pairing away;
this module keeps it. For methods A and B, a seed's difference is A's score minus B's on that
seed (on one target, or on the mean over several targets), and the report gives the mean
difference, a 95% percentile-bootstrap interval over seeds, and how many seeds go each way.

Results come from one or more ``results.csv`` files (the pipeline's, or one per seed from runs
spread over several machines): rows are merged, an identical row seen twice counts once, and two
rows that disagree on the same (benchmark, protocol, source, method, target, seed, split, language
scale) are refused, naming the row. Rows of more than one recipe (their ``recipe`` column) are
refused; a method composed at several language-SFT scales is compared per scale, as
``"<method> ×<scale>"`` (the result tables' column names).
"""

from __future__ import annotations

import csv
import io
import math
import random
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from deftx.eval.report import RECIPE, SCALE, column_labels
from deftx.text import not_utf8, repeated

PAPER_FIVE: tuple[str, ...] = ("acehnese", "balinese", "banjarese", "madurese", "minangkabau")
"""The NusaX targets DeFT-X reports (Javanese, Sundanese and the source left out)."""
DEFAULT_PAIRS: tuple[tuple[str, str], ...] = (("deft-x", "lt-sft"), ("deft-x", "full-ft"), ("lt-sft", "full-ft"))
KEY_COLUMNS: tuple[str, ...] = ("benchmark", "protocol", "source", "method", "target", "seed", "split")
"""The columns that identify one score; a results file must have them all."""
CONFIDENCE = 0.95
RESAMPLES = 10_000
FEW_SEEDS = 10
"""Below this many paired seeds the report warns that the bootstrap interval is optimistic."""


class ResultsError(ValueError):
    """Results that cannot be compared as asked: missing columns, conflicting or missing scores."""


@dataclass(frozen=True)
class PairedDifference:
    """Method ``a`` minus method ``b`` over the seeds both have, on ``target``.

    Attributes:
        a, b: method names; ``target``: a target, or ``"mean of N targets"``.
        seeds: the paired seeds, ascending; ``differences``: a − b on each, in that order.
        unpaired: seeds only one of the two methods has (left out of the pairing, listed here).
        mean: the mean difference; ``low``, ``high``: its percentile-bootstrap interval.
        a_better, b_better, ties: seeds on which a > b, a < b, a == b.
    """

    a: str
    b: str
    target: str
    seeds: tuple[int, ...]
    differences: tuple[float, ...]
    unpaired: tuple[int, ...]
    mean: float
    low: float
    high: float
    a_better: int
    b_better: int
    ties: int


def read_results(paths: Sequence[str | Path]) -> list[dict[str, str]]:
    """The rows of every file, merged: duplicates kept once, conflicting scores refused.

    Raises:
        ResultsError: a file is not UTF-8 text, lacks a key column or has a seed that is not an
            integer, or two rows share a key (:func:`score_key`) with different scores.
    """
    merged: dict[tuple[tuple[str, str], ...], dict[str, str]] = {}
    for path in paths:
        for row in read_results_file(path):
            key = score_key(row)
            seen = merged.setdefault(key, row)
            if seen != row:
                raise ResultsError(f"{path}: conflicting scores for {dict(key)}: {row_differences(seen, row)}")
    return list(merged.values())


def row_differences(earlier: Mapping[str, str], row: Mapping[str, str]) -> str:
    """Each column in which two rows of one key differ: ``column 'earlier' (earlier row) vs 'row'``
    (a column one of them lacks reads as missing)."""
    columns = [c for c in dict.fromkeys([*earlier, *row]) if earlier.get(c) != row.get(c)]
    shown = (f"{c} {earlier.get(c, '(missing)')!r} (earlier row) vs {row.get(c, '(missing)')!r}" for c in columns)
    return "; ".join(shown)


def score_key(row: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """(column, value) of the :data:`KEY_COLUMNS`, and of :data:`SCALE` where the row has one: what one score is of."""
    scale = row.get(SCALE) or ""
    return (*((c, row[c]) for c in KEY_COLUMNS), *(((SCALE, scale),) if scale else ()))


def read_results_file(path: str | Path) -> list[dict[str, str]]:
    """The rows of one results file (UTF-8, a byte-order mark allowed), checked to have every key
    column and an integer seed on every row.

    Raises:
        ResultsError: not UTF-8 text, a key column missing, or a seed that is not an integer
            (naming the file, the line and the column).
    """
    try:
        text = Path(path).read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ResultsError(f"{path}: {not_utf8(err)}; "
                           "a results.csv is UTF-8") from err
    reader = csv.DictReader(io.StringIO(text, newline=""))
    missing = [c for c in KEY_COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
        raise ResultsError(
            f"{path}: no column {', '.join(missing)} (a deftx results.csv has {', '.join(KEY_COLUMNS)})"
        )
    rows = []
    for row in reader:
        if parse_seed(row["seed"]) is None:
            value = "missing" if row["seed"] is None else f"{row['seed']!r}, not an integer"
            raise ResultsError(f"{path}, line {reader.line_num}, column seed: {value}")
        rows.append(row)
    return rows


def parse_seed(text: str | None) -> int | None:
    """A seed column's value as an int, or None when it is not an integer (or the row is short of it)."""
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def scores_by_seed(
    rows: Iterable[Mapping[str, str]], metric: str, split: str, targets: Sequence[str]
) -> dict[str, dict[int, dict[str, float]]]:
    """method -> seed -> target -> score, for the rows of ``split`` on ``targets``; a method the rows
    hold at several language-SFT scales is one method per scale (:func:`method_labels`).

    Raises:
        ResultsError: the rows mix benchmarks, protocols, sources or recipes (compare one at a
            time), a score or a scale is not a finite number or a seed not an integer, or one method
            has two scores on one target and seed.
    """
    chosen = [r for r in rows if r["split"] == split and r["target"] in targets]
    settings = sorted({(r["benchmark"], r["protocol"], r["source"]) for r in chosen})
    if len(settings) > 1:
        raise ResultsError(
            f"the results mix {len(settings)} settings {settings}: compare one (benchmark, protocol, source) at a time"
        )
    lacking = next((r for r in chosen if r.get(metric) is None), None)
    if lacking is not None:
        raise ResultsError(f"no column {metric!r} for {lacking['method']} on {lacking['target']}, seed "
                           f"{lacking['seed']}: its results file has no such column, or the row ends early")
    check_one_recipe(chosen)
    labels = method_labels(chosen)
    scores: dict[str, dict[int, dict[str, float]]] = {}
    for r in chosen:
        value = _finite(r[metric])
        if value is None:
            raise ResultsError(f"{metric} of {r['method']} on {r['target']}, seed {r['seed']} is {r[metric]!r}")
        seed = parse_seed(r["seed"])
        if seed is None:
            raise ResultsError(f"seed of {r['method']} on {r['target']} is {r['seed']!r}, not an integer")
        label = labels[(r["method"], row_scale(r))]
        by_target = scores.setdefault(label, {}).setdefault(seed, {})
        if by_target.get(r["target"], value) != value:
            raise ResultsError(f"two {metric} scores of {label} on {r['target']}, seed {seed}: "
                               f"{by_target[r['target']]!r} and {value!r}")
        by_target[r["target"]] = value
    return scores


def row_scale(row: Mapping[str, str]) -> float | None:
    """The :data:`SCALE` of a row as a number; None where it has none.

    Raises:
        ResultsError: a scale that is not a finite number.
    """
    text = row.get(SCALE) or ""
    if not text:
        return None
    scale = _finite(text)
    if scale is None:
        raise ResultsError(f"{SCALE} of {row['method']} on {row['target']}, seed {row['seed']} is {text!r}")
    return scale


def method_labels(rows: Sequence[Mapping[str, str]]) -> dict[tuple[str, float | None], str]:
    """(method, :func:`row_scale`) -> the name a comparison knows it by: the method, or
    ``"<method> ×<scale>"`` for a method ``rows`` hold at several scales (the tables' column names,
    :func:`deftx.eval.report.column_labels`)."""
    return column_labels([{"method": r["method"], SCALE: row_scale(r)} for r in rows])


def check_one_recipe(rows: Iterable[Mapping[str, str]]) -> None:
    """Refuse rows whose :data:`RECIPE` column names more than one recipe (rows without one are not checked).

    Raises:
        ResultsError: naming each recipe and its seeds.
    """
    seeds: dict[str, set[int]] = {}
    for r in rows:
        seed = parse_seed(r["seed"])
        if r.get(RECIPE) and seed is not None:
            seeds.setdefault(r[RECIPE], set()).add(seed)
    if len(seeds) > 1:
        named = "; ".join(f"{recipe}: seeds {', '.join(map(str, sorted(of)))}" for recipe, of in sorted(seeds.items()))
        raise ResultsError(f"the results mix {len(seeds)} recipes (column {RECIPE}: {named}): seeds of another "
                           "recipe are not draws of the same comparison; compare the results of one recipe")


def _finite(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def target_mean(by_target: Mapping[str, float], targets: Sequence[str], what: str) -> float:
    """The mean over ``targets`` of one method's scores on one seed.

    Raises:
        ResultsError: a target has no score (``what`` names the method and seed).
    """
    missing = [t for t in targets if t not in by_target]
    if missing:
        raise ResultsError(f"{what}: no score on {', '.join(missing)}")
    return sum(by_target[t] for t in targets) / len(targets)


def bootstrap_interval(
    differences: Sequence[float], *, confidence: float = CONFIDENCE, resamples: int = RESAMPLES, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of ``differences`` (resampling seeds with replacement).

    Seeded, so a report reproduces. One difference gives the degenerate interval (d, d).
    """
    if not differences:
        raise ResultsError("no paired seeds to compare")
    rng = random.Random(seed)
    n = len(differences)
    means = sorted(sum(rng.choices(differences, k=n)) / n for _ in range(resamples))
    tail = (1.0 - confidence) / 2.0
    return _quantile(means, tail), _quantile(means, 1.0 - tail)


def _quantile(ordered: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile of an ascending sequence (numpy's default rule)."""
    position = q * (len(ordered) - 1)
    below = math.floor(position)
    above = min(below + 1, len(ordered) - 1)
    return ordered[below] + (ordered[above] - ordered[below]) * (position - below)


@dataclass(frozen=True)
class Bootstrap:
    """Settings of :func:`bootstrap_interval`."""

    confidence: float = CONFIDENCE
    resamples: int = RESAMPLES
    seed: int = 0


def paired_difference(
    a: str, b: str, target: str, a_scores: Mapping[int, float], b_scores: Mapping[int, float],
    bootstrap: Bootstrap = Bootstrap(),
) -> PairedDifference:
    """``a`` − ``b`` on the seeds both have (seed -> score maps), with ``bootstrap``'s interval."""
    seeds = tuple(sorted(set(a_scores) & set(b_scores)))
    unpaired = tuple(sorted(set(a_scores) ^ set(b_scores)))
    differences = tuple(a_scores[s] - b_scores[s] for s in seeds)
    low, high = bootstrap_interval(
        differences, confidence=bootstrap.confidence, resamples=bootstrap.resamples, seed=bootstrap.seed
    )
    return PairedDifference(
        a=a, b=b, target=target, seeds=seeds, differences=differences, unpaired=unpaired,
        mean=sum(differences) / len(differences), low=low, high=high,
        a_better=sum(d > 0 for d in differences), b_better=sum(d < 0 for d in differences),
        ties=sum(d == 0 for d in differences),
    )  # fmt: skip


def paired_study(
    rows: Iterable[Mapping[str, str]],
    *,
    pairs: Sequence[tuple[str, str]] = DEFAULT_PAIRS,
    targets: Sequence[str] = PAPER_FIVE,
    metric: str = "macro_f1",
    split: str = "test",
    bootstrap: Bootstrap = Bootstrap(),
) -> list[PairedDifference]:
    """Every pair on the mean over ``targets`` first, then on each target.

    Raises:
        ResultsError: no targets or a target named twice, a target or a method of a pair has no
            rows, or a seed of a compared method lacks one of the targets (methods in no pair are not
            checked: their rows are not compared).
    """
    rows = list(rows)
    check_targets(rows, targets, split)
    scores = scores_by_seed(rows, metric, split, targets)
    compared = sorted({m for pair in pairs for m in pair})
    for method in compared:
        if method not in scores:
            raise ResultsError(f"no {split} rows for method {method!r} on the targets "
                               f"(methods found: {', '.join(sorted(scores)) or 'none'})")
    means = {
        method: {seed: target_mean(by_target, targets, f"{method}, seed {seed}")
                 for seed, by_target in scores[method].items()}
        for method in compared
    }
    overall = f"mean of {len(targets)} targets"
    results = [paired_difference(a, b, overall, means[a], means[b], bootstrap) for a, b in pairs]
    for target in targets:
        for a, b in pairs:
            on_target = [{seed: s[target] for seed, s in scores[m].items()} for m in (a, b)]
            results.append(paired_difference(a, b, target, *on_target, bootstrap))
    return results


def check_targets(rows: Sequence[Mapping[str, str]], targets: Sequence[str], split: str) -> None:
    """Refuse ``targets`` that are empty or name a target twice, or name one with no ``split`` rows.

    Raises:
        ResultsError: naming the repeated or missing targets and the targets the rows have.
    """
    if not targets:
        raise ResultsError("no targets to compare on")
    twice = repeated(targets)
    if twice:
        raise ResultsError(f"target {', '.join(twice)} named more than once")
    found = sorted({r["target"] for r in rows if r["split"] == split})
    missing = [t for t in targets if t not in found]
    if missing:
        raise ResultsError(f"no {split} rows for target {', '.join(map(repr, missing))} "
                           f"(targets with {split} rows: {', '.join(found) or 'none'})")


def markdown(results: Sequence[PairedDifference], *, metric: str = "macro_f1", scale: float = 100.0) -> str:
    """One table: each pair's mean difference (×``scale``), its interval and the seeds each way."""
    lines = [
        f"| target | a − b | {metric} difference ×{scale:g} | 95% interval | seeds a > b / a < b / tied | seeds |",
        "|---|---|---:|---|---|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.target} | {r.a} − {r.b} | {scale * r.mean:+.2f} | [{scale * r.low:+.2f}, {scale * r.high:+.2f}] "
            f"| {r.a_better} / {r.b_better} / {r.ties} | {len(r.seeds)} |"
        )
    fewest = min((len(r.seeds) for r in results), default=0)
    if fewest < FEW_SEEDS:
        lines.append(f"\nWith {fewest} seeds the percentile bootstrap is optimistic: its intervals are narrower than "
                     f"their nominal 95% (it cannot see spread that {fewest} seeds did not show).")
    unpaired = sorted({(r.a, r.b, r.unpaired) for r in results if r.unpaired})
    for a, b, seeds in unpaired:
        lines.append(f"\nSeeds left out of {a} − {b} (only one of the two has them): {', '.join(map(str, seeds))}.")
    return "\n".join(lines) + "\n"


def student_t_two_sided(t: float, dof: int) -> float:
    """P(|T| <= t) for Student's t with ``dof`` >= 1 degrees of freedom (exact finite series for
    integer ``dof``, Abramowitz & Stegun 26.7.3-4)."""
    if dof < 1:
        raise ValueError(f"dof must be >= 1, got {dof}")
    theta = math.atan(abs(t) / math.sqrt(dof))
    cos2 = math.cos(theta) ** 2
    if dof % 2:  # odd: (2/pi) (theta + sin cos (1 + 2/3 cos^2 + 2*4/(3*5) cos^4 + ...))
        term, series = 1.0, 1.0 if dof > 1 else 0.0
        for j in range(1, (dof - 1) // 2):
            term *= cos2 * (2 * j) / (2 * j + 1)
            series += term
        return 2 / math.pi * (theta + math.sin(theta) * math.cos(theta) * series)
    term, series = 1.0, 1.0  # even: sin (1 + 1/2 cos^2 + 1*3/(2*4) cos^4 + ...)
    for j in range(1, dof // 2):
        term *= cos2 * (2 * j - 1) / (2 * j)
        series += term
    return math.sin(theta) * series


def student_t_critical(confidence: float, dof: int) -> float:
    """The t with P(|T| <= t) = ``confidence`` for ``dof`` degrees of freedom (bisection, 1e-10)."""
    low, high = 0.0, 1.0
    while student_t_two_sided(high, dof) < confidence:
        high *= 2
    while high - low > 1e-10:
        middle = (low + high) / 2
        low, high = (middle, high) if student_t_two_sided(middle, dof) < confidence else (low, middle)
    return (low + high) / 2


def seeds_for_half_width(differences: Sequence[float], half_width: float, confidence: float = CONFIDENCE,
                         most: int = 100_000) -> int | None:
    """Fewest seeds whose t interval of the mean paired difference is within ±``half_width``,
    were the differences as spread as ``differences`` (their sample sd); ``None`` with fewer than
    2 differences, ``min(needed, most + 1)`` otherwise. Searched upward from the normal
    approximation's count, which the t interval never beats."""
    if half_width <= 0:
        raise ValueError(f"half_width must be > 0, got {half_width}")
    if len(differences) < 2:
        return None
    sd = statistics.stdev(differences)
    normal = statistics.NormalDist().inv_cdf((1 + confidence) / 2)
    seeds = min(max(2, math.ceil((normal * sd / half_width) ** 2)), most + 1)
    while seeds <= most and student_t_critical(confidence, seeds - 1) * sd / math.sqrt(seeds) > half_width:
        seeds += 1
    return seeds


def goal_lines(results: Sequence[PairedDifference], half_width: float, *, scale: float = 100.0) -> list[str]:
    """Markdown lines on each pair over the mean of the targets: is its interval within
    ±``half_width`` (in units ×``scale``; never with one seed, whose interval is the point itself),
    and about how many seeds would bring it there."""
    lines = [f"Goal: a 95% interval within ±{half_width:g} (×{scale:g}) on the mean over the targets.", ""]
    for r in (r for r in results if r.target.startswith("mean of")):
        reached = scale * max(r.mean - r.low, r.high - r.mean)
        needed = seeds_for_half_width(r.differences, half_width / scale)
        estimate = ("one seed cannot say how many would" if needed is None else
                    f"at their spread, a t interval would need about {needed} seeds")
        met = len(r.seeds) > 1 and reached <= half_width
        verdict = "met" if met else "not met" + (" (one seed gives no interval)" if len(r.seeds) == 1 else "")
        lines.append(f"- {r.a} − {r.b}: ±{reached:.2f} with {len(r.seeds)} seeds, {verdict}; {estimate}.")
    return lines


def write_csv(results: Sequence[PairedDifference], path: str | Path) -> None:
    """One row per (pair, target, seed): the per-seed differences behind every interval."""
    with Path(path).open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["a", "b", "target", "seed", "difference", "mean", "low", "high"])
        for r in results:
            for seed, difference in zip(r.seeds, r.differences, strict=True):
                writer.writerow([r.a, r.b, r.target, seed, difference, r.mean, r.low, r.high])


def plot(results: Sequence[PairedDifference], path: str | Path, *, scale: float = 100.0) -> None:
    """Per-seed paired differences of the overall (mean of targets) comparisons, with their intervals."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    overall = [r for r in results if r.target.startswith("mean of")]
    figure, axes = plt.subplots(figsize=(6.5, 0.9 + 0.7 * len(overall)))
    for y, r in enumerate(overall):
        axes.scatter([scale * d for d in r.differences], [y] * len(r.differences), s=14, alpha=0.6, color="tab:blue")
        axes.errorbar(scale * r.mean, y, xerr=[[scale * (r.mean - r.low)], [scale * (r.high - r.mean)]],
                      fmt="o", color="black", capsize=4)
    axes.axvline(0.0, color="grey", linewidth=0.8)
    axes.set_yticks(range(len(overall)), [f"{r.a} − {r.b} ({len(r.seeds)} seeds)" for r in overall])
    label = overall[0].target if overall else ""
    axes.set_xlabel(f"paired difference ×{scale:g} ({label}); black: mean and 95% interval")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
