"""The benchmark suite: every op, on one shape set, deftx vs its baselines, measured in one run.

For each op and K: build the shared inputs once, time every implementation (deftx's
public op per backend, then the torch baselines), compute achieved GB/s and GFLOP/s
from the op's cost model, the % of the roof measured in the same run (memory-bound
ops against the copy bandwidth, rsvd against the fp32 matmul rate), and the peak extra
memory of ``bind`` + one call (:mod:`deftx.perf.memory`). The result is one JSON
document (schema ``deftx-bench/1``) that :mod:`deftx.perf.report` prints and plots.
"""

from __future__ import annotations

import gc
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

import deftx
from deftx.perf.cases import (
    CaseSpec,
    auto_choice,
    backend_of,
    dispatch_op,
    display_name,
    implementations,
    op_module,
    output_problem,
    runs_deftx_code,
)
from deftx.perf.memory import MemoryResult
from deftx.perf.memory_probe import MemoryProber, measure_in_process
from deftx.perf.overhead import count_host_overhead
from deftx.perf.roofline import Roofline, measure_roofline
from deftx.perf.shapes import ShapeSet
from deftx.perf.timing import Timing, TimingSettings, time_interleaved_isolating_errors

SCHEMA = "deftx-bench/1"
DEFAULT_K_FRACTIONS: tuple[float, ...] = (0.001, 0.01, 0.1)
STEP_K_FRACTION = 0.05
"""K at which the masked step is always measured (the issue's headline density)."""
K_FREE_OPS = frozenset({"rsvd", "scores"})
"""Ops whose cost does not depend on K (they run once, K = None)."""


@dataclass(frozen=True)
class SuiteConfig:
    """What ``deftx bench`` runs.

    Attributes:
        shapes: the (already scaled) shape set.
        ops: subset of ``topk, rsvd, scatter, step``.
        device: ``"cpu"`` or ``"cuda"``.
        dtype: dtype of the synthetic weights / scores.
        k_fractions: K values (share of all entries); ``step`` also runs at 5%.
        rank, oversample, n_iter: randomized SVD settings (deftx and ``svd_lowrank``).
        backends: restrict deftx's backends (None: every one that can run here).
        timing: repetitions per measurement (default: warm-up, then >= 3 calls and
            >= 0.5 s, a single timed call for calls over 10 s).
        memory: measure peak extra memory.
        check_outputs: before timing, check one call of each deftx implementation against an
            independent torch reference (:func:`deftx.perf.cases.output_problem`); a wrong one
            is an error row, not timed.
        seed: synthetic data seed.
        baselines: per op, the baseline implementations to run (an op missing from the
            mapping runs all of its baselines; an empty tuple runs none). The filter for
            baselines too slow for a shape set (``torch.linalg.svd`` over a 7B model's 226
            matrices takes minutes).
        op_k_fractions: per op, K values replacing ``k_fractions`` (e.g. the step at 5% only).
        count_overhead: on CUDA, count device->host syncs and kernel launches of one call of
            every deftx implementation (:func:`deftx.perf.overhead.count_host_overhead`).
        deadline: ``time.monotonic()`` past which no further case starts; the cases left
            are recorded as skipped rows.
        roofline_copy_bytes, roofline_matmul_n: sizes of the roof measurements (None: the
            per-device defaults of :mod:`deftx.perf.roofline`).
    """

    shapes: ShapeSet
    ops: tuple[str, ...] = ("topk", "rsvd", "scatter", "step")
    device: str = "cpu"
    dtype: str = "fp32"
    k_fractions: tuple[float, ...] = DEFAULT_K_FRACTIONS
    rank: int = 32
    oversample: int = 8
    n_iter: int = 2
    backends: tuple[str, ...] | None = None
    timing: TimingSettings = field(default_factory=lambda: TimingSettings(long_call_s=10.0))
    memory: bool = True
    check_outputs: bool = True
    seed: int = 0
    baselines: dict[str, tuple[str, ...]] | None = None
    op_k_fractions: dict[str, tuple[float, ...]] | None = None
    count_overhead: bool = False
    deadline: float | None = None
    roofline_copy_bytes: int | None = None
    roofline_matmul_n: int | None = None

    def k_values(self, op: str) -> list[float | None]:
        """The K fractions ``op`` runs at (rsvd and scores: none; step: also 5%)."""
        if op in K_FREE_OPS:
            return [None]
        if self.op_k_fractions and op in self.op_k_fractions:
            return sorted(set(self.op_k_fractions[op]))
        ks = set(self.k_fractions) | ({STEP_K_FRACTION} if op == "step" else set())
        return sorted(ks)

    def implementations(self, op: str, device: torch.device) -> list[str]:
        """deftx's backends, then the baselines the ``baselines`` filter keeps."""
        impls = implementations(op, device, self.backends)
        if self.baselines is None or op not in self.baselines:
            return impls
        kept = self.baselines[op]
        return [i for i in impls if backend_of(i) is not None or i in kept]

    def specs(self) -> list[CaseSpec]:
        """One case per (op, K), in op order."""
        return [
            CaseSpec(
                op=op,
                shapes=self.shapes,
                device=self.device,
                dtype=self.dtype,
                k_fraction=k,
                seed=self.seed,
                rank=self.rank,
                oversample=self.oversample,
                n_iter=self.n_iter,
            )
            for op in self.ops
            for k in self.k_values(op)
        ]


def describe_machine(device: torch.device) -> dict[str, Any]:
    """Host, CPU, memory, versions, and the GPU when the run is on CUDA."""
    info: dict[str, Any] = {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "deftx": deftx.__version__,
        "cpu": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "memory_bytes": _total_memory(),
        "load_average_at_start": list(os.getloadavg()),
    }
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = props.name
        info["gpu_memory_bytes"] = props.total_memory
        info["cuda"] = torch.version.cuda
    return info


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _total_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _finite_or_none(x: float) -> float | None:
    return x if math.isfinite(x) else None


def _row_identity(spec: CaseSpec, impl: str) -> dict[str, Any]:
    """The fields naming a result row: op, implementation, its role and backend, K."""
    return {
        "op": spec.op,
        "impl": impl,
        "name": display_name(spec.op, impl),
        "role": "deftx" if backend_of(impl) is not None else "baseline",
        "backend": backend_of(impl),
        "k_fraction": spec.k_fraction,
    }


def first_quality(spec: CaseSpec, inputs: Any) -> Callable[[str, object], dict[str, float] | Exception]:
    """What :func:`run_case` keeps of an implementation's first result: its quality figures (the case
    module's ``quality``; none for a result of None), or the exception that computing them raised.

    The result itself is dropped once they are computed: a scores case of Llama-2-7B returns 25 GiB
    of fp32 scores per implementation, and keeping every implementation's while the others were timed
    held four of them beside the 25 GiB of inputs (125 GiB on the device).
    """
    module = op_module(spec.op)

    def keep(impl: str, output: object) -> dict[str, float] | Exception:
        if output is None:
            return {}
        try:
            return module.quality(impl, inputs, output)
        except Exception as err:  # e.g. out of memory: the row says so (run_case), the case goes on
            return err

    return keep


def _result_row(
    spec: CaseSpec, impl: str, inputs: Any, measured: Timing, quality: dict[str, float] | Exception, roof: Roofline
) -> dict[str, Any]:
    """The result row of one timed implementation (memory added later), with the quality figures of its
    first result (:func:`first_quality`; an exception computing them is raised here)."""
    if isinstance(quality, Exception):
        raise quality
    module = op_module(spec.op)
    cost = module.traffic(impl, inputs)
    seconds = measured.median_s
    gbps = cost.bytes / seconds / 1e9
    gflops = cost.flops / seconds / 1e9
    roofline = getattr(module, "roofline_of", lambda impl: module.ROOFLINE)(impl)
    achieved, roof_value = (gflops, roof.matmul_gflops) if roofline == "compute" else (gbps, roof.copy_gbps)
    return {
        **_row_identity(spec, impl),
        "selected": module.selected(inputs),
        "time_s": seconds,
        "time_min_s": measured.min_s,
        "samples_s": list(measured.samples),
        "bytes": cost.bytes,
        "flops": cost.flops,
        "cost_model": cost.model,
        "gbps": _finite_or_none(gbps),
        "gflops": _finite_or_none(gflops),
        "roofline": roofline,
        "roofline_pct": _finite_or_none(100.0 * achieved / roof_value),
        **quality,
    }


def checked_outputs(spec: CaseSpec, impls: Iterable[str], inputs: Any) -> tuple[dict[str, str], dict[str, str]]:
    """Check one call of each deftx implementation among ``impls`` against its torch reference.

    Returns ``(wrong, unchecked)``: implementation -> what is wrong with its output, and
    implementation -> why its check could not run (e.g. the reference ran out of memory: the
    implementation is still timed, its row says it is unchecked).
    """
    wrong, unchecked = {}, {}
    for impl in impls:
        if not runs_deftx_code(spec.op, impl):
            continue
        try:
            problem = output_problem(spec.op, impl, inputs)
        except Exception as err:  # the check could not run at this size: recorded, the case goes on
            unchecked[impl] = f"{type(err).__name__}: {err}"
        else:
            if problem is not None:
                wrong[impl] = problem
        _free_device_memory(spec.torch_device)
    return wrong, unchecked


def _error_row(spec: CaseSpec, impl: str, err: Exception | str) -> dict[str, Any]:
    message = err if isinstance(err, str) else f"{type(err).__name__}: {err}"
    return {**_row_identity(spec, impl), "error": message}


def _set_memory(row: dict[str, Any], measure: Callable[[], MemoryResult]) -> None:
    try:
        result = measure()
    except Exception as err:  # a failed probe is recorded, the run goes on
        row["memory_error"] = f"{type(err).__name__}: {err}"
        return
    row["peak_extra_bytes"] = result.peak_extra_bytes
    row["memory_method"] = result.method


def _free_device_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def run_case(
    spec: CaseSpec,
    impls: Iterable[str],
    timing: TimingSettings,
    roof: Roofline,
    prober: MemoryProber | None,
    tick: Callable[[str], None] = lambda _: None,
    count_overhead: bool = False,
    check_outputs: bool = True,
) -> list[dict[str, Any]]:
    """Time every implementation on one set of inputs (interleaved), then measure their memory.

    With ``check_outputs``, each deftx implementation's output is checked first
    (:func:`checked_outputs`): a wrong one is an error row (``wrong_output``) and is not timed;
    each checked row has ``output_check`` ``"ok"`` or why its check did not run. An
    implementation that fails (when bound or called: out of memory, an index limit) is a row
    with its ``error``; inputs that cannot be built make every row such a row. On CPU the
    inputs are freed before the probes, whose worker builds its own copy, so the two processes
    never hold them at once.
    """
    impls = list(impls)
    module = op_module(spec.op)
    try:
        inputs = module.make_inputs(spec)
    except Exception as err:  # e.g. out of memory at this size: every implementation's row says so
        _free_device_memory(spec.torch_device)
        return [_error_row(spec, impl, f"inputs: {type(err).__name__}: {err}") for impl in impls]
    thunks: dict[str, Callable[[], object]] = {}
    failed: dict[str, dict[str, Any]] = {}
    wrong, unchecked = checked_outputs(spec, impls, inputs) if check_outputs else ({}, {})
    for impl, problem in wrong.items():
        failed[impl] = {**_error_row(spec, impl, f"wrong output: {problem}"), "wrong_output": True}
    for impl in impls:
        if impl in failed:
            continue
        try:
            thunks[impl] = module.bind(impl, inputs)
        except Exception as err:  # e.g. an optimizer variant torch lacks here: recorded
            failed[impl] = _error_row(spec, impl, err)
    tick(f"{spec.op} K={spec.k_fraction} timing {len(thunks)} implementations")
    measured, errors = time_interleaved_isolating_errors(thunks, spec.torch_device, timing,
                                                         keep_first=first_quality(spec, inputs))
    failed.update({impl: _error_row(spec, impl, err) for impl, err in errors.items()})
    overhead = {}
    if count_overhead:
        overhead = {
            impl: count_host_overhead(thunk, spec.torch_device)
            for impl, thunk in thunks.items()
            if impl in measured and backend_of(impl) is not None
        }
    thunks.clear()
    rows = []
    for impl in impls:
        if impl in failed:
            rows.append(failed[impl])
            continue
        timed, quality = measured.pop(impl)
        try:
            row = _result_row(spec, impl, inputs, timed, quality, roof)
        except Exception as err:  # e.g. the quality check runs out of memory: the row says so, the case goes on
            rows.append(_error_row(spec, impl, f"result: {type(err).__name__}: {err}"))
            continue
        if overhead.get(impl) is not None:
            row["host_overhead"] = overhead[impl]
        if check_outputs and runs_deftx_code(spec.op, impl):
            row["output_check"] = f"not run: {unchecked[impl]}" if impl in unchecked else "ok"
        if prober is not None and spec.torch_device.type != "cpu":
            _set_memory(row, lambda impl=impl, inputs=inputs: measure_in_process(spec, impl, inputs))
        rows.append(row)
    measured.clear()
    del inputs
    _free_device_memory(spec.torch_device)
    if prober is not None and spec.torch_device.type == "cpu":
        for row in rows:
            if "error" not in row:
                tick(f"{spec.op} {row['name']} (memory)")
                _set_memory(row, lambda impl=row["impl"]: prober.measure(spec, impl))
    return rows


def comparisons(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every deftx row against every baseline row of the same (op, K): the speedup table."""
    out = []
    for d in rows:
        if d["role"] != "deftx" or "error" in d:
            continue
        for b in rows:
            if b["role"] != "baseline" or "error" in b or (b["op"], b["k_fraction"]) != (d["op"], d["k_fraction"]):
                continue
            entry = {
                "op": d["op"],
                "k_fraction": d["k_fraction"],
                "deftx": d["name"],
                "auto": d.get("auto", False),
                "baseline": b["name"],
                "deftx_time_s": d["time_s"],
                "baseline_time_s": b["time_s"],
                "speedup": b["time_s"] / d["time_s"],
                "gbps": d["gbps"],
                "roofline_pct": d["roofline_pct"],
                "roofline": d["roofline"],
                "deftx_peak_extra_bytes": d.get("peak_extra_bytes"),
                "baseline_peak_extra_bytes": b.get("peak_extra_bytes"),
            }
            for quality in ("relative_error", "score_error"):
                if quality in d:
                    entry[f"deftx_{quality}"] = d[quality]
                    entry[f"baseline_{quality}"] = b.get(quality)
            out.append(entry)
    return out


def skipped_rows(spec: CaseSpec, impls: Iterable[str], reason: str) -> list[dict[str, Any]]:
    """Rows of a case that did not run (e.g. past the suite's deadline)."""
    return [{**_row_identity(spec, impl), "skipped": reason} for impl in impls]


def run_suite(
    config: SuiteConfig,
    *,
    progress: bool = True,
    command: str | None = None,
    on_case: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the suite; returns the JSON document (see the module docstring).

    ``on_case`` receives the document as it stands after the roofline and after every case
    (rows so far), so a caller can write partial results before a time limit kills it.
    """
    from tqdm.auto import tqdm

    device = torch.device(config.device)
    machine = describe_machine(device)
    specs = config.specs()
    plans = [(spec, config.implementations(spec.op, device)) for spec in specs]
    total = sum(1 + (len(impls) if config.memory else 0) for _, impls in plans) + 1
    rows: list[dict[str, Any]] = []
    doc = _document(config, command, machine, None, rows)
    with tqdm(total=total, desc="deftx bench", disable=not progress, file=sys.stderr) as bar:

        def tick(label: str) -> None:
            bar.set_postfix_str(label)
            bar.update(1)

        bar.set_postfix_str("roofline")
        roof = measure_roofline(device, copy_bytes=config.roofline_copy_bytes, matmul_n=config.roofline_matmul_n)
        doc["roofline"] = roof.to_json()
        bar.update(1)
        prober = MemoryProber() if config.memory else None
        for spec, impls in plans:
            if config.deadline is not None and time.monotonic() > config.deadline:
                rows.extend(skipped_rows(spec, impls, "not run: the suite's time budget was spent"))
                continue
            case_rows = run_case(spec, impls, config.timing, roof, prober, tick, config.count_overhead,
                                 config.check_outputs)
            auto = auto_choice(dispatch_op(spec.op), device)
            for row in case_rows:
                row["auto"] = row.get("backend") == auto
            rows.extend(case_rows)
            if on_case is not None:
                on_case(_finish(doc))
    return _finish(doc)


def _finish(doc: dict[str, Any]) -> dict[str, Any]:
    """The document with its end-of-run fields (load average, comparisons) brought up to date."""
    doc["machine"]["load_average_at_end"] = list(os.getloadavg())
    measured = [r for r in doc["results"] if "skipped" not in r]
    doc["comparisons"] = comparisons(measured)
    return doc


def _document(
    config: SuiteConfig, command: str | None, machine: dict[str, Any], roof: Roofline | None, rows: list
) -> dict[str, Any]:
    return {
        "schema": SCHEMA,
        "command": command,
        "machine": machine,
        "device": config.device,
        "config": {
            "ops": list(config.ops),
            "dtype": config.dtype,
            "k_fractions": list(config.k_fractions),
            "step_k_fraction": STEP_K_FRACTION,
            "op_k_fractions": {op: list(ks) for op, ks in (config.op_k_fractions or {}).items()},
            "baselines": {op: list(b) for op, b in config.baselines.items()} if config.baselines else None,
            "rank": config.rank,
            "oversample": config.oversample,
            "n_iter": config.n_iter,
            "backends": list(config.backends) if config.backends else None,
            "timing": {k: _finite_or_none(v) if isinstance(v, float) else v for k, v in asdict(config.timing).items()},
            "memory": config.memory,
            "check_outputs": config.check_outputs,
            "count_overhead": config.count_overhead,
            "seed": config.seed,
        },
        "shape_set": {
            "name": config.shapes.name,
            "parameters": config.shapes.numel,
            "tensors": len(config.shapes.flat()),
            "note": config.shapes.note or "full set",
        },
        "roofline": roof.to_json() if roof is not None else None,
        "results": rows,
        "comparisons": [],
    }
