"""Print, save and plot the perf documents: ``deftx bench``'s (``deftx-bench/1`` suite and
scaling results, predicted vs measured) and ``deftx profile --static``'s report
(:func:`deftx.perf.static.analysis.build_static_report`)."""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

TABLE_COLUMNS = (
    "op",
    "shapes",
    "K",
    "deftx",
    "deftx time",
    "baseline",
    "baseline time",
    "speedup",
    "GB/s",
    "% roof",
    "extra mem deftx",
    "extra mem baseline",
)


def measured_rows(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """The result rows that were measured (neither failed nor skipped)."""
    return [r for r in doc["results"] if "error" not in r and "skipped" not in r]


def format_seconds(seconds: float | None, digits: tuple[int, int, int] = (2, 1, 0)) -> str:
    """``1.23 s``, ``45.6 ms``, ``789 us``; ``digits``: the decimals in s, ms and us."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds >= 1.0:
        return f"{seconds:.{digits[0]}f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.{digits[1]}f} ms"
    return f"{seconds * 1e6:.{digits[2]}f} us"


def format_bytes(nbytes: float | None) -> str:
    """Binary units: ``512 B``, ``3.2 MiB``, ``1.10 GiB``."""
    if nbytes is None:
        return "-"
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= size:
            return f"{nbytes / size:.{2 if unit == 'GiB' else 1}f} {unit}"
    return f"{nbytes:.0f} B"


def format_k(k_fraction: float | None) -> str:
    return "-" if k_fraction is None else f"{100 * k_fraction:g}%"


def _number(x: float | None, digits: int = 2) -> str:
    """``digits`` decimals; a nonzero value they would show as 0 keeps one significant digit (``0.004``)."""
    if x is None:
        return "-"
    return f"{x:.1g}" if 0 < abs(x) < 0.5 * 10**-digits else f"{x:.{digits}f}"


def _comparison_cells(c: dict[str, Any], shapes: str) -> list[str]:
    """The table row of one (deftx, baseline) comparison."""
    deftx = c["deftx"] + (" (auto)" if c.get("auto") else "")
    roof = _roof_cell(c)
    return [
        c["op"],
        shapes,
        format_k(c["k_fraction"]),
        deftx,
        format_seconds(c["deftx_time_s"]),
        c["baseline"],
        format_seconds(c["baseline_time_s"]),
        f"{c['speedup']:.2f}x",
        _number(c["gbps"]),
        roof,
        format_bytes(c["deftx_peak_extra_bytes"]),
        format_bytes(c["baseline_peak_extra_bytes"]),
    ]


def _roof_cell(row: dict[str, Any]) -> str:
    """A row's share of its roof in %, marked ``(flops)`` where the roof is the compute rate."""
    return _number(row["roofline_pct"], 1) + (" (flops)" if row["roofline"] == "compute" else "")


def _time_or_status(row: dict[str, Any]) -> str:
    """A result row's time, or why it has none (``failed`` / ``wrong output`` / ``skipped``)."""
    if "skipped" in row:
        return "skipped"
    if "error" in row:
        return "wrong output" if row.get("wrong_output") else "failed"
    return format_seconds(row["time_s"])


def _unpaired_cells(r: dict[str, Any], shapes: str) -> list[str]:
    """The table row of a result no comparison holds, in its role's columns."""
    time, memory = _time_or_status(r), format_bytes(r.get("peak_extra_bytes"))
    head = [r["op"], shapes, format_k(r["k_fraction"])]
    if r["role"] == "baseline":
        return [*head, "-", "-", r["name"], time, "-", "-", "-", "-", memory]
    name = r["name"] + (" (auto)" if r.get("auto") else "")
    measured = "skipped" not in r and "error" not in r
    roof = _roof_cell(r) if measured else "-"
    gbps = _number(r["gbps"]) if measured else "-"
    return [*head, name, time, "-", "-", "-", gbps, roof, memory, "-"]


def table_rows(doc: dict[str, Any]) -> list[list[str]]:
    """Per (op, K) case: one row per (deftx backend, baseline) comparison, then one row per implementation
    no comparison holds (it failed, was skipped, or had nothing measured to compare with)."""
    shapes = doc["shape_set"]["name"]
    paired = {(c["op"], c["k_fraction"], name) for c in doc["comparisons"] for name in (c["deftx"], c["baseline"])}
    rows = []
    for case in dict.fromkeys((r["op"], r["k_fraction"]) for r in doc["results"]):
        rows += [_comparison_cells(c, shapes) for c in doc["comparisons"] if (c["op"], c["k_fraction"]) == case]
        rows += [_unpaired_cells(r, shapes) for r in doc["results"]
                 if (r["op"], r["k_fraction"]) == case and (*case, r["name"]) not in paired]
    return rows


def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain aligned text table."""
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=True)] if rows else []
    if not rows:
        return "  ".join(header)
    lines = ["  ".join(str(h).ljust(w) for h, w in zip(header, widths, strict=True))]
    lines.append("  ".join("-" * w for w in widths))
    lines += ["  ".join(str(x).ljust(w) for x, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(lines)


def _cell(text: str) -> str:
    """A markdown table cell: a ``|`` in the text escaped, so it does not end the cell."""
    return str(text).replace("|", r"\|")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]], align: str = "") -> str:
    """The same table in GitHub markdown; ``align``: one ``l`` or ``r`` per column (default: none)."""
    rule = "|" + "".join("---:|" if a == "r" else "---|" for a in align or "l" * len(header))
    lines = ["| " + " | ".join(_cell(h) for h in header) + " |", rule]
    lines += ["| " + " | ".join(_cell(x) for x in row) + " |" for row in rows]
    return "\n".join(lines)


def output_check_lines(doc: dict[str, Any]) -> list[str]:
    """What the suite's output checks say: how many deftx rows were checked against a torch
    reference before timing, and each row whose check could not run; nothing when not checked."""
    if not doc["config"].get("check_outputs"):
        return ["outputs: not checked (--no-check)"] if "check_outputs" in doc["config"] else []
    checked = [r for r in doc["results"] if "output_check" in r or r.get("wrong_output")]
    unchecked = [r for r in checked if r.get("output_check", "").startswith("not run")]
    lines = [f"outputs: {len(checked) - len(unchecked)} of {len(checked)} deftx rows checked against a torch "
             "reference before timing"]
    lines += [f"unchecked: {r['op']} {format_k(r['k_fraction'])} {r['name']}: {r['output_check']}"
              for r in unchecked]
    return lines


def timed_calls(doc: dict[str, Any]) -> str:
    """``time = median of 3 to 20 timed calls per row (1 untimed warm-up call first)``: the sample counts
    the measured rows' medians are of (one where a call was too long to repeat) and the warm-up."""
    counts = sorted(len(r["samples_s"]) for r in measured_rows(doc))
    if not counts:
        return "time = median"
    calls = str(counts[0]) if counts[0] == counts[-1] else f"{counts[0]} to {counts[-1]}"
    warmup = doc["config"]["timing"]["warmup"]
    return (f"time = median of {calls} timed call{'s' if counts[-1] > 1 else ''} per row "
            f"({warmup} untimed warm-up call{'s' if warmup != 1 else ''} first)")


def summary_lines(doc: dict[str, Any]) -> list[str]:
    """The header printed above the table: machine, roofs, shape set, failures."""
    m, roof, shapes = doc["machine"], doc["roofline"], doc["shape_set"]
    device = m.get("gpu") or f"{m['cpu']} ({m['torch_threads']} torch threads)"
    lines = [
        f"device: {doc['device']}: {device}; torch {m['torch']}; load average (1 min) "
        f"{m['load_average_at_start'][0]:.1f} at start, {m['load_average_at_end'][0]:.1f} at end",
        f"measured roofs: copy {roof['copy_gbps']:.1f} GB/s, fp32 matmul {roof['matmul_gflops']:.0f} GFLOP/s",
        f"shapes: {shapes['name']}, {shapes['parameters']:,} parameters in {shapes['tensors']} tensors "
        f"({shapes['note']})",
        f"dtype {doc['config']['dtype']}; {timed_calls(doc)}; speedup = baseline time / deftx time; "
        "% roof: GB/s vs the copy roof (rsvd: GFLOP/s vs the matmul roof)",
    ]
    errors = [r for r in doc["results"] if "error" in r or "memory_error" in r]
    lines += [
        f"failed: {r['op']} {format_k(r['k_fraction'])} {r['name']}: {r.get('error') or r.get('memory_error')}"
        for r in errors
    ]
    lines += [f"skipped: {r['op']} {format_k(r['k_fraction'])} {r['name']}: {r['skipped']}"
              for r in doc["results"] if "skipped" in r]
    lines += output_check_lines(doc)
    rsvd = [r for r in doc["results"] if "relative_error" in r]
    if rsvd:
        errs = ", ".join(f"{r['name']} {r['relative_error']:.4f}" for r in rsvd)
        lines.append(f"rsvd rank {doc['config']['rank']} relative reconstruction error: {errs}")
    scores = [r for r in doc["results"] if "score_error" in r]
    if scores:
        errs = ", ".join(f"{r['name']} {r['score_error']:.4f}" for r in scores)
        lines.append(f"scores rank {doc['config']['rank']} error of |reconstruction| vs |Δ|, relative to ‖Δ‖: {errs}")
    overhead = [r for r in doc["results"] if r.get("host_overhead") and "error" not in r["host_overhead"]]
    lines += [
        f"host overhead per call: {r['op']} {format_k(r['k_fraction'])} {r['name']}: "
        f"{r['host_overhead']['syncs']} syncs, {r['host_overhead']['kernels']} kernel launches "
        f"({r['host_overhead']['triton_kernels']} Triton), {r['host_overhead']['memcpy']} memcpys"
        for r in overhead
    ]
    return lines


PREDICTED_COLUMNS = (
    "op",
    "shapes",
    "K",
    "impl",
    "measured time",
    "predicted time",
    "measured/predicted",
    "bound",
    "measured speedup",
    "predicted speedup",
)


def _predicted_seconds(seconds: float | None) -> str:
    """:func:`format_seconds`, and ``ns`` below a microsecond (roofline times of small sets)."""
    if seconds is not None and 0 < seconds < 1e-6:
        return f"{seconds * 1e9:.0f} ns"
    return format_seconds(seconds)


def _times(x: float | None) -> str:
    """``1.29x``; ``3,162x`` from 100 on; two significant digits under 0.1 (``0.0043x``, never ``0.00x``)."""
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:,.0f}x"
    return f"{x:.2f}x" if x >= 0.1 else f"{x:.2g}x"


def predicted_lines(doc: dict[str, Any]) -> list[str]:
    """The header of the predicted-vs-measured table: target, device, how to read it.

    ``doc`` carries a ``"predicted"`` section (:func:`deftx.perf.predicted.predict_suite`).
    """
    section = doc["predicted"]
    target = section["target"]
    if target is None:
        return [f"predicted vs measured: no target ({section['choice']})"]
    return [
        f"predicted for {target['gpu']} ({target['arch']}: {target['hbm_bytes_per_s'] / 1e12:.2f} TB/s HBM, "
        f"fp32 {target['peak_flops']['fp32'] / 1e12:g} TFLOP/s), measured on {section['measured_on']}",
        f"target: {section['choice']}",
        f"{section['method']}; measured/predicted: how many times the roofline lower bound; "
        "speedups: of the deftx reference (the auto backend) over each baseline",
    ]


def predicted_table(doc: dict[str, Any]) -> list[list[str]]:
    """One row per measured implementation of the ``"predicted"`` section (columns
    :data:`PREDICTED_COLUMNS`); ``-`` where an implementation has no model."""
    shapes = doc["shape_set"]["name"]
    rows = []
    for r in doc["predicted"]["rows"]:
        rows.append(
            [
                r["op"],
                shapes,
                format_k(r["k_fraction"]),
                r["name"],
                format_seconds(r["measured_time_s"]),
                _predicted_seconds(r["predicted_time_s"]),
                _times(r["measured_over_predicted"]),
                r.get("bound") or "-",
                _times(r["measured_speedup"]),
                _times(r["predicted_speedup"]),
            ]
        )
    return rows


def predicted_markdown(doc: dict[str, Any]) -> str:
    """The ``## Predicted vs measured`` section of the markdown report."""
    lines = ["## Predicted vs measured", "", *(f"- {line}" for line in predicted_lines(doc))]
    rows = predicted_table(doc)
    if rows:
        lines += ["", markdown_table(PREDICTED_COLUMNS, rows)]
    return "\n".join(lines)


def failed_everything(doc: dict[str, Any]) -> str | None:
    """Why a suite document holds no measurement at all (every row that ran failed, or nothing
    ran), or None when at least one implementation was measured."""
    ran = [r for r in doc["results"] if "skipped" not in r]
    if not ran:
        return "no measurement ran (no case or implementation was left to time)"
    if any("error" not in r for r in ran):
        return None
    first = ran[0]
    return (f"every measurement failed ({len(ran)} of {len(ran)}); first: {first['op']} "
            f"{format_k(first['k_fraction'])} {first['name']}: {first['error']}")


def wrong_outputs(doc: dict[str, Any]) -> str | None:
    """Which deftx implementations gave a wrong output when checked before timing (rows with
    ``wrong_output``), as one sentence, or None when none did."""
    wrong = [r for r in doc["results"] if r.get("wrong_output")]
    if not wrong:
        return None
    named = "; ".join(f"{r['op']} {format_k(r['k_fraction'])} {r['name']}" for r in wrong)
    return f"{len(wrong)} deftx implementation(s) gave a wrong output, not timed: {named}"


def output_folder_problem(folder: str | Path) -> str | None:
    """Why ``folder`` cannot be made and written as an output folder, or None when it can: it or a
    folder above it is a file, or the nearest existing folder is not writable. Asked before any work."""
    path = Path(folder)
    for existing in (path, *path.parents):
        if not existing.exists():
            continue
        if not existing.is_dir():
            return "exists and is not a folder" if existing == path else f"{existing} is not a folder"
        if not os.access(existing, os.W_OK | os.X_OK):
            return "is not writable" if existing == path else f"{existing} is not writable"
        return None
    return None


def write_json(doc: dict[str, Any], path: Path, indent: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=indent) + "\n")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_suite(doc: dict[str, Any], path: Path) -> None:
    """One panel per op: time per implementation vs K (log-log); K-free ops (rsvd, scores) as bars."""
    plt = _pyplot()
    measured = measured_rows(doc)
    ops = list(dict.fromkeys(r["op"] for r in measured))
    fig, axes = plt.subplots(1, max(1, len(ops)), figsize=(4.2 * max(1, len(ops)), 3.8), squeeze=False)
    for ax, op in zip(axes[0], ops, strict=False):
        rows = [r for r in measured if r["op"] == op]
        names = list(dict.fromkeys(r["name"] for r in rows))
        if all(r["k_fraction"] is None for r in rows):
            times = [next(r["time_s"] for r in rows if r["name"] == n) for n in names]
            colors = ["tab:blue" if n.startswith("deftx") else "tab:gray" for n in names]
            ax.bar(range(len(names)), times, color=colors)
            ax.set_xticks(range(len(names)), names, rotation=20, ha="right", fontsize=8)
            ax.set_title(f"{op} (rank {doc['config']['rank']})")
        else:
            for n in names:
                pts = sorted((r["k_fraction"], r["time_s"]) for r in rows if r["name"] == n)
                style = "-o" if n.startswith("deftx") else "--s"
                ax.plot([100 * k for k, _ in pts], [t for _, t in pts], style, label=n, markersize=4)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("K (% of parameters)")
            ax.set_title(op)
            ax.legend(fontsize=7)
        ax.set_ylabel("seconds per call")
        ax.grid(True, which="both", alpha=0.3)
    shapes = doc["shape_set"]
    fig.suptitle(f"deftx bench on {doc['device']}: {shapes['name']} ({shapes['parameters'] / 1e6:.1f}M parameters)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _millions(parameters: int) -> str:
    """``278M``; two significant digits under a million (``0.038M``, never ``0M``)."""
    return f"{parameters / 1e6:,.0f}M" if parameters >= 1e6 else f"{parameters / 1e6:.2g}M"


def scaling_table(doc: dict[str, Any]) -> list[list[str]]:
    """One row per point of the size sweep (op, shape set), then of the K sweep (op, K)."""
    sweeps = [("size", r) for r in doc["size_sweep"]] + [("K", r) for r in doc["k_sweep"]]
    rows = []
    for sweep, r in sweeps:
        rows.append(
            [
                sweep,
                r["op"],
                r["shape_set"],
                _millions(r["parameters"]),
                format_k(r["k_fraction"]),
                str(r["chunks"]),
                format_seconds(r["deftx_time_s"]),
                format_seconds(r.get("baseline_time_s")),
                "-" if r.get("baseline_time_s") is None else f"{r['baseline_time_s'] / r['deftx_time_s']:.2f}x",
                format_bytes(r.get("deftx_peak_extra_bytes")),
                format_bytes(r.get("baseline_peak_extra_bytes")),
            ]
        )
    return rows


SCALING_COLUMNS = (
    "sweep",
    "op",
    "shape set",
    "params",
    "K",
    "chunks",
    "deftx time",
    "baseline time",
    "speedup",
    "extra mem deftx",
    "extra mem baseline",
)


def _parameters(row: dict[str, Any]) -> float:
    return row["parameters"]


def _k_percent(row: dict[str, Any]) -> float:
    return 100 * row["k_fraction"]


def _plot_baseline(
    ax: Any,
    rows: list[dict[str, Any]],
    x: Callable[[dict[str, Any]], float],
    key: str,
    op: str,
    color: str | None,
    scale: float = 1.0,
) -> None:
    """The dashed baseline line of ``op``: ``row[key] * scale`` against ``x(row)`` where measured."""
    base = [r for r in rows if r.get(key) is not None]
    if base:
        xs, ys = [x(r) for r in base], [r[key] * scale for r in base]
        ax.plot(xs, ys, "--s", color=color, alpha=0.6, label=f"{op} {base[0]['baseline']}")


def plot_scaling(doc: dict[str, Any], path: Path) -> None:
    """Three panels: time vs parameters, peak extra memory vs parameters, time vs K."""
    plt = _pyplot()
    fig, (ax_t, ax_m, ax_k) = plt.subplots(1, 3, figsize=(15, 4.4))
    colors = {"topk": "tab:blue", "rsvd": "tab:red", "scatter": "tab:green", "step": "tab:purple"}
    ops = list(dict.fromkeys(r["op"] for r in doc["size_sweep"]))
    for op in ops:
        rows = sorted((r for r in doc["size_sweep"] if r["op"] == op), key=lambda r: r["parameters"])
        x = [r["parameters"] for r in rows]
        color = colors.get(op)
        ax_t.plot(x, [r["deftx_time_s"] for r in rows], "-o", color=color, label=f"{op} deftx")
        streamed = [r for r in rows if r["chunks"] > 1]
        ax_t.plot(
            [r["parameters"] for r in streamed],
            [r["deftx_time_s"] for r in streamed],
            "o",
            color=color,
            markerfacecolor="white",
            markersize=9,
        )
        _plot_baseline(ax_t, rows, _parameters, "baseline_time_s", op, color)
        mem = [r for r in rows if r.get("deftx_peak_extra_bytes") is not None]
        ax_m.plot(
            [r["parameters"] for r in mem],
            [r["deftx_peak_extra_bytes"] / 2**20 for r in mem],
            "-o",
            color=color,
            label=f"{op} deftx",
        )
        _plot_baseline(ax_m, rows, _parameters, "baseline_peak_extra_bytes", op, color, scale=2**-20)
    for op in dict.fromkeys(r["op"] for r in doc["k_sweep"]):
        rows = sorted((r for r in doc["k_sweep"] if r["op"] == op), key=lambda r: r["k_fraction"])
        ks = [100 * r["k_fraction"] for r in rows]
        ax_k.plot(ks, [r["deftx_time_s"] for r in rows], "-o", color=colors.get(op), label=f"{op} deftx")
        _plot_baseline(ax_k, rows, _k_percent, "baseline_time_s", op, colors.get(op))
    ax_t.set(xscale="log", yscale="log", xlabel="parameters", ylabel="seconds per call",
             title=f"time vs model size (K = {format_k(doc['config']['k_fraction'])}; hollow: streamed)")
    measured_memory = any(r.get("deftx_peak_extra_bytes") for r in doc["size_sweep"])
    ax_m.set(
        xscale="log",
        yscale="log" if measured_memory else "linear",
        xlabel="parameters",
        ylabel="peak extra memory (MiB)",
        title="peak extra memory (largest chunk when streamed)" if measured_memory else "memory not measured",
    )
    ax_k.set(xscale="log", yscale="log", xlabel="K (% of parameters)", ylabel="seconds per call",
             title=f"time vs K ({doc['config']['k_sweep_set']})")
    for ax in (ax_t, ax_m, ax_k):
        ax.grid(True, which="both", alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"deftx scaling on {doc['device']} ({doc['machine'].get('gpu') or doc['machine']['cpu']})")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _bits(counts: dict[str, int]) -> str:
    return " ".join(f"{n}x{bits}" for bits, n in counts.items()) or "-"


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def _flops(cost: dict[str, Any]) -> str:
    return _si(cost["flops"], "FLOP") if cost["flop_precision"] else "-"


def _static_seconds(seconds: float) -> str:
    """:func:`format_seconds` with three decimals (one in us): ``1.234 ms``."""
    return format_seconds(seconds, digits=(3, 3, 1))


KERNEL_COLUMNS = (
    "kernel",
    "warps",
    "regs/thread",
    "spill B",
    "shared B",
    "occupancy (warps/SM)",
    "limiter",
    "global loads (count x bits)",
    "global stores",
    "atomics int/float",
    "shared ld/st",
    "MMA",
    "vector-loop path (instr / iteration)",
    "violations",
)


def _kernel_row(k: dict[str, Any]) -> list[str]:
    sass, occ = k["sass"], k["occupancy"]
    classes = sass["classes"]
    return [
        f"`{k['name']}`",
        str(k["num_warps"]),
        str(k["registers"]),
        str(k["spill_bytes"]),
        str(k["shared_bytes"]),
        f"{occ['warps_per_sm']}/{occ['max_warps_per_sm']} ({occ['fraction']:.0%})",
        occ["limiter"],
        _bits(sass["global_load_bits"]),
        _bits(sass["global_store_bits"]),
        f"{sass['global_atomics']['integer']}/{sass['global_atomics']['float']}",
        f"{classes['shared_load']}/{classes['shared_store']}",
        ", ".join(f"{n}x {op}" for op, n in sass["mma"].items()) or "-",
        str(sass["vector_loop_path"] or "-"),
        "; ".join(k["violations"]) or "none",
    ]


ROOFLINE_COLUMNS = (
    "op",
    "workload",
    "deftx bytes",
    "deftx FLOPs",
    "deftx time (bound)",
    "baseline",
    "baseline bytes",
    "baseline FLOPs",
    "baseline time (bound)",
    "predicted speedup",
)


def _cost_cells(cost: dict[str, Any]) -> list[str]:
    """Bytes, FLOPs and ``time (bound)`` of one side of a roofline row."""
    return [_si(cost["bytes"], "B"), _flops(cost), f"{_static_seconds(cost['time_s'])} ({cost['bound']})"]


def _roofline_row(r: dict[str, Any]) -> list[str]:
    speedup = f"{r['predicted_speedup']:.2f}x" if r["predicted_speedup"] is not None else "-"
    baseline = f"`{r['baseline']['name']}`"
    return [r["op"], r["workload"], *_cost_cells(r["deftx"]), baseline, *_cost_cells(r["baseline"]), speedup]


def static_markdown(report: dict[str, Any]) -> str:
    """The markdown rendering of a static report (:func:`deftx.perf.static.analysis.build_static_report`)."""
    t, shapes = report["target"], report["shape_set"]
    kernels = report["kernels"]
    violating = [k for k in kernels if k["violations"]]
    lines = [
        f"# Static kernel report: {t['arch']} ({t['gpu']}), shape set `{shapes['name']}`",
        "",
        f"**{report['label']}.**",
        "",
        f"Made by `{report['command']}` (deftx {report['versions']['deftx']}, "
        f"Triton {report['versions']['triton']}). Kernels compiled for {t['arch']} without a GPU; "
        "registers, spills and shared memory read from the cubin (`cuobjdump`), instruction counts from "
        "the SASS (`nvdisasm`); occupancy is the theoretical figure those resources allow. Roofline: "
        f"time = max(bytes / {t['hbm_bytes_per_s'] / 1e12:.3g} TB/s, FLOPs / datasheet peak) — a lower "
        "bound, not a measurement.",
        "",
        f"{len(kernels)} specialisations compiled, {len(report['compile_failures'])} failed to compile, "
        f"{len(violating)} violate a check.",
        "",
        "## Kernels",
        "",
        markdown_table(KERNEL_COLUMNS, [_kernel_row(k) for k in kernels], "lrrrrrllllllrl"),
    ]
    if report["compile_failures"]:
        lines += ["", "## Compile failures", ""]
        lines += [f"- `{f['name']}` ({f['module']}): {f['error'].splitlines()[0] if f['error'] else ''}"
                  for f in report["compile_failures"]]
    modules = report["kernel_modules"]
    notes = [f"absent: {', '.join(modules['absent'])}" if modules["absent"] else "",
             f"without SPECIALIZATIONS: {', '.join(modules['without_specializations'])}"
             if modules["without_specializations"] else "",
             *(f"{name} does not import: {err}" for name, err in modules["broken"].items())]
    if any(notes):
        lines += ["", "Kernel modules not covered: " + "; ".join(n for n in notes if n) + "."]
    lines += [
        "",
        f"## Roofline prediction: {shapes['description'] or shapes['name']}",
        "",
        f"{shapes['parameters']:,} parameters, {shapes['eligible']:,} eligible, {shapes['matrices']} matrices, "
        f"K = {shapes['k']:,}; settings: "
        + ", ".join(f"{k} = {v}" for k, v in shapes["settings"].items()) + ".",
        "",
        markdown_table(ROOFLINE_COLUMNS, [_roofline_row(r) for r in report["roofline"]], "llrrrlrrrr"),
    ]
    if report["roofline_skipped"]:
        lines += ["", "Not predicted: " + "; ".join(f"{op} ({why})" for op, why in report["roofline_skipped"].items())]
    return "\n".join(lines) + "\n"


def static_report_stem(report: dict[str, Any]) -> str:
    """File name stem: ``static_<arch without _>_<shape set>`` (``static_sm90_xlmr-base``)."""
    return f"static_{report['target']['arch'].replace('_', '')}_{report['shape_set']['name']}"


def write_static_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` of a static report into ``out_dir``; returns both paths."""
    out = Path(out_dir)
    stem = static_report_stem(report)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    write_json(report, json_path, indent=1)
    md_path.write_text(static_markdown(report))
    return json_path, md_path
