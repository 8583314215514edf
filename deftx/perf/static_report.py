"""The static report of ``deftx profile --static``: per kernel specialisation and per op.

Per specialisation (compiled for the target, no GPU): registers per thread, local memory
(spills), shared memory, the theoretical occupancy that follows, SASS instruction counts
by class and the violated checks. Per op: the roofline prediction for the shape set beside
the dense torch baseline's. Everything in it is PREDICTED from static analysis and
analytic models, never measured; both writers say so at the top.

The JSON document is the source of truth; the markdown is rendered from it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from deftx.perf.model_shapes import ShapeSet
from deftx.perf.roofline import OPS, predict
from deftx.perf.static.checks import check_build
from deftx.perf.static.compile import BuildFailure, KernelBuild, Registry, compile_all, declared_specializations
from deftx.perf.static.occupancy import theoretical_occupancy
from deftx.perf.targets import Target, get_target

LABEL = "PREDICTED: static analysis of the compiled kernels and analytic roofline models, not measurements"
REPORT_KIND = "deftx static kernel report"


def occupancy_of(build: KernelBuild) -> dict[str, Any]:
    """JSON-ready theoretical occupancy of a build (zero when a block cannot be resident;
    shared memory above the per-block limit is counted at the limit)."""
    target = build.target
    try:
        occupancy = theoretical_occupancy(
            target,
            num_warps=build.num_warps,
            registers_per_thread=build.registers,
            user_shared_bytes=min(build.user_shared_bytes, target.max_shared_per_block),
        )
    except ValueError as err:
        return {"blocks_per_sm": 0, "warps_per_sm": 0, "max_warps_per_sm": target.max_warps_per_sm,
                "fraction": 0.0, "limiter": f"not resident: {err}"}
    return {
        "blocks_per_sm": occupancy.blocks_per_sm,
        "warps_per_sm": occupancy.warps_per_sm,
        "max_warps_per_sm": occupancy.max_warps_per_sm,
        "fraction": occupancy.fraction,
        "limiter": occupancy.limiter,
    }


def kernel_row(build: KernelBuild) -> dict[str, Any]:
    """JSON-ready row of one compiled specialisation."""
    return {
        "name": build.name,
        "module": build.module,
        "function": build.function,
        "num_warps": build.num_warps,
        "num_stages": build.num_stages,
        "constexprs": build.constexprs,
        "promises": list(build.promises),
        "registers": build.registers,
        "spill_bytes": build.local_memory_bytes,
        "stack_bytes": build.stack_bytes,
        "local_bytes": build.local_bytes,
        "static_shared_bytes": build.static_shared_bytes,
        "dynamic_shared_bytes": build.dynamic_shared_bytes,
        "shared_bytes": build.user_shared_bytes,
        "occupancy": occupancy_of(build),
        "sass": build.sass.summary(),
        "violations": [str(v) for v in check_build(build)],
    }


def target_facts(target: Target) -> dict[str, Any]:
    return {
        "arch": target.arch,
        "gpu": target.gpu,
        "sm_count": target.sm_count,
        "hbm_bytes_per_s": target.hbm_bytes_per_s,
        "peak_flops": dict(target.peak_flops),
        "registers_per_sm": target.registers_per_sm,
        "max_warps_per_sm": target.max_warps_per_sm,
        "shared_per_sm": target.shared_per_sm,
        "max_shared_per_block": target.max_shared_per_block,
    }


def build_static_report(
    arch: str,
    shape_set: ShapeSet,
    *,
    ops: Sequence[str] = OPS,
    workers: int | None = None,
    registry: Registry | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Compile every declared specialisation for ``arch`` and predict ``ops`` on ``shape_set``.

    Returns the JSON-ready report (see :func:`write_report` for the files).
    """
    import triton

    import deftx

    target = get_target(arch)
    registry = registry if registry is not None else declared_specializations()
    results = compile_all(registry.specs, target.arch, workers=workers)
    builds = [r for r in results if isinstance(r, KernelBuild)]
    failures = [r for r in results if isinstance(r, BuildFailure)]
    predictions, skipped = predict(shape_set, tuple(ops))
    return {
        "kind": REPORT_KIND,
        "label": LABEL,
        "command": command or f"deftx profile --static --arch {target.arch} --shapes {shape_set.name}",
        "versions": {"deftx": deftx.__version__, "triton": triton.__version__},
        "target": target_facts(target),
        "kernel_modules": {
            "absent": list(registry.absent),
            "broken": dict(registry.broken),
            "without_specializations": list(registry.without_specs),
        },
        "kernels": [kernel_row(b) for b in builds],
        "compile_failures": [{"name": f.name, "module": f.module, "error": f.error} for f in failures],
        "shape_set": shape_set.summary(),
        "roofline": [p.as_dict(target) for p in predictions],
        "roofline_skipped": skipped,
    }


def _bits(counts: dict[str, int]) -> str:
    return " ".join(f"{n}x{bits}" for bits, n in counts.items()) or "-"


def _si(value: float, unit: str) -> str:
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:.0f} {unit}"


def _flops(cost: dict[str, Any]) -> str:
    return _si(cost["flops"], "FLOP") if cost["flop_precision"] else "-"


def _cell(text: str) -> str:
    """Table cell text with its pipes escaped."""
    return text.replace("|", "\\|")


def _time(seconds: float) -> str:
    if seconds >= 1:
        return f"{seconds:.3f} s"
    if seconds >= 1e-3:
        return f"{seconds * 1e3:.3f} ms"
    return f"{seconds * 1e6:.1f} us"


def _kernel_table(kernels: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| kernel | warps | regs/thread | spill B | shared B | occupancy (warps/SM) | limiter "
        "| global loads (count x bits) | global stores | atomics int/float | shared ld/st | MMA | violations |",
        "|---|---:|---:|---:|---:|---:|---|---|---|---|---|---|---|",
    ]
    for k in kernels:
        sass, occ = k["sass"], k["occupancy"]
        classes = sass["classes"]
        mma = ", ".join(f"{n}x {op}" for op, n in sass["mma"].items()) or "-"
        lines.append(
            f"| `{k['name']}` | {k['num_warps']} | {k['registers']} | {k['spill_bytes']} | {k['shared_bytes']} "
            f"| {occ['warps_per_sm']}/{occ['max_warps_per_sm']} ({occ['fraction']:.0%}) | {occ['limiter']} "
            f"| {_bits(sass['global_load_bits'])} | {_bits(sass['global_store_bits'])} "
            f"| {sass['global_atomics']['integer']}/{sass['global_atomics']['float']} "
            f"| {classes['shared_load']}/{classes['shared_store']} | {mma} "
            f"| {_cell('; '.join(k['violations'])) or 'none'} |"
        )
    return lines


def _roofline_table(rows: list[dict[str, Any]]) -> list[str]:
    lines = [
        "| op | workload | deftx bytes | deftx FLOPs | deftx time (bound) | baseline | baseline bytes "
        "| baseline FLOPs | baseline time (bound) | predicted speedup |",
        "|---|---|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    for r in rows:
        d, b = r["deftx"], r["baseline"]
        speedup = f"{r['predicted_speedup']:.2f}x" if r["predicted_speedup"] is not None else "-"
        lines.append(
            f"| {r['op']} | {_cell(r['workload'])} | {_si(d['bytes'], 'B')} | {_flops(d)} "
            f"| {_time(d['time_s'])} ({d['bound']}) | `{_cell(b['name'])}` | {_si(b['bytes'], 'B')} "
            f"| {_flops(b)} | {_time(b['time_s'])} ({b['bound']}) | {speedup} |"
        )
    return lines


def render_markdown(report: dict[str, Any]) -> str:
    """The markdown rendering of a report from :func:`build_static_report`."""
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
        *_kernel_table(kernels),
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
        *_roofline_table(report["roofline"]),
    ]
    if report["roofline_skipped"]:
        lines += ["", "Not predicted: " + "; ".join(f"{op} ({why})" for op, why in report["roofline_skipped"].items())]
    return "\n".join(lines) + "\n"


def report_stem(report: dict[str, Any]) -> str:
    """File name stem: ``static_<arch without _>_<shape set>`` (``static_sm90_xlmr-base``)."""
    return f"static_{report['target']['arch'].replace('_', '')}_{report['shape_set']['name']}"


def write_report(report: dict[str, Any], out_dir: str | Path) -> tuple[Path, Path]:
    """Write ``<stem>.json`` and ``<stem>.md`` into ``out_dir``; returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = report_stem(report)
    json_path, md_path = out / f"{stem}.json", out / f"{stem}.md"
    json_path.write_text(json.dumps(report, indent=1, sort_keys=False) + "\n")
    md_path.write_text(render_markdown(report))
    return json_path, md_path
