"""Stage ``histogram``: how fast the top-k's passes over the data run, against the copy bandwidth.

``topk_indices`` reads the data twice when its candidate list is in use (every call whose k
leaves the list smaller than the data): a *count* of the keys at or above the lowest key
bracketed from a sample, and a *partition* that writes them into the list; the radix passes
then read the list, not the data. When the list is not in use, each radix pass reads the
data: a 256-bin ``tl.histogram``, which triton 3.6 compiles to warp ballots and popcounts
(about two warp instructions per element) and 3.9 to one shared-memory atomic per element.
Per dtype (fp32, bf16) and data (``weight-diff``: N(0, 1e-3²), its top digits in a few
bins; ``spread``: magnitudes 2^-40..2^40, digits over ~40 bins), on one tensor of a few GB:

* ``pass``: the two full passes at k = 1% (``deftx.kernels.topk.full_passes``), with the
  list length the bracket gave (``list_entries``, against k);
* ``fallback``: the data radix pass (``deftx.kernels.topk.histogram_pass``), first digit
  (24..31) and second (band filter on the most populous first digit);
* ``probe``: the kernels of :mod:`deftx.gpucheck.probe_kernels`: read + digit sum, and
  ``tl.histogram`` alone.

GB/s counts the bytes read once; ``% copy`` compares with the copy bandwidth measured by
the ceilings stage (read + write), the issue's yardstick (goal: each pass >= 60%).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

import torch

from deftx.gpucheck import probe_kernels
from deftx.gpucheck.context import StageContext, read_result
from deftx.perf.timing import TimingSettings, time_thunk

ELEMENTS = {"full": 1 << 30, "tiny": 1 << 15}
TIMING = {
    "full": TimingSettings(warmup=2, min_repeats=10, max_repeats=10, min_time_s=0.0),
    "tiny": TimingSettings(warmup=1, min_repeats=1, max_repeats=1, min_time_s=0.0),
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
PASS_GOAL_PCT = 60.0
K_FRACTION = 0.01


def make_data(kind: str, numel: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``weight-diff``: N(0, 1e-3²); ``spread``: ±2^U(-40, 40)."""
    gen = torch.Generator(device=device).manual_seed(0)
    if kind == "weight-diff":
        return torch.empty(numel, device=device).normal_(0.0, 1e-3, generator=gen).to(dtype)
    if kind == "spread":
        magnitude = torch.empty(numel, device=device).uniform_(-40.0, 40.0, generator=gen).exp2_()
        sign = torch.randint(0, 2, (numel,), device=device, generator=gen).mul_(2).sub_(1)
        return magnitude.mul_(sign).to(dtype)
    raise ValueError(f"unknown data kind {kind!r}")


def topk_module() -> Any:
    """``deftx.kernels.topk`` (imported late: the stage runs where Triton compiles for the device)."""
    return importlib.import_module("deftx.kernels.topk")


def top_digit_histogram(x: torch.Tensor) -> torch.Tensor:
    """The 256-bin histogram of the first-pass digit (``key >> 24``), computed in torch."""
    bits = x.float().abs().view(torch.int32)
    return torch.bincount((bits >> 24) & 255, minlength=256)


def copy_gbps(ctx: StageContext, device: torch.device) -> tuple[float, str]:
    """The copy bandwidth (read + write GB/s): the ceilings stage's, else measured here."""
    ceilings = read_result(ctx.work_dir, "ceilings")
    if ceilings and ceilings.get("copy"):
        return ceilings["copy"]["fp32"]["median_gbps"], "ceilings stage"
    from deftx.gpucheck.stages.ceilings import SIZES, copy_bandwidth

    return copy_bandwidth(device, SIZES[ctx.sizes]["copy_bytes"], torch.float32)["median_gbps"], "measured here"


def measure(name: str, prepare: Callable[[], Callable[[], object]], x: torch.Tensor, settings: TimingSettings,
            copy: float) -> dict[str, Any]:
    """One timed kernel (``prepare()`` builds its launch once): median seconds, read GB/s and %
    of the copy bandwidth, or the error that stopped it."""
    try:
        timing, _ = time_thunk(prepare(), x.device, settings)
    except Exception as err:  # e.g. the launcher's internals changed: a row that says so
        return {"kernel": name, "error": f"{type(err).__name__}: {err}"}
    gbps = x.numel() * x.element_size() / timing.median_s / 1e9
    return {"kernel": name, "time_s": timing.median_s, "gbps": gbps, "pct_of_copy": 100.0 * gbps / copy}


def full_pass_rows(x: torch.Tensor, k: int, settings: TimingSettings, copy: float) -> list[dict[str, Any]]:
    """The count and the partition of ``topk_indices([x], k)``, with the list length they gave."""
    names = (f"count (keys >= bracket, k = {K_FRACTION:.0%})", "partition (writes the list)")
    try:
        passes = topk_module().full_passes(x, k)
    except Exception as err:  # the launcher's internals changed: rows that say so
        return [{"role": "pass", "kernel": name, "error": f"{type(err).__name__}: {err}"} for name in names]
    rows = [{"role": "pass", **measure(name, lambda thunk=thunk: thunk, x, settings, copy)}
            for name, thunk in zip(names, passes, strict=True)]
    if "gbps" in rows[0]:
        entries = int(passes[0]().sum())
        for row in rows:
            row.update(k=k, list_entries=entries, list_over_k=entries / k)
    return rows


def case_rows(x: torch.Tensor, settings: TimingSettings, copy: float) -> list[dict[str, Any]]:
    """The full passes, the fallback passes and the probes over one tensor."""
    topk = topk_module()
    top = top_digit_histogram(x)
    band = int(top.argmax())
    scratch_sum = torch.zeros(1, dtype=torch.int64, device=x.device)
    scratch_hist = torch.zeros(256, dtype=torch.int64, device=x.device)
    rows = [
        *full_pass_rows(x, max(1, int(K_FRACTION * x.numel())), settings, copy),
        {"role": "fallback", **measure("fallback pass 1 (digit 24..31)", lambda: topk.histogram_pass(x, 24, 0), x,
                                       settings, copy)},
        {"role": "fallback", **measure("fallback pass 2 (digit 16..23, band filter)",
                                       lambda: topk.histogram_pass(x, 16, band), x, settings, copy)},
        {"role": "probe", **measure("probe: read + digit sum",
                                    lambda: lambda: probe_kernels.digit_sum(x, 24, scratch_sum), x, settings, copy)},
        {"role": "probe", **measure("probe: tl.histogram only",
                                    lambda: lambda: probe_kernels.digit_histogram(x, 24, scratch_hist), x, settings,
                                    copy)},
    ]
    occupied = int((top > 0).sum())
    for row in rows:
        row.update(top_bins_occupied=occupied, top_bin_share=float(top.max()) / x.numel())
    return rows


def slowest(rows: list[dict[str, Any]], role: str) -> dict[str, Any] | None:
    """The measured row of ``role`` with the lowest share of the copy bandwidth."""
    timed = [r for r in rows if r["role"] == role and "gbps" in r]
    return min(timed, key=lambda r: r["pct_of_copy"]) if timed else None


def run(ctx: StageContext) -> dict[str, Any]:
    device = torch.device(ctx.device)
    copy, source = copy_gbps(ctx, device)
    settings = TIMING[ctx.sizes]
    rows = []
    for dtype_name, dtype in DTYPES.items():
        for kind in ("weight-diff", "spread"):
            x = make_data(kind, ELEMENTS[ctx.sizes], dtype, device)
            for row in case_rows(x, settings, copy):
                rows.append({"dtype": dtype_name, "data": kind, "elements": x.numel(),
                             "bytes": x.numel() * x.element_size(), **row})
                print(f"{dtype_name} {kind:11s} {row['kernel']:44s} "
                      + (f"{row['gbps']:9.1f} GB/s {row['pct_of_copy']:5.1f}% of copy" if "gbps" in row
                         else row["error"]), flush=True)
            del x
            ctx.write_result({"status": "ok", "headline": "partial", "rows": rows, "copy_gbps": copy})
    worst, fallback = slowest(rows, "pass"), slowest(rows, "fallback")
    errors = [r for r in rows if "error" in r]
    headline = (
        f"slowest full pass {worst['pct_of_copy']:.0f}% of copy ({worst['dtype']} {worst['data']}, "
        f"{worst['kernel']}), goal {PASS_GOAL_PCT:.0f}%" if worst else "no full pass measured"
    ) + (f"; slowest fallback pass {fallback['pct_of_copy']:.0f}%" if fallback else "") + (
        f"; {len(errors)} kernels failed" if errors else "")
    return {"status": "failed" if errors else "ok", "headline": headline, "rows": rows, "copy_gbps": copy,
            "copy_source": source, "goal_pct_of_copy": PASS_GOAL_PCT}
