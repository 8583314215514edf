"""The static report of ``deftx profile --static``: per kernel specialisation and per op.

Per specialisation (compiled for the target, no GPU): registers per thread, local memory
(spills), shared memory, the theoretical occupancy that follows, SASS instruction counts
by class, the unmasked path of one iteration of its vector-load loop, and the violated
checks. Per op: the roofline prediction for the workload beside the dense torch baseline's.
Everything in it is PREDICTED from static analysis and analytic models, never measured; both
writers say so at the top.

This module builds the JSON document, the source of truth; :mod:`deftx.perf.report`
renders the markdown from it and writes both files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from deftx.perf.roofline import OPS, predict
from deftx.perf.static.checks import check_build
from deftx.perf.static.compile import BuildFailure, KernelBuild, Registry, compile_all, declared_specializations
from deftx.perf.static.occupancy import theoretical_occupancy
from deftx.perf.targets import Target, get_target
from deftx.perf.workload import Workload

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


TARGET_FACTS = (
    "arch",
    "gpu",
    "sm_count",
    "hbm_bytes_per_s",
    "peak_flops",
    "registers_per_sm",
    "max_warps_per_sm",
    "shared_per_sm",
    "max_shared_per_block",
)
"""The :class:`~deftx.perf.targets.Target` fields a report records, in its order."""


def target_facts(target: Target) -> dict[str, Any]:
    """JSON-ready :data:`TARGET_FACTS` of ``target`` (``peak_flops`` copied)."""
    facts = {name: getattr(target, name) for name in TARGET_FACTS}
    return {**facts, "peak_flops": dict(target.peak_flops)}


def build_static_report(
    arch: str,
    workload: Workload,
    *,
    ops: Sequence[str] = OPS,
    workers: int | None = None,
    registry: Registry | None = None,
    command: str | None = None,
) -> dict[str, Any]:
    """Compile every declared specialisation for ``arch`` and predict ``ops`` on ``workload``.

    Returns the JSON-ready report (:func:`deftx.perf.report.write_static_report` writes it).
    """
    import triton

    import deftx

    target = get_target(arch)
    registry = registry if registry is not None else declared_specializations()
    results = compile_all(registry.specs, target.arch, workers=workers)
    builds = [r for r in results if isinstance(r, KernelBuild)]
    failures = [r for r in results if isinstance(r, BuildFailure)]
    predictions, skipped = predict(workload, tuple(ops))
    return {
        "kind": REPORT_KIND,
        "label": LABEL,
        "command": command or f"deftx profile --static --arch {target.arch} --shapes {workload.name}",
        "versions": {"deftx": deftx.__version__, "triton": triton.__version__},
        "target": target_facts(target),
        "kernel_modules": {
            "absent": list(registry.absent),
            "broken": dict(registry.broken),
            "without_specializations": list(registry.without_specs),
        },
        "kernels": [kernel_row(b) for b in builds],
        "compile_failures": [{"name": f.name, "module": f.module, "error": f.error} for f in failures],
        "shape_set": workload.summary(),
        "roofline": [p.as_dict(target) for p in predictions],
        "roofline_skipped": skipped,
    }
