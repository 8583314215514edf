"""Scaling study: time and peak memory of each op vs model size (118M to 6.7B parameters) and vs K.

Size sweep: every built-in shape set from ``e5-small`` to ``llama-7b`` at one K. A set
whose inputs exceed the chunk budget is **streamed**: split into consecutive chunks of
at most ``chunk_numel`` parameters (whole tensors), each chunk generated, processed and
freed before the next; the reported time is the sum over chunks, the peak extra memory
that of the largest chunk (what a streaming run needs). For the per-tensor ops
(rsvd, scatter, step) this is the same work as one call over the whole set. Top-k is a
*global* selection: per chunk it selects ``K`` of that chunk, so a streamed top-k time
is that of a sharded selection (an exact global threshold over chunks needs one more
pass over the candidates, not measured).

Baselines (the primary one per op) run only on sets that fit in one chunk and are at
most ``baseline_max_numel`` parameters (a full SVD or a dense AdamW of 7B on 2 CPU cores
is out of reach; the rows say so).

K sweep: ``topk``, ``scatter``, ``step`` on one set at several K.
"""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import torch

from deftx.perf.cases import CaseSpec, auto_choice, dispatch_op, display_name, op_module
from deftx.perf.cases.base import deftx_impl
from deftx.perf.memory_probe import MemoryProber, measure_in_process, warmup_spec
from deftx.perf.roofline import measure_roofline
from deftx.perf.shapes import BUILTIN_SHAPE_SETS, ShapeSet, load_shape_set
from deftx.perf.suite import SCHEMA, describe_machine
from deftx.perf.timing import TimingSettings, time_interleaved

SCALING_SETS: tuple[str, ...] = tuple(BUILTIN_SHAPE_SETS)
PRIMARY_BASELINE: dict[str, str] = {"topk": "cat_topk", "rsvd": "svd_lowrank", "scatter": "index_add", "step": "adamw"}
K_SWEEP: tuple[float, ...] = (0.001, 0.003, 0.01, 0.03, 0.1)
K_SWEEP_OPS: tuple[str, ...] = ("topk", "scatter", "step")


@dataclass(frozen=True)
class ScalingConfig:
    """What ``deftx bench --scaling`` runs (see the module docstring).

    Timing: median of 3 calls per chunk (one call when it takes over 10 s), deftx and
    the baseline interleaved, after one warm-up call of every implementation on a tiny
    case at the start of the study.
    """

    sets: tuple[str, ...] = SCALING_SETS
    ops: tuple[str, ...] = ("topk", "rsvd", "scatter", "step")
    device: str = "cpu"
    dtype: str = "fp32"
    k_fraction: float = 0.01
    k_sweep: tuple[float, ...] = K_SWEEP
    k_sweep_set: str = "xlmr-base"
    chunk_numel: int = 1_000_000_000
    baseline_max_numel: int | None = 600_000_000
    rank: int = 32
    oversample: int = 8
    n_iter: int = 2
    memory: bool = True
    seed: int = 0
    timing: TimingSettings = field(
        default_factory=lambda: TimingSettings(warmup=0, min_repeats=3, max_repeats=3, min_time_s=0.0, long_call_s=10.0)
    )


def _spec(config: ScalingConfig, op: str, shapes: ShapeSet, k: float | None) -> CaseSpec:
    return CaseSpec(
        op=op,
        shapes=shapes,
        device=config.device,
        dtype=config.dtype,
        k_fraction=None if op == "rsvd" else k,
        seed=config.seed,
        rank=config.rank,
        oversample=config.oversample,
        n_iter=config.n_iter,
    )


def _timing(config: ScalingConfig, op: str) -> TimingSettings:
    """The configured timing; the step also gets one untimed call (it creates the dense state)."""
    if op == "step" and config.timing.warmup == 0:
        return replace(config.timing, warmup=1)
    return config.timing


def _time_streamed(specs: list[CaseSpec], impls: list[str], timing: TimingSettings) -> dict[str, tuple[float, float]]:
    """Per implementation, the sum over chunks of the median time and of the modelled bytes.

    The implementations are timed interleaved on each chunk's inputs.
    """
    totals = {impl: (0.0, 0.0) for impl in impls}
    for spec in specs:
        module = op_module(spec.op)
        inputs = module.make_inputs(spec)
        thunks = {impl: module.bind(impl, inputs) for impl in impls}
        measured = time_interleaved(thunks, spec.torch_device, timing)
        for impl, (timed, _) in measured.items():
            seconds, nbytes = totals[impl]
            totals[impl] = (seconds + timed.median_s, nbytes + module.traffic(impl, inputs).bytes)
        del inputs, thunks, measured
        gc.collect()
    return totals


def _peak(spec: CaseSpec, impl: str, prober: MemoryProber | None) -> int | None:
    if prober is None:
        return None
    if spec.torch_device.type == "cpu":
        return prober.measure(spec, impl).peak_extra_bytes
    inputs = op_module(spec.op).make_inputs(spec)
    return measure_in_process(spec, impl, inputs).peak_extra_bytes


def measure_point(
    config: ScalingConfig, op: str, shapes: ShapeSet, k: float | None, prober: MemoryProber | None
) -> dict[str, Any]:
    """deftx (auto backend) and, where allowed, the primary baseline on one set at one K."""
    chunks = shapes.chunks(config.chunk_numel) if shapes.numel > config.chunk_numel else [shapes]
    specs = [_spec(config, op, c, k) for c in chunks]
    device = torch.device(config.device)
    impl = deftx_impl(auto_choice(dispatch_op(op), device))
    timing = _timing(config, op)
    baseline = PRIMARY_BASELINE[op]
    fits = len(chunks) == 1 and (config.baseline_max_numel is None or shapes.numel <= config.baseline_max_numel)
    totals = _time_streamed(specs, [impl, baseline] if fits else [impl], timing)
    seconds, nbytes = totals[impl]
    largest = max(specs, key=lambda s: s.shapes.numel)
    row: dict[str, Any] = {
        "op": op,
        "shape_set": shapes.name,
        "parameters": shapes.numel,
        "k_fraction": None if op == "rsvd" else k,
        "chunks": len(chunks),
        "largest_chunk_parameters": largest.shapes.numel,
        "deftx": display_name(op, impl),
        "deftx_time_s": seconds,
        "deftx_gbps": nbytes / seconds / 1e9,
        "deftx_peak_extra_bytes": _peak(largest, impl, prober),
        "baseline": display_name(op, baseline),
    }
    if fits:
        row["baseline_time_s"] = totals[baseline][0]
        row["baseline_peak_extra_bytes"] = _peak(largest, baseline, prober)
    else:
        row["baseline_skipped"] = (
            f"not run above {config.baseline_max_numel:,} parameters or when streamed"
            if config.baseline_max_numel is not None
            else "not run when streamed"
        )
    return row


def _warm_up(config: ScalingConfig) -> None:
    """One call of every implementation on a tiny case: libraries loaded, thread pools up."""
    device = torch.device(config.device)
    tiny = ShapeSet("warmup", ())
    for op in config.ops:
        spec = warmup_spec(_spec(config, op, tiny, config.k_fraction))
        module = op_module(op)
        for impl in (deftx_impl(auto_choice(dispatch_op(op), device)), PRIMARY_BASELINE[op]):
            module.bind(impl, module.make_inputs(spec))()


def run_scaling(config: ScalingConfig, *, progress: bool = True, command: str | None = None,
                read: Mapping[str, ShapeSet] | None = None) -> dict[str, Any]:
    """Run the size sweep and the K sweep; returns the JSON document. ``read``: shape sets the caller has
    already read, by the name ``config`` gives them (others are loaded here)."""
    from tqdm.auto import tqdm

    read = read or {}
    sets = [read[name] if name in read else load_shape_set(name) for name in config.sets]
    sweep_set = read[config.k_sweep_set] if config.k_sweep_set in read else load_shape_set(config.k_sweep_set)
    sweep_ops = [op for op in K_SWEEP_OPS if op in config.ops]
    tasks = [("size", op, s, config.k_fraction) for s in sets for op in config.ops]
    tasks += [("k", op, sweep_set, k) for op in sweep_ops for k in config.k_sweep]
    device = torch.device(config.device)
    machine = describe_machine(device)
    roof = measure_roofline(device)
    _warm_up(config)
    size_rows, k_rows = [], []
    prober = MemoryProber() if config.memory else None
    for kind, op, shapes, k in tqdm(tasks, desc="deftx bench --scaling", disable=not progress, file=sys.stderr):
        row = measure_point(config, op, shapes, k, prober)
        (size_rows if kind == "size" else k_rows).append(row)
    return {
        "schema": SCHEMA,
        "kind": "scaling",
        "command": command,
        "machine": {**machine, "load_average_at_end": list(os.getloadavg())},
        "device": config.device,
        "config": {**asdict(config), "timing": asdict(config.timing)},
        "roofline": roof.to_json(),
        "streaming": (
            f"sets above {config.chunk_numel:,} parameters are streamed in chunks of whole tensors; time is "
            "summed over chunks, peak extra memory is the largest chunk's; a streamed top-k selects per chunk"
        ),
        "size_sweep": size_rows,
        "k_sweep": k_rows,
    }
