"""The run's summary: every stage's status and results, and the issue's goals, as JSON and markdown.

Goals (issue #17, ratios in one run on the GPU), each ``met``, ``missed`` or ``not measured``:

* top-k, Llama-7B bf16, K = 1%, public ``topk_mask``: >= 5x ``cat`` + ``torch.topk``, and within
  3x of the floor (one read of the inputs plus the index writes at the measured copy
  bandwidth: >= 33.3% of that roof); each pass over the data >= 60% of the copy bandwidth;
* host overhead: no device->host sync in ``masked_adamw_step_``; ``topk_mask`` over ~200
  tensors (XLM-R base: 197) in <= 20 launches (kernels, memcpys and memsets);
* compose 2 SFTs, originals saved: >= 70% of its byte roofline;
* masked AdamW at 5%: >= 3x ``torch.optim.AdamW(fused=True)``;
* compose and masked AdamW again on their prepared paths (``deftx_prepared``: checked and
  planned once, as ``prepare_composition`` and ``MaskedAdamW`` run them), where the public
  op's per-call host work is what a training loop or a repeated composition does not pay;
* DeFT-X scores: >= 1.5x ``torch.svd_lowrank`` + ``|U S Vh|`` at equal error, fp32 (XLM-R) and
  bf16 (Llama-7B), with fp32 products and again with tensor-core products
  (``deftx_tensor_cores``: tf32x3 for fp32 weights, bf16 otherwise), each at its own error.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from deftx.gpucheck.context import read_result

SCHEMA = "deftx-gpucheck/1"
BENCH_STAGES = {"bench-xlmr": "xlmr", "bench-llama": "llama"}
EQUAL_ERROR_TOLERANCE = 1.05
"""deftx's score error may exceed the baseline's by this factor and still count as equal."""


def bench_documents(work_dir: Path) -> dict[str, dict[str, Any]]:
    """bench set (``xlmr`` / ``llama``) -> the benchmark document its stage wrote, if any."""
    docs = {}
    for stage, name in BENCH_STAGES.items():
        result = read_result(work_dir, stage) or {}
        path = Path(result.get("document", ""))
        if result.get("document") and path.is_file():
            docs[name] = json.loads(path.read_text())
    return docs


def _timed_rows(doc: dict[str, Any] | None, op: str, k: float | None) -> list[dict[str, Any]]:
    """The timed rows of ``op`` at ``k`` (none without a document)."""
    rows = doc["results"] if doc else []
    return [r for r in rows if r["op"] == op and r["k_fraction"] == k and "time_s" in r]


def _deftx_row(doc: dict[str, Any] | None, op: str, k: float | None) -> dict[str, Any] | None:
    rows = [r for r in _timed_rows(doc, op, k) if r["role"] == "deftx"]
    return next((r for r in rows if r.get("auto")), rows[0] if rows else None)


def _impl_row(doc: dict[str, Any] | None, op: str, k: float | None, impl: str) -> dict[str, Any]:
    """One implementation's timed row, or {} when it was not timed."""
    return next((r for r in _timed_rows(doc, op, k) if r["impl"] == impl), {})


def _comparison(doc: dict[str, Any], op: str, k: float | None, baseline_impl: str) -> dict[str, Any] | None:
    from deftx.perf.cases import op_module

    name = op_module(op).BASELINES[baseline_impl]
    found = [c for c in doc["comparisons"] if c["op"] == op and c["k_fraction"] == k and c["baseline"] == name]
    return next((c for c in found if c.get("auto")), found[0] if found else None)


def goal(text: str, where: str, target: str, measured: float | None, met: Callable[[float], bool],
         shown: str | None = None) -> dict[str, Any]:
    """One goal row; ``measured`` None means not measured."""
    if measured is None:
        return {"goal": text, "where": where, "target": target, "measured": None, "shown": "-",
                "status": "not measured"}
    return {"goal": text, "where": where, "target": target, "measured": measured,
            "shown": shown if shown is not None else f"{measured:.3g}", "status": "met" if met(measured) else "missed"}


def where(docs: dict[str, dict[str, Any]], name: str, default: str, k: float | None = None) -> str:
    """What a goal was measured on: the document's shape set, dtype and device (``default``
    naming the issue's set when it was not measured), and K."""
    from deftx.perf.report import format_k

    doc = docs.get(name)
    label = f"{doc['shape_set']['name']} {doc['config']['dtype']} on {doc['device']}" if doc else default
    return label if k is None else f"{label}, K = {format_k(k)}"


def _speedup_goal(docs, name, label, op, k, baseline, at_least, text) -> dict[str, Any]:
    doc = docs.get(name)
    c = _comparison(doc, op, k, baseline) if doc else None
    return goal(text, label, f">= {at_least:g}x", c["speedup"] if c else None, lambda x: x >= at_least,
                f"{c['speedup']:.2f}x" if c else None)


PREPARED = "deftx_prepared"
"""The implementation name of a case's prepared path (checked and planned once)."""
TENSOR_CORES = "deftx_tensor_cores"
"""The scores case's variant with its products on tensor cores (tf32x3 / bf16)."""


def _prepared_speedup_goal(docs, name, label, op, k, baseline, at_least, text) -> dict[str, Any]:
    """``baseline``'s time over the prepared path's, from their rows."""
    prepared = _impl_row(docs.get(name), op, k, PREPARED).get("time_s")
    dense = _impl_row(docs.get(name), op, k, baseline).get("time_s")
    speedup = dense / prepared if prepared and dense else None
    return goal(text, label, f">= {at_least:g}x", speedup, lambda x: x >= at_least,
                f"{speedup:.2f}x" if speedup is not None else None)


def _roofline_goal(docs, name, label, op, k, at_least_pct, text, impl: str | None = None) -> dict[str, Any]:
    """The share of its byte roofline of deftx's row (``impl`` None) or of ``impl``'s."""
    doc = docs.get(name)
    row = _deftx_row(doc, op, k) if impl is None else _impl_row(doc, op, k, impl)
    pct = row.get("roofline_pct") if row else None
    return goal(text, label, f">= {at_least_pct:g}% of the roof", pct, lambda x: x >= at_least_pct,
                f"{pct:.1f}%" if pct is not None else None)


def _overhead(docs, name, op, k) -> dict[str, Any] | None:
    doc = docs.get(name)
    row = _deftx_row(doc, op, k) if doc else None
    overhead = (row or {}).get("host_overhead")
    return overhead if overhead and "error" not in overhead else None


def _scores_goal(docs, name, label, impl: str | None = None) -> dict[str, Any]:
    """svd_lowrank + |U S Vh|'s time over deftx's scores and their error ratio: deftx's row
    (``impl`` None, through the comparison) or ``impl``'s (the tensor-core variant)."""
    doc = docs.get(name)
    text = "DeFT-X scores >= 1.5x torch.svd_lowrank + |U S Vh| at equal error"
    target = ">= 1.5x, error <= 1.05x the baseline's"
    if impl is None:
        c = _comparison(doc, "scores", None, "svd_lowrank_abs") if doc else None
        speedup = c["speedup"] if c else None
        errors = (c.get("deftx_score_error"), c.get("baseline_score_error")) if c else (None, None)
    else:
        text += " (tensor-core products)"
        fast, dense = (_impl_row(doc, "scores", None, i) for i in (impl, "svd_lowrank_abs"))
        speedup = dense["time_s"] / fast["time_s"] if fast and dense else None
        errors = (fast.get("score_error"), dense.get("score_error"))
    if speedup is None:
        return goal(text, label, target, None, lambda x: False)
    error_ratio = errors[0] / errors[1] if errors[0] is not None and errors[1] else None
    equal = error_ratio is not None and error_ratio <= EQUAL_ERROR_TOLERANCE
    shown = f"{speedup:.2f}x, error ratio {error_ratio:.3f}" if error_ratio is not None else f"{speedup:.2f}x"
    return goal(text, label, target, speedup, lambda x: x >= 1.5 and equal, shown)


ISSUE_SETS = {"xlmr": "xlmr-base fp32", "llama": "llama-7b bf16"}
"""The issue's shape sets, named in a goal row when its set was not measured."""


def evaluate_goals(work_dir: Path) -> list[dict[str, Any]]:
    """The issue's goals, from the benchmark documents and the histogram stage's result."""
    docs = bench_documents(work_dir)

    def at(name: str, k: float | None = None) -> str:
        return where(docs, name, ISSUE_SETS[name], k)

    goals = [
        _speedup_goal(docs, "llama", at("llama", 0.01), "topk", 0.01, "cat_topk", 5.0,
                      "top-k (public topk_mask) >= 5x cat + torch.topk"),
        _roofline_goal(docs, "llama", at("llama", 0.01), "topk", 0.01, 100 / 3,
                       "top-k within 3x of the floor (one read + index writes at the copy bandwidth)"),
    ]
    histogram = read_result(work_dir, "histogram") or {}
    passes = [r for r in histogram.get("rows", []) if r["role"] == "pass" and "pct_of_copy" in r]
    slowest = min((r["pct_of_copy"] for r in passes), default=None)
    goals.append(goal("each pass over the data >= 60% of the copy bandwidth",
                      "histogram micro-benchmark, slowest full pass", ">= 60%",
                      slowest, lambda x: x >= 60.0, f"{slowest:.1f}%" if slowest is not None else None))
    for name in ISSUE_SETS:
        overhead = _overhead(docs, name, "step", 0.05)
        goals.append(goal("no device->host sync in masked_adamw_step_", at(name, 0.05), "0 syncs",
                          overhead["syncs"] if overhead else None, lambda x: x == 0,
                          f"{overhead['syncs']} syncs" if overhead else None))
    overhead = _overhead(docs, "xlmr", "topk", 0.01)
    launches = overhead["kernels"] + overhead["memcpy"] + overhead["memset"] if overhead else None
    goals.append(goal("topk_mask over ~200 tensors (XLM-R base: 197) in <= 20 launches", at("xlmr", 0.01), "<= 20",
                      launches, lambda x: x <= 20,
                      f"{launches} ({overhead['kernels']} kernels, {overhead['memcpy']} memcpy, "
                      f"{overhead['memset']} memset)" if overhead else None))
    for name in ISSUE_SETS:
        goals.append(_roofline_goal(docs, name, at(name, 0.01), "compose", 0.01, 70.0,
                                    "compose 2 SFTs (originals saved) >= 70% of its byte roofline"))
        goals.append(_roofline_goal(docs, name, at(name, 0.01), "compose", 0.01, 70.0,
                                    "compose 2 SFTs prepared once (apply + revert) >= 70% of its byte roofline",
                                    impl=PREPARED))
    for name in ISSUE_SETS:
        goals.append(_speedup_goal(docs, name, at(name, 0.05), "step", 0.05, "adamw_fused", 3.0,
                                   "masked AdamW >= 3x torch.optim.AdamW(fused=True)"))
        goals.append(_prepared_speedup_goal(docs, name, at(name, 0.05), "step", 0.05, "adamw_fused", 3.0,
                                            "masked AdamW as MaskedAdamW steps (checked once) >= 3x "
                                            "AdamW(fused=True)"))
    goals += [_scores_goal(docs, name, at(name), impl) for name in ISSUE_SETS for impl in (None, TENSOR_CORES)]
    return goals


def build_summary(meta: dict[str, Any], records: list[dict[str, Any]], work_dir: Path) -> dict[str, Any]:
    """The summary document: run metadata, one record per stage, the goals and every stage's result."""
    results = {r["stage"]: read_result(work_dir, r["stage"]) for r in records if r["status"] != "skipped"}
    return {"schema": SCHEMA, **meta, "stages": records, "goals": evaluate_goals(work_dir), "results": results}


def kernels_document(summary: dict[str, Any], work_dir: Path) -> dict[str, Any]:
    """``<prefix>_kernels.json``: the machine, ceilings, histogram, ncu and sanitizer results."""
    results = summary["results"]
    return {
        "schema": "deftx-gpucheck-kernels/1",
        "command": summary.get("command"),
        "environment": results.get("environment"),
        **{name: results.get(name) for name in ("ceilings", "histogram", "ncu", "sanitizer")},
    }


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(x).replace("|", "/") for x in row) + " |" for row in rows]
    return "\n".join(lines)


def stage_table(summary: dict[str, Any]) -> str:
    rows = [[s["stage"], s["status"], f"{s['seconds']:.1f} s", f"{s['budget_s']} s", s["headline"]]
            for s in summary["stages"]]
    return _table(["stage", "status", "time", "budget", "result"], rows)


def goal_table(summary: dict[str, Any]) -> str:
    rows = [[g["goal"], g["where"], g["target"], g["shown"], g["status"]] for g in summary["goals"]]
    return _table(["goal", "where", "target", "measured", "status"], rows)


def _histogram_section(result: dict[str, Any]) -> str:
    rows = [[r["dtype"], r["data"], r["kernel"], f"{r['gbps']:,.0f}" if "gbps" in r else r.get("error", "-"),
             f"{r['pct_of_copy']:.1f}%" if "pct_of_copy" in r else "-", str(r.get("top_bins_occupied", "-")),
             f"{r['list_over_k']:.2f}" if "list_over_k" in r else "-"]
            for r in result.get("rows", [])]
    head = (f"Copy bandwidth {result.get('copy_gbps', 0):,.0f} GB/s (read + write). GB/s below: bytes read once. "
            "List / k: the candidate list the sampled bracket gave, over k.")
    return head + "\n\n" + _table(["dtype", "data", "kernel", "GB/s", "% of copy", "top-digit bins used", "list / k"],
                                  rows)


def _stage_file(work_dir: Path, stage: str, name: str) -> str | None:
    path = work_dir / stage / name
    return path.read_text() if path.is_file() else None


def kernel_sections(results: dict[str, Any], work_dir: Path) -> list[str]:
    """Markdown sections of the kernel-level results: ceilings, histogram pass, ncu, sanitizer."""
    parts = []
    ceilings = results.get("ceilings") or {}
    if ceilings.get("headline"):
        parts += ["## Ceilings", ceilings["headline"]]
    if (results.get("histogram") or {}).get("rows"):
        parts += ["## Histogram pass micro-benchmark", _histogram_section(results["histogram"])]
    kernels_md = _stage_file(work_dir, "ncu", "kernels.md")
    if kernels_md:
        parts += ["## ncu (one launch of each kernel)", kernels_md]
    sanitizer = results.get("sanitizer") or {}
    if sanitizer.get("tools"):
        rows = [[tool, r["status"], str(r.get("errors")), str(r.get("hazards", "-")), ", ".join(r["cases_ran"]),
                 "; ".join(r["deftx_kernel_reports"][:3]) or "-"] for tool, r in sanitizer["tools"].items()]
        parts += ["## compute-sanitizer", _table(["tool", "status", "errors", "hazards", "cases run",
                                                   "reports naming deftx kernels"], rows)]
    return parts


def kernels_markdown(summary: dict[str, Any], work_dir: Path) -> str:
    """``<prefix>_kernels.md``: the machine and the kernel-level sections."""
    env = (summary["results"].get("environment") or {}).get("headline", "not recorded")
    parts = ["# deftx kernels on the GPU (measured)", f"Machine: {env}.",
             *kernel_sections(summary["results"], work_dir)]
    return "\n\n".join(parts) + "\n"


def render_markdown(summary: dict[str, Any], work_dir: Path) -> str:
    """The summary as markdown: stages, goals, then each stage's tables."""
    results = summary["results"]
    env = results.get("environment") or {}
    parts = [
        "# deftx GPU check",
        f"Command: `{summary.get('command', '')}`  \nStarted {summary.get('started', '')}, "
        f"{summary.get('elapsed_s', 0):.0f} s of a {summary.get('total_budget_s', 0):g} s budget; "
        f"device {summary.get('device')}, sizes {summary.get('sizes')}.",
    ]
    if env.get("headline"):
        parts.append(f"Machine: {env['headline']}.")
    parts += ["## Stages", stage_table(summary), "## Goals (issue #17)", goal_table(summary)]
    for stage in BENCH_STAGES:
        document = (results.get(stage) or {}).get("document")
        md = Path(document).with_suffix(".md") if document else None
        if md is not None and md.is_file():
            parts.append(md.read_text().replace("# deftx bench", "## Benchmark", 1))
    parts += kernel_sections(results, work_dir)
    tests = results.get("tests") or {}
    if tests:
        failed = tests.get("failed_tests") or []
        parts += ["## CUDA tests", tests.get("headline", "")
                  + ("\n\nFailed:\n" + "\n".join(f"- `{t}`" for t in failed) if failed else "")]
    training = results.get("training") or {}
    if training.get("checks"):
        rows = [["ok" if c["ok"] else "FAILED", c["check"], c["detail"]] for c in training["checks"]]
        parts += ["## Training loop", _table(["", "check", "detail"], rows)]
    return "\n\n".join(parts) + "\n"


def console_lines(summary: dict[str, Any]) -> list[str]:
    """What the command prints last (a device call returns the end of its output)."""
    lines = ["", "stages:"]
    for s in summary["stages"]:
        lines.append(f"  {s['stage']:12s} {s['status']:8s} {s['seconds']:6.1f} s  {s['headline']}")
    lines.append("goals:")
    for g in summary["goals"]:
        lines.append(f"  {g['status']:12s} {g['goal']} [{g['where']}]: {g['shown']} (target {g['target']})")
    return lines
