"""Result tables (markdown + CSV) and a bar plot (PNG) from evaluated rows."""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

AVERAGE = "avg"


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> None:
    """Write dict rows (the union of their keys as the header, first-seen order)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    header: list[str] = []
    for row in rows:
        header += [key for key in row if key not in header]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


def mean_sd(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    if not values:
        raise ValueError("no values")
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def summarize(rows: Sequence[Mapping[str, Any]], exclude_from_average: Sequence[str] = ()) -> list[dict[str, Any]]:
    """Aggregate rows over seeds: one row per (benchmark, protocol, source, method, target).

    Adds, per (benchmark, protocol, source, method), an ``avg`` target: per seed the mean
    over targets (those in ``exclude_from_average``, e.g. the source itself, left out),
    then mean ± sd over seeds — the seed spread of the average, not of the languages.
    """
    cells: dict[tuple, dict[int, dict[str, float]]] = {}
    for row in rows:
        key = (row["benchmark"], row["protocol"], row["source"], row["method"], row["target"])
        cells.setdefault(key, {})[int(row["seed"])] = {"macro_f1": row["macro_f1"], "accuracy": row["accuracy"]}
    averages: dict[tuple, dict[int, list[dict[str, float]]]] = {}
    for (bench, protocol, source, method, target), by_seed in cells.items():
        if target in exclude_from_average or target == source:
            continue
        for seed, metrics in by_seed.items():
            averages.setdefault((bench, protocol, source, method, AVERAGE), {}).setdefault(seed, []).append(metrics)
    summary = []
    for key, by_seed in list(cells.items()) + [
        (key, {seed: _mean_metrics(ms) for seed, ms in seeds.items()}) for key, seeds in averages.items()
    ]:
        f1_mean, f1_sd = mean_sd([m["macro_f1"] for m in by_seed.values()])
        acc_mean, acc_sd = mean_sd([m["accuracy"] for m in by_seed.values()])
        summary.append({
            "benchmark": key[0], "protocol": key[1], "source": key[2], "method": key[3], "target": key[4],
            "seeds": len(by_seed), "macro_f1_mean": f1_mean, "macro_f1_sd": f1_sd,
            "accuracy_mean": acc_mean, "accuracy_sd": acc_sd,
        })
    return summary


def _mean_metrics(metrics: Sequence[Mapping[str, float]]) -> dict[str, float]:
    return {name: sum(m[name] for m in metrics) / len(metrics) for name in ("macro_f1", "accuracy")}


def _cell(row: Mapping[str, Any] | None, metric: str) -> str:
    if row is None:
        return "—"
    mean, sd = 100 * row[f"{metric}_mean"], 100 * row[f"{metric}_sd"]
    return f"{mean:.1f} ± {sd:.1f}" if row["seeds"] > 1 else f"{mean:.1f}"


def markdown_tables(summary: Sequence[Mapping[str, Any]], metric: str = "macro_f1") -> str:
    """One markdown table per (benchmark, protocol, source): targets × methods, ×100.

    Cells are ``mean ± sd`` over seeds (just the mean with one seed); the ``avg`` row is
    the mean over targets (the source language excluded).
    """
    blocks = []
    groups: dict[tuple, list[Mapping[str, Any]]] = {}
    for row in summary:
        groups.setdefault((row["benchmark"], row["protocol"], row["source"]), []).append(row)
    for (bench, protocol, source), rows in groups.items():
        methods = list(dict.fromkeys(r["method"] for r in rows))
        targets = list(dict.fromkeys(r["target"] for r in rows if r["target"] != AVERAGE))
        if any(r["target"] == AVERAGE for r in rows):
            targets.append(AVERAGE)
        lookup = {(r["method"], r["target"]): r for r in rows}
        seeds = max(r["seeds"] for r in rows)
        lines = [
            f"### {bench} — {protocol} — source: {source} — {metric.replace('_', '-')} ×100 "
            f"({seeds} seed{'s' if seeds != 1 else ''})",
            "",
            "| target | " + " | ".join(methods) + " |",
            "|---|" + "---|" * len(methods),
        ]
        for target in targets:
            label = f"**{target}**" if target == AVERAGE else target
            lines.append(f"| {label} | " + " | ".join(_cell(lookup.get((m, target)), metric) for m in methods) + " |")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


def bar_plot(summary: Sequence[Mapping[str, Any]], path: str | Path, metric: str = "macro_f1") -> None:
    """Grouped bars (targets × methods, error bars = seed sd), one panel per source. PNG, Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels: dict[str, list[Mapping[str, Any]]] = {}
    for row in summary:
        panels.setdefault(f"{row['benchmark']} / {row['protocol']} / {row['source']}", []).append(row)
    figure, axes = plt.subplots(len(panels), 1, figsize=(10, 3.6 * len(panels)), squeeze=False)
    for axis, (title, rows) in zip(axes[:, 0], panels.items(), strict=True):
        methods = list(dict.fromkeys(r["method"] for r in rows))
        targets = list(dict.fromkeys(r["target"] for r in rows))
        lookup = {(r["method"], r["target"]): r for r in rows}
        width = 0.8 / max(len(methods), 1)
        for i, method in enumerate(methods):
            xs, heights, errors = [], [], []
            for j, target in enumerate(targets):
                row = lookup.get((method, target))
                if row is not None:
                    xs.append(j + (i - (len(methods) - 1) / 2) * width)
                    heights.append(100 * row[f"{metric}_mean"])
                    errors.append(100 * row[f"{metric}_sd"])
            axis.bar(xs, heights, width, yerr=errors, label=method, capsize=2)
        axis.set_xticks(range(len(targets)), targets)
        axis.set_ylabel(f"{metric.replace('_', '-')} ×100")
        axis.set_title(title)
        axis.legend(fontsize="small", ncols=len(methods))
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
