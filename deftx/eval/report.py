"""Result tables (markdown + CSV) and a bar plot (PNG) from evaluated rows."""

from __future__ import annotations

import csv
import json
import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from deftx.files import atomic_write, atomic_write_bytes, lock_beside, locked
from deftx.text import short_repr

AVERAGE = "avg"
SCALE = "language_scale"
"""The results column of the scale a row's language SFT was composed at (empty without one)."""
RECIPE = "recipe"
"""The results column of each row's recipe: the digest of the pipeline config that made it
(:func:`deftx.pipeline.identity.recipe_hash`)."""
GROUP_FIELDS = ("benchmark", "protocol", "split", "source", "method", SCALE)


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Write dict rows (the union of their keys as the header, first-seen order), atomically
    (:func:`deftx.files.atomic_write`): a stopped write leaves the previous file whole."""
    header: list[str] = []
    for row in rows:
        header += [key for key in row if key not in header]

    def write(temporary: Path) -> None:
        with temporary.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=header)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


def read_csv(path: str | Path) -> list[dict[str, str]]:
    """The rows of a CSV file written by :func:`write_csv`, as strings (none if the file does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def append_invocation(ledger: Path, command: str | None, seconds: float,
                      environment: Mapping[str, str] | None = None) -> None:
    """Append one finished invocation (command, wall seconds, UTC end time, and the versions it
    ran on when given: e.g. ``deftx.info.environment_record()``) to a JSON-lines ledger."""
    record: dict[str, Any] = {"command": command, "seconds": seconds,
                              "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    if environment is not None:
        record["environment"] = dict(environment)
    append_records(ledger, [record])


def append_records(ledger: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Add ``records`` to a JSON-lines ledger as whole lines: the file is rewritten atomically (a ledger
    holds a line per invocation or step), so a stopped write leaves no torn line; under the ledger's lock
    (:func:`deftx.files.locked`), so processes appending at once keep every line."""
    with locked(lock_beside(ledger)):
        before = ledger.read_bytes() if ledger.is_file() else b""
        atomic_write_bytes(ledger, before + "".join(json.dumps(dict(r)) + "\n" for r in records).encode())


CODE_KEYS = ("commit",)
"""Entries of an environment record that name the code, not the libraries: a new commit is the
normal course of work, so :func:`environment_changes` leaves them out."""


def versions_line(environment: Mapping[str, str]) -> str:
    """``"Versions: deftx 0.1.0 (commit 34db878), python 3.11.7, torch 2.13.0+cpu, ..., threads 2."``"""
    commit = environment.get("commit")
    parts = [f"{name} {value}" + (f" (commit {commit[:7]})" if name == "deftx" and commit not in (None, "unknown")
                                  else "")
             for name, value in environment.items() if name not in CODE_KEYS]
    return "Versions: " + ", ".join(parts) + "."


def environment_changes(before: Mapping[str, str], after: Mapping[str, str]) -> str:
    """``"transformers 5.17.0 -> 5.25.0, threads 16 -> 2"``: the entries that differ (``"?"`` where one
    lacks it), :data:`CODE_KEYS` left out."""
    return ", ".join(f"{name} {before.get(name, '?')} -> {after.get(name, '?')}"
                     for name in dict.fromkeys([*before, *after])
                     if name not in CODE_KEYS and before.get(name) != after.get(name))


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines ledger, one per non-empty line; none if the file does not exist.

    Raises:
        ValueError: a line that is not a JSON object (damaged, or torn by a deftx that appended in
            place), naming the file and the line.
    """
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if not isinstance(record, dict):
            raise ValueError(f"{path}, line {number}: not a JSON record ({short_repr(line)}); mend or remove "
                             "that line")
        records.append(record)
    return records


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        raise ValueError("no values")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(
    rows: Sequence[Mapping[str, Any]],
    exclude_from_average: Sequence[str] = (),
    group_by: Sequence[str] = GROUP_FIELDS,
) -> list[dict[str, Any]]:
    """Aggregate rows over seeds: one row per (``group_by`` fields, target).

    A field missing from a row counts as None. Adds, per ``group_by`` key, an ``avg``
    target: per seed the mean over the group's targets (those in ``exclude_from_average``
    and the row's own ``source`` left out), then mean ± sd over seeds — the seed spread of
    the average, not of the languages. A seed that lacks some of the targets the group's
    other seeds have (a seed still running) is left out of the average, not averaged over
    fewer targets. Each row's ``targets`` is how many targets its means are over (1 but
    for ``avg``).
    """
    cells: dict[tuple, dict[int, dict[str, float]]] = {}
    for row in rows:
        key = (*(row.get(name) for name in group_by), row["target"])
        metrics = {"macro_f1": float(row["macro_f1"]), "accuracy": float(row["accuracy"])}
        by_seed = cells.setdefault(key, {})
        if int(row["seed"]) in by_seed:
            named = ", ".join(f"{name}={value}" for name, value in zip((*group_by, "target"), key, strict=True))
            raise ValueError(f"two rows of seed {row['seed']} for ({named}): one cell must have one score, "
                             "not the later of two")
        by_seed[int(row["seed"])] = metrics
    source_at = list(group_by).index("source") if "source" in group_by else None
    averaged: dict[tuple, dict[str, dict[int, dict[str, float]]]] = {}
    for (*group, target), by_seed in cells.items():
        if target in exclude_from_average or (source_at is not None and target == group[source_at]):
            continue
        averaged.setdefault((*group, AVERAGE), {})[target] = by_seed
    summary = [_summary_row(group_by, key, by_seed, 1) for key, by_seed in cells.items()]
    for key, by_target in averaged.items():
        complete = _complete_seeds(by_target)
        if complete:
            means = {seed: _mean_metrics([by_seed[seed] for by_seed in by_target.values()]) for seed in complete}
            summary.append(_summary_row(group_by, key, means, len(by_target)))
    return summary


def _complete_seeds(by_target: Mapping[str, Mapping[int, Any]]) -> list[int]:
    """The seeds, in first-seen order, that every target of ``by_target`` (target -> seed -> metrics) has."""
    seeds = dict.fromkeys(seed for by_seed in by_target.values() for seed in by_seed)
    return [seed for seed in seeds if all(seed in by_seed for by_seed in by_target.values())]


def _summary_row(group_by: Sequence[str], key: tuple, by_seed: Mapping[int, Mapping[str, float]],
                 targets: int) -> dict[str, Any]:
    """The summary row of ``key`` (``group_by`` values, target): mean ± sd over the seeds of ``by_seed``,
    each seed's metrics a mean over ``targets`` targets."""
    f1_mean, f1_sd = mean_sd([m["macro_f1"] for m in by_seed.values()])
    acc_mean, acc_sd = mean_sd([m["accuracy"] for m in by_seed.values()])
    return {**dict(zip(group_by, key[:-1], strict=True)), "target": key[-1], "seeds": len(by_seed),
            "targets": targets, "macro_f1_mean": f1_mean, "macro_f1_sd": f1_sd, "accuracy_mean": acc_mean,
            "accuracy_sd": acc_sd}


def _mean_metrics(metrics: Sequence[Mapping[str, float]]) -> dict[str, float]:
    return {name: sum(m[name] for m in metrics) / len(metrics) for name in ("macro_f1", "accuracy")}


def fewer_targets(row: Mapping[str, Any], most: int) -> list[str]:
    """``["k of n targets"]`` when the summary ``row`` (:func:`summarize`) is a mean over fewer targets
    than ``most``, the most another cell of its table is over: its average is not comparable; else []."""
    return [f"{row['targets']} of {most} targets"] if row["targets"] < most else []


def _cell(row: Mapping[str, Any] | None, metric: str, seeds: int, targets: int) -> str:
    """``mean ± sd`` ×100 (the mean alone with one seed), naming the seeds where ``row`` has fewer than the
    table's ``seeds`` and the targets where it averages fewer than ``targets`` (:func:`fewer_targets`)."""
    if row is None:
        return "—"
    mean, sd = 100 * row[f"{metric}_mean"], 100 * row[f"{metric}_sd"]
    number = f"{mean:.1f} ± {sd:.1f}" if row["seeds"] > 1 else f"{mean:.1f}"
    notes = [f"{row['seeds']} of {seeds} seeds"] if row["seeds"] < seeds else []
    notes += fewer_targets(row, targets)
    return number + (f" ({'; '.join(notes)})" if notes else "")


def column_labels(rows: Sequence[Mapping[str, Any]]) -> dict[tuple[Any, Any], str]:
    """(method, language_scale) -> column name: the method, plus `` ×<scale>`` when the
    rows hold that method at more than one scale (a composition-scale sweep)."""
    scales: dict[Any, list[Any]] = {}
    for row in rows:
        seen = scales.setdefault(row["method"], [])
        if row.get(SCALE) not in seen:
            seen.append(row.get(SCALE))
    labels = {}
    for method, values in scales.items():
        for scale in values:
            swept = len(values) > 1 and scale not in (None, "")
            labels[(method, scale)] = f"{method} ×{float(scale):g}" if swept else method
    return labels


def _panels(summary: Sequence[Mapping[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """Rows per (benchmark, protocol, split, source), each with its ``column`` label."""
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in summary:
        groups.setdefault((row["benchmark"], row["protocol"], row.get("split"), row["source"]), []).append(row)
    panels = {}
    for key, rows in groups.items():
        labels = column_labels(rows)
        panels[key] = [{**row, "column": labels[(row["method"], row.get(SCALE))]} for row in rows]
    return panels


def markdown_tables(summary: Sequence[Mapping[str, Any]], metric: str = "macro_f1") -> str:
    """One markdown table per (benchmark, protocol, split, source): targets × methods, ×100.

    Cells are ``mean ± sd`` over seeds (sample sd; just the mean with one seed), the header
    giving the most seeds a cell has, and a cell with fewer saying how many; the ``avg`` row
    is the mean over targets (the source language excluded), a cell over fewer targets than
    another of its row saying so (:func:`fewer_targets`). A method composed at several
    language-SFT scales gets one column per scale.
    """
    blocks = []
    for (bench, protocol, split, source), rows in _panels(summary).items():
        columns = list(dict.fromkeys(r["column"] for r in rows))
        targets = list(dict.fromkeys(r["target"] for r in rows if r["target"] != AVERAGE))
        if any(r["target"] == AVERAGE for r in rows):
            targets.append(AVERAGE)
        lookup = {(r["column"], r["target"]): r for r in rows}
        seeds = max(r["seeds"] for r in rows)
        averaged = max((r["targets"] for r in rows if r["target"] == AVERAGE), default=1)
        split_note = f" — {split} split" if split else ""
        spread = ", mean ± sd over seeds" if seeds > 1 else ""
        lines = [
            f"### {bench} — {protocol} — source: {source}{split_note} — {metric.replace('_', '-')} ×100{spread} "
            f"({seeds} seed{'s' if seeds != 1 else ''})",
            "",
            "| target | " + " | ".join(columns) + " |",
            "|---|" + "---|" * len(columns),
        ]
        for target in targets:
            label = f"**{target}**" if target == AVERAGE else target
            most = averaged if target == AVERAGE else 1
            lines.append(f"| {label} | " + " | ".join(_cell(lookup.get((c, target)), metric, seeds, most)
                                                      for c in columns) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def grouped_bar_plot(
    panels: Mapping[str, Sequence[Mapping[str, Any]]],
    path: str | Path,
    *,
    x_key: str,
    series_key: str,
    metric: str = "macro_f1",
) -> None:
    """Grouped bars, one panel per entry of ``panels`` (title -> summary rows), PNG via Agg.

    In a panel, the x positions are the distinct ``row[x_key]`` values, one bar series per
    distinct ``row[series_key]``; heights ``100 * row[metric + "_mean"]``, error bars the sd.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not panels:
        raise ValueError("nothing to plot")
    figure, axes = plt.subplots(len(panels), 1, figsize=(10, 3.6 * len(panels)), squeeze=False)
    for axis, (title, rows) in zip(axes[:, 0], panels.items(), strict=True):
        series = list(dict.fromkeys(r[series_key] for r in rows))
        xs_names = list(dict.fromkeys(r[x_key] for r in rows))
        lookup = {(r[series_key], r[x_key]): r for r in rows}
        width = 0.8 / max(len(series), 1)
        for i, name in enumerate(series):
            xs, heights, errors = [], [], []
            for j, x_name in enumerate(xs_names):
                row = lookup.get((name, x_name))
                if row is not None:
                    xs.append(j + (i - (len(series) - 1) / 2) * width)
                    heights.append(100 * row[f"{metric}_mean"])
                    errors.append(100 * row[f"{metric}_sd"])
            axis.bar(xs, heights, width, yerr=errors, label=name, capsize=2)
        axis.set_xticks(range(len(xs_names)), xs_names, rotation=20 if len(xs_names) > 6 else 0)
        axis.set_ylabel(f"{metric.replace('_', '-')} ×100")
        axis.set_title(title)
        axis.legend(fontsize="small", ncols=min(len(series), 6))
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def bar_plot(summary: Sequence[Mapping[str, Any]], path: str | Path, metric: str = "macro_f1") -> None:
    """Grouped bars (targets × methods, error bars = seed sd), one panel per source. PNG, Agg."""
    panels = {
        " / ".join(str(part) for part in key if part): rows for key, rows in _panels(summary).items()
    }
    grouped_bar_plot(panels, path, x_key="target", series_key="column", metric=metric)
