"""Runtime profiles: torch.profiler traces of the ops and of a training step, summarised.

What is profiled (``target``):

* ``topk``, ``rsvd``, ``scatter``, ``step``: one public op on synthetic weights of a shape
  set (a :mod:`deftx.perf.workload`; default ``tiny``): the global top-K, the DeFT-X
  scores (randomized SVD + ``|U S Vh|``) of every matrix, composing ``num_diffs`` SFTs
  (and reverting them), one masked AdamW step on the K entries;
* ``train-step``: one step of each phase of a sparse fine-tuning of a tiny randomly
  initialised BERT classifier: a full fine-tuning step, the selection (DeFT-X scores of
  every matrix, global top-K), a sparse step (masked AdamW) and composing the resulting SFT
  onto a fresh model and reverting it.

Every deftx op call runs inside a ``torch.profiler.record_function`` range named
``deftx.<op>`` and every phase inside ``deftx.phase.<name>``, so the trace shows which
Triton kernels (on CUDA) or backend calls (native / torch on CPU) belong to which op. Each
range ends after a device synchronize, so its host time is the time of its work.

Outputs in ``out_dir``: ``trace_<target>.json`` (Chrome trace: open in ui.perfetto.dev or
chrome://tracing) and ``profile_<target>.json`` / ``.md``: per range and per kernel the
time, calls, and for the deftx ops the bytes the op's model says it moves with the
achieved bandwidth and FLOP/s (measured time, modelled bytes).
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from deftx.perf.roofline import (
    Cost,
    masked_step_prediction,
    reconstruct_prediction,
    rsvd_prediction,
    scatter_prediction,
    spread_entries,
    topk_prediction,
)
from deftx.perf.workload import Workload, load_workload
from deftx.text import short_repr, strict_json_file

TARGETS: tuple[str, ...] = ("topk", "rsvd", "scatter", "step", "train-step")
RANGE_PREFIX = "deftx."
TOP_KERNELS = 25
"""Kernels / aten ops listed in the summary, by total self time."""


@dataclass(frozen=True)
class TraceConfig:
    """What to profile and how (also the JSON config file format: the same keys).

    Attributes:
        target: one of :data:`TARGETS`.
        shapes: shape set name or JSON file (op targets; ``train-step`` builds its model).
        device: ``"cpu"`` or ``"cuda"``.
        backend: ``"auto"`` / ``"triton"`` / ``"native"`` / ``"torch"`` or None ($DEFTX_BACKEND).
        iterations: profiled repetitions; warmup: unprofiled repetitions before them (Triton
            compiles on the first call).
        seed: synthetic weights and batches.
        k_fraction, rank: override the shape set's settings when given.
    """

    target: str = "train-step"
    shapes: str = "tiny"
    device: str = "cpu"
    backend: str | None = None
    iterations: int = 1
    warmup: int = 1
    seed: int = 0
    k_fraction: float | None = None
    rank: int | None = None

    def __post_init__(self) -> None:
        if self.target not in TARGETS:
            raise ValueError(f"unknown profile target {self.target!r}; known: {', '.join(TARGETS)}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")
        if self.device == "cuda" and not torch.cuda.is_available():
            raise ValueError("device 'cuda' requested but torch.cuda.is_available() is False")
        for name, low in (("iterations", 1), ("warmup", 0), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {short_repr(value)}")

    def workload(self) -> Workload:
        overrides = {k: v for k, v in (("k_fraction", self.k_fraction), ("rank", self.rank)) if v is not None}
        return load_workload(self.shapes, **overrides)


def load_trace_config(path: str | Path, **overrides: Any) -> TraceConfig:
    """A :class:`TraceConfig` from a JSON object with its field names; ``overrides`` win.

    Raises:
        ValueError: the file is not UTF-8 JSON, holds a key twice, is not an object of those names, or
            holds a value :class:`TraceConfig` refuses (each naming the file).
    """
    payload = strict_json_file(path)
    known = {f.name for f in fields(TraceConfig)}
    if not isinstance(payload, dict) or set(payload) - known:
        raise ValueError(f"{path}: expected a JSON object with keys from {sorted(known)}")
    try:
        config = TraceConfig(**payload)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from err
    return replace(config, **{k: v for k, v in overrides.items() if v is not None})


@dataclass
class OpRun:
    """A prepared op: ``run()`` executes it once; ``cost`` is its model (None: not modelled)."""

    name: str
    run: Callable[[], None]
    cost: Cost | None


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _op_range(name: str, device: torch.device) -> Iterator[None]:
    """A ``record_function(name)`` range that ends when the device is done: its host time is the
    work's, not only its launches' (CUDA calls return before their kernels run)."""
    with record_function(name):
        yield
        _synchronize(device)


def _ranged(name: str, fn: Callable[[], Any], device: torch.device) -> Callable[[], Any]:
    """``fn`` inside an :func:`_op_range` named ``name``."""

    def run() -> Any:
        with _op_range(name, device):
            return fn()

    return run


def synthetic_weights(workload: Workload, device: torch.device, seed: int) -> list[torch.Tensor]:
    """Gaussian weights (std 0.02) of every eligible parameter, in the set's dtype."""
    generator = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(p.shape, generator=generator) * 0.02).to(device, workload.torch_dtype)
        for p in workload.eligible
    ]


def _random_indices(numel: int, count: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randperm(numel, generator=generator)[:count].sort().values


def topk_runs(workload: Workload, device: torch.device, backend: str | None, seed: int) -> list[OpRun]:
    from deftx.ops import topk_mask

    weights = synthetic_weights(workload, device, seed)
    k = workload.k
    run = _ranged("deftx.topk", lambda: topk_mask(weights, k, output="indices", backend=backend), device)
    return [OpRun("deftx.topk", run, topk_prediction(workload).deftx)]


def rsvd_runs(workload: Workload, device: torch.device, backend: str | None, seed: int) -> list[OpRun]:
    from deftx.ops import denoised_magnitudes

    s = workload.settings
    bases = synthetic_weights(workload, device, seed)
    generator = torch.Generator().manual_seed(seed + 1)
    tuned = [w + 0.01 * torch.randn(w.shape, generator=generator).to(device, w.dtype) for w in bases]
    pairs = [(w1, w0) for w1, w0, p in zip(tuned, bases, workload.eligible, strict=True) if len(p.shape) == 2]

    def scores() -> None:
        for w1, w0 in pairs:
            rank = min(s.rank, *w1.shape)
            denoised_magnitudes(w1, w0, rank=rank, oversample=s.oversample, n_iter=s.n_iter, backend=backend)

    cost = rsvd_prediction(workload).deftx
    recon = reconstruct_prediction(workload).deftx
    total = Cost(cost.bytes + recon.bytes, cost.flops + recon.flops, "fp32")
    return [OpRun("deftx.rsvd", _ranged("deftx.rsvd", scores, device), total)]


def scatter_runs(workload: Workload, device: torch.device, backend: str | None, seed: int) -> list[OpRun]:
    from deftx.ops import scatter_add_, scatter_restore_

    generator = torch.Generator().manual_seed(seed)
    dense = synthetic_weights(workload, device, seed)
    nnz = spread_entries([p.numel for p in workload.eligible], workload.k)
    diffs = workload.settings.num_diffs
    indices = [[_random_indices(w.numel(), c, generator).to(device) for w, c in zip(dense, nnz, strict=True)]
               for _ in range(diffs)]
    values = [[torch.randn(c, generator=generator).to(device) * 1e-3 for c in nnz] for _ in range(diffs)]
    saved: list[list[torch.Tensor]] = []

    def add() -> None:
        saved[:] = scatter_add_(dense, indices, values, [1.0] * diffs, save=True, backend=backend)

    def restore() -> None:
        scatter_restore_(dense, indices, saved, backend=backend)

    return [
        OpRun("deftx.scatter_add", _ranged("deftx.scatter_add", add, device), scatter_prediction(workload).deftx),
        OpRun("deftx.scatter_restore", _ranged("deftx.scatter_restore", restore, device), None),
    ]


def step_runs(workload: Workload, device: torch.device, backend: str | None, seed: int) -> list[OpRun]:
    from deftx.ops import masked_adamw_step_

    generator = torch.Generator().manual_seed(seed)
    params = synthetic_weights(workload, device, seed)
    grads = [torch.randn(w.shape, generator=generator).to(device, w.dtype) for w in params]
    nnz = spread_entries([w.numel() for w in params], workload.k)
    indices = [_random_indices(w.numel(), c, generator).to(device) for w, c in zip(params, nnz, strict=True)]
    masters = [w.reshape(-1)[i].float() for w, i in zip(params, indices, strict=True)]
    exp_avgs = [torch.zeros_like(m) for m in masters]
    exp_avg_sqs = [torch.zeros_like(m) for m in masters]
    bases = [m.clone() for m in masters] if workload.settings.l1 else None
    l1 = 1e-4 if workload.settings.l1 else 0.0
    step = [0]

    def run() -> None:
        step[0] += 1
        masked_adamw_step_(params, grads, indices, masters, exp_avgs, exp_avg_sqs, bases,
                           step=step[0], lr=1e-4, weight_decay=0.01, l1=l1, backend=backend)

    return [OpRun("deftx.masked_step", _ranged("deftx.masked_step", run, device),
                  masked_step_prediction(workload).deftx)]


def _tiny_classifier(device: torch.device, seed: int) -> torch.nn.Module:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=256, max_position_embeddings=128, num_labels=3)
    return BertForSequenceClassification(config).to(device)


def train_step_runs(workload: Workload, device: torch.device, backend: str | None, seed: int) -> list[OpRun]:
    """The four phases of a sparse fine-tuning, one step each, on a tiny BERT classifier.

    K and the rank come from ``workload.settings``; the model itself is fixed (the ``tiny``
    shape set describes its body).
    """
    from deftx.ops import denoised_magnitudes, masked_adamw_step_, topk_mask
    from deftx.sft import SparseDiff, apply_diffs

    model = _tiny_classifier(device, seed)
    generator = torch.Generator().manual_seed(seed)
    batch = {
        "input_ids": torch.randint(0, 1000, (8, 32), generator=generator).to(device),
        "labels": torch.randint(0, 3, (8,), generator=generator).to(device),
    }
    eligible = [n for n, _ in model.named_parameters() if n.startswith("bert.") and "LayerNorm" not in n]
    params = dict(model.named_parameters())
    theta0 = {n: params[n].detach().clone() for n in eligible}
    s = workload.settings
    k = max(1, round(s.k_fraction * sum(theta0[n].numel() for n in eligible)))
    dense_optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    selected: dict[str, torch.Tensor] = {}
    state: dict[str, list[torch.Tensor]] = {}

    def full_step() -> None:
        dense_optimizer.zero_grad()
        model(**batch).loss.backward()
        dense_optimizer.step()

    def selection() -> None:
        scores = []
        for name in eligible:
            w1 = params[name].detach()
            if w1.dim() == 2:
                rank = min(s.rank, *w1.shape)
                with _op_range("deftx.rsvd", device):
                    scores.append(denoised_magnitudes(w1, theta0[name], rank=rank, backend=backend))
            else:
                scores.append((w1 - theta0[name]).abs())
        with _op_range("deftx.topk", device):
            chosen = topk_mask(scores, k, output="indices", backend=backend)
        selected.update(zip(eligible, chosen, strict=True))
        with torch.no_grad():
            for name in eligible:
                params[name].copy_(theta0[name])
        state["masters"] = [theta0[n].reshape(-1)[selected[n]].float() for n in eligible]
        state["m"] = [torch.zeros_like(x) for x in state["masters"]]
        state["v"] = [torch.zeros_like(x) for x in state["masters"]]

    def sparse_step() -> None:
        model.zero_grad()
        model(**batch).loss.backward()
        with _op_range("deftx.masked_step", device), torch.no_grad():
            masked_adamw_step_(
                [params[n].detach() for n in eligible], [params[n].grad for n in eligible],
                [selected[n] for n in eligible], state["masters"], state["m"], state["v"],
                step=1, lr=1e-3, backend=backend,
            )

    def compose() -> None:
        tuned = {n: params[n].detach() for n in eligible}
        diff = SparseDiff.from_states(theta0, tuned, selected, k=k, method="profile")
        fresh = copy.deepcopy(model)
        with torch.no_grad():
            for name, p in fresh.named_parameters():
                if name in theta0:
                    p.copy_(theta0[name])
        with _op_range("deftx.scatter_add", device):
            handle = apply_diffs(fresh, [diff], check_base=False, backend=backend)
        with _op_range("deftx.scatter_restore", device):
            handle.revert()

    phases = (("full_step", full_step), ("selection", selection), ("sparse_step", sparse_step), ("compose", compose))
    return [OpRun(f"deftx.phase.{name}", _ranged(f"deftx.phase.{name}", fn, device), None) for name, fn in phases]


RUNNERS: dict[str, Callable[[Workload, torch.device, str | None, int], list[OpRun]]] = {
    "topk": topk_runs,
    "rsvd": rsvd_runs,
    "scatter": scatter_runs,
    "step": step_runs,
    "train-step": train_step_runs,
}


def _self_time_us(event: Any, device: torch.device) -> float:
    """Self time of a profiler event: on the device for CUDA runs, on the host otherwise."""
    return float(event.self_device_time_total if device.type == "cuda" else event.self_cpu_time_total)


def _is_device_annotation(event: Any) -> bool:
    """A ``record_function`` range's copy on the device timeline (kineto's ``gpu_user_annotation``):
    its span, not work of its own; torch's tables leave it out."""
    return bool(event.is_user_annotation) and event.device_type.name != "CPU"


def summarize(prof: profile, runs: Sequence[OpRun], device: torch.device) -> list[dict[str, Any]]:
    """Rows of the per-range and per-kernel summary.

    ``deftx.*`` ranges: host wall time of the range (it ends after a device synchronize),
    calls, and for modelled ops bytes per call with the achieved GB/s, and FLOPs per call with the
    achieved GFLOP/s where the op has a FLOP model (None where it has none: topk, scatter).
    Then the :data:`TOP_KERNELS` kernels (CUDA: device time) or aten / backend calls (CPU:
    self CPU time) with the largest total. The device-side copies of ranges (CUDA) are left out.
    """
    costs = {r.name: r.cost for r in runs}
    averages = [e for e in prof.key_averages() if not _is_device_annotation(e)]
    rows: list[dict[str, Any]] = []
    for event in averages:
        if not event.key.startswith(RANGE_PREFIX):
            continue
        total_us = float(event.cpu_time_total)
        cost = costs.get(event.key)
        mean_s = total_us / 1e6 / event.count
        row = {"name": event.key, "kind": "phase" if ".phase." in event.key else "deftx op",
               "calls": event.count, "total_ms": total_us / 1e3, "mean_ms": mean_s * 1e3,
               "bytes_per_call": None, "achieved_gb_per_s": None, "flops_per_call": None,
               "achieved_gflop_per_s": None}
        if cost is not None and mean_s > 0:
            row.update(bytes_per_call=round(cost.bytes), achieved_gb_per_s=cost.bytes / mean_s / 1e9)
        if cost is not None and cost.precision is not None and mean_s > 0:
            row.update(flops_per_call=round(cost.flops), achieved_gflop_per_s=cost.flops / mean_s / 1e9)
        rows.append(row)
    kernels = [e for e in averages if not e.key.startswith(RANGE_PREFIX) and not e.key.startswith("ProfilerStep")]
    if device.type == "cuda":
        kernels = [e for e in kernels if _self_time_us(e, device) > 0 and e.device_type.name == "CUDA"]
    kernels.sort(key=lambda e: _self_time_us(e, device), reverse=True)
    for event in kernels[:TOP_KERNELS]:
        total_us = _self_time_us(event, device)
        rows.append({"name": event.key, "kind": "kernel" if device.type == "cuda" else "cpu op",
                     "calls": event.count, "total_ms": total_us / 1e3, "mean_ms": total_us / 1e3 / event.count,
                     "bytes_per_call": None, "achieved_gb_per_s": None, "flops_per_call": None,
                     "achieved_gflop_per_s": None})
    return rows


def _milliseconds(ms: float) -> str:
    """``12.345``: three decimals, and two significant digits under 0.001 ms (``0.00048``, never ``0.000``)."""
    return f"{ms:.3f}" if ms >= 1e-3 or ms == 0 else f"{ms:.2g}"


def render_summary(summary: dict[str, Any]) -> str:
    """Markdown table of :func:`profile_target`'s summary."""
    lines = [
        f"# Runtime profile: {summary['target']} on {summary['device']} (measured)",
        "",
        f"Shape set `{summary['shapes']}`, backend `{summary['backend']}`, {summary['iterations']} profiled "
        f"iteration(s) after {summary['warmup']} warm-up. Bytes / FLOPs are the ops' analytic models; GB/s and "
        "GFLOP/s divide them by the measured time. Trace: " + f"`{summary['trace']}`.",
        "",
        "| name | kind | calls | total ms | mean ms | bytes/call | GB/s | GFLOP/s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]

    def fmt(value: float | None, spec: str) -> str:
        return "-" if value is None else format(value, spec)

    for r in summary["rows"]:
        lines.append(
            f"| `{r['name']}` | {r['kind']} | {r['calls']} | {_milliseconds(r['total_ms'])} "
            f"| {_milliseconds(r['mean_ms'])} "
            f"| {fmt(r['bytes_per_call'], ',')} | {fmt(r['achieved_gb_per_s'], '.2f')} "
            f"| {fmt(r['achieved_gflop_per_s'], '.2f')} |"
        )
    return "\n".join(lines) + "\n"


def profile_target(config: TraceConfig, out_dir: str | Path) -> dict[str, Any]:
    """Profile ``config.target``; write the Chrome trace and the summary (JSON + markdown).

    Returns the summary: ``target``, ``device``, ``shapes``, ``backend``, ``iterations``,
    ``warmup``, ``trace`` (path), ``rows`` (see :func:`summarize`), ``files``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(config.device)
    workload = config.workload()
    runs = RUNNERS[config.target](workload, device, config.backend, config.seed)
    for _ in range(config.warmup):
        for r in runs:
            r.run()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=False) as prof:
        for _ in range(config.iterations):
            for r in runs:
                r.run()
    stem = config.target.replace("-", "_")
    trace_path = out / f"trace_{stem}.json"
    prof.export_chrome_trace(str(trace_path))
    summary = {
        "kind": "deftx runtime profile",
        "target": config.target,
        "device": str(device),
        "shapes": workload.name,
        "backend": config.backend or "auto",
        "iterations": config.iterations,
        "warmup": config.warmup,
        "trace": str(trace_path),
        "rows": summarize(prof, runs, device),
    }
    json_path, md_path = out / f"profile_{stem}.json", out / f"profile_{stem}.md"
    summary["files"] = [str(trace_path), str(json_path), str(md_path)]
    json_path.write_text(json.dumps(summary, indent=1) + "\n")
    md_path.write_text(render_summary(summary))
    return summary
