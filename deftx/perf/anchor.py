"""The anchor table: LT-SFT's selection from two checkpoints (θ1, θ0), each method timed on its
first call in a fresh process.

What a user times is the selection from the fine-tuned and the pretrained parameters to the
selected entries, once, in a new process. Every method runs in its own subprocess
(``python -m deftx.perf.anchor --method M``), which builds θ0 (N(0, 0.05²)) and θ1 = θ0 +
N(0, 10⁻⁶) in the shapes of a shape set (fp32), imports what the method needs (timed apart),
then runs the method once:

* ``lt_sft_reference``: the LT-SFT reference algorithm: ``|θ1 − θ0|`` of every tensor appended
  to one Python list, ``np.partition`` for the k-th largest, then ``|θ1 − θ0| >= threshold``
  masks (more than k entries when the threshold ties);
* ``cat_topk``: ``torch.cat`` of the flattened ``|θ1 − θ0|``, ``torch.topk`` (exactly k);
* ``kthvalue``: ``torch.kthvalue`` on the same concatenation, then ``>=`` masks;
* ``deftx``: ``deftx.ops.topk_mask(θ1, k, base=θ0, output="indices")``: the difference is
  computed inside the selection's passes, never stored (exactly k).

Measured per method: the first call's wall time (``time.perf_counter``), its peak extra memory
(``VmHWM`` reset through ``/proc/self/clear_refs`` just before the call, minus ``VmRSS`` then),
the entries selected, and whether the call imported ``torch._dynamo``. For deftx also its full
passes over the data (reported by the native library) and the bytes those passes read
(``passes × N × 2 × 4``: θ1 and θ0).

Run: ``python benchmarks/anchor_selection.py --shapes e5-small --k-fraction 0.01 --out results/anchor``
(or ``python -m deftx.perf.anchor`` with the same options).
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deftx.perf.memory import reset_peak_rss, status_bytes
from deftx.perf.shapes import load_shape_set

Pair = tuple[list[torch.Tensor], list[torch.Tensor]]

METHODS: dict[str, str] = {
    "lt_sft_reference": "the LT-SFT reference algorithm (Python list + `np.partition` + `>=`)",
    "cat_topk": "`torch.cat` + `torch.topk`",
    "kthvalue": "`torch.kthvalue` + `>=`",
    "deftx": "deftx `topk_mask(θ1, k, base=θ0)`",
}
"""Method name -> how the table names it, in table order."""

CHILD_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
"""glibc returns every freed block above 128 KiB to the system (see :mod:`deftx.perf.memory`)."""


def make_pair(shapes: Sequence[tuple[int, ...]], seed: int = 0) -> Pair:
    """θ1 and θ0: fp32 tensors of ``shapes``; θ0 ~ N(0, 0.05²), θ1 = θ0 + N(0, 0.001²)."""
    gen = torch.Generator().manual_seed(seed)
    theta0 = [torch.randn(shape, generator=gen).mul_(0.05) for shape in shapes]
    theta1 = [t.add(torch.randn(t.shape, generator=gen), alpha=1e-3) for t in theta0]
    return theta1, theta0


def lt_sft_reference(theta1: list[torch.Tensor], theta0: list[torch.Tensor], k: int) -> int:
    """LT-SFT's reference selection: every |θ1 − θ0| in one Python list, ``np.partition`` for the
    k-th largest, then ``>=`` masks. Returns the number of entries selected (>= k)."""
    diffs: list[float] = []
    for a, b in zip(theta1, theta0, strict=True):
        diffs.extend(torch.abs(a - b).view(-1).tolist())
    threshold = np.partition(diffs, -k)[-k]
    return sum(int((torch.abs(a - b) >= threshold).sum()) for a, b in zip(theta1, theta0, strict=True))


def _concatenated_differences(theta1: list[torch.Tensor], theta0: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(a - b).abs().view(-1) for a, b in zip(theta1, theta0, strict=True)])


def cat_topk(theta1: list[torch.Tensor], theta0: list[torch.Tensor], k: int) -> int:
    """``torch.topk`` of the concatenated |θ1 − θ0|: exactly k entries."""
    return int(torch.topk(_concatenated_differences(theta1, theta0), k, sorted=False).indices.numel())


def kthvalue(theta1: list[torch.Tensor], theta0: list[torch.Tensor], k: int) -> int:
    """The k-th largest |θ1 − θ0| by ``torch.kthvalue``, then ``>=`` masks (>= k entries)."""
    flat = _concatenated_differences(theta1, theta0)
    threshold = torch.kthvalue(flat, flat.numel() - k + 1).values
    del flat
    return sum(int(((a - b).abs() >= threshold).sum()) for a, b in zip(theta1, theta0, strict=True))


def deftx_selection(theta1: list[torch.Tensor], theta0: list[torch.Tensor], k: int) -> int:
    """deftx's selection from the pairs (the difference fused into its passes): k entries."""
    from deftx.ops import topk_mask

    return sum(int(i.numel()) for i in topk_mask(theta1, k, base=theta0, output="indices"))


IMPORTS: dict[str, str] = {"deftx": "deftx.ops"}
"""The module a method imports before its call (timed apart; the baselines need only torch and
numpy, imported already)."""

RUNS: dict[str, Callable[[list[torch.Tensor], list[torch.Tensor], int], int]] = {
    "lt_sft_reference": lt_sft_reference, "cat_topk": cat_topk, "kthvalue": kthvalue, "deftx": deftx_selection,
}


def deftx_passes(theta1: list[torch.Tensor], theta0: list[torch.Tensor], k: int) -> int:
    """Full passes over the data the native selection makes on these pairs (a second call)."""
    from deftx.ops.native.topk import select

    return select(theta1, k, theta0).full_passes


def measure(method: str, shape_set: str, k_fraction: float) -> dict[str, Any]:
    """Run ``method`` once in this process (meant to be fresh) and return its figures."""
    shapes = [t.shape for t in load_shape_set(shape_set).flat()]
    theta1, theta0 = make_pair(shapes)
    numel = sum(t.numel() for t in theta1)
    k = max(1, round(k_fraction * numel))
    start = time.perf_counter()
    if method in IMPORTS:
        importlib.import_module(IMPORTS[method])
    import_s = time.perf_counter() - start
    dynamo_before = "torch._dynamo" in sys.modules
    has_hwm = reset_peak_rss()
    rss_before = status_bytes("VmRSS")
    start = time.perf_counter()
    entries = RUNS[method](theta1, theta0, k)
    call_s = time.perf_counter() - start
    peak = status_bytes("VmHWM") - rss_before if has_hwm else None
    row: dict[str, Any] = {
        "method": method, "shapes": shape_set, "numel": numel, "k": k, "entries": entries,
        "import_s": import_s, "first_call_s": call_s, "peak_extra_bytes": peak,
        "imported_dynamo": "torch._dynamo" in sys.modules and not dynamo_before,
        "threads": torch.get_num_threads(), "load_average_1m": os.getloadavg()[0],
    }
    if method == "deftx":
        passes = deftx_passes(theta1, theta0, k)
        row |= {"full_passes": passes, "bytes_read": passes * numel * 2 * theta1[0].element_size()}
    return row


def run_fresh(method: str, shape_set: str, k_fraction: float) -> dict[str, Any]:
    """:func:`measure` in a new Python process; its JSON row."""
    command = [sys.executable, "-m", "deftx.perf.anchor", "--method", method, "--shapes", shape_set,
               "--k-fraction", str(k_fraction)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=os.environ | CHILD_ENV)
    return json.loads(done.stdout.strip().splitlines()[-1])


def summarise(runs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One row from the fresh-process runs of one method: the run of median first-call time,
    with every run's time and peak memory beside it.

    Raises:
        ValueError: an even number of runs (their median is no run's time).
    """
    if len(runs) % 2 == 0:
        raise ValueError(f"{len(runs)} runs have no median run: pass an odd number")
    ordered = sorted(runs, key=lambda run: run["first_call_s"])
    return ordered[(len(ordered) - 1) // 2] | {
        "runs_first_call_s": [run["first_call_s"] for run in runs],
        "runs_peak_extra_bytes": [run["peak_extra_bytes"] for run in runs],
    }


def _gb(n: int | None) -> str:
    """``+14.0 MB``, ``+2.00 GB``, ``-0.1 MB`` (RSS that shrank); ``-`` where not measured."""
    if n is None:
        return "-"
    sign, size = "-" if n < 0 else "+", abs(n)
    return f"{sign}{size / 1e9:.2f} GB" if size >= 1e8 else f"{sign}{size / 1e6:.1f} MB"


def times_faster(ratio: float) -> str:
    """``4.0×`` from 10 on one decimal, below it two (``0.96×``: a slowdown never reads as ``1.0×``)."""
    return f"{ratio:.1f}×" if ratio >= 10 else f"{ratio:.2f}×"


def markdown(rows: Sequence[dict[str, Any]]) -> str:
    """The table: first-call time (median and every run), import, peak extra memory and entries
    per method, deftx's speed-ups; ``rows`` from :func:`summarise`."""
    by_method = {row["method"]: row for row in rows}
    ours = by_method.get("deftx")
    lines = ["| method | first call (median) | runs | import | peak RSS growth | entries | deftx faster |",
             "|---|---|---|---|---|---|---|"]
    for row in rows:
        extra = row["entries"] - row["k"]
        entries = "k" if extra == 0 else f"k + {extra}"
        speedup = "-" if ours is None or row is ours else times_faster(row["first_call_s"] / ours["first_call_s"])
        runs = ", ".join(f"{t:.2f}" for t in row["runs_first_call_s"])
        lines.append(f"| {METHODS[row['method']]} | {row['first_call_s']:.3f} s | {runs} s | {row['import_s']:.3f} s "
                     f"| {_gb(row['peak_extra_bytes'])} | {entries} | {speedup} |")
    if ours is not None:
        lines.append("")
        lines.append(f"deftx: {ours['full_passes']} full passes over (θ1, θ0), {ours['bytes_read'] / 1e9:.2f} GB read; "
                     f"imported torch._dynamo: {ours['imported_dynamo']}.")
    return "\n".join(lines) + "\n"


def report(rows: Any, table: str, out: Path | None, stem: str) -> None:
    """Print ``table``; with ``out``, write ``<stem>.json`` (``rows``) and ``<stem>.md`` there."""
    print(table, end="")
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.json").write_text(json.dumps(rows, indent=2) + "\n")
        (out / f"{stem}.md").write_text(table)


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m deftx.perf.anchor", description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="e5-small", help="shape set (default e5-small, 117.5M)")
    parser.add_argument("--k-fraction", type=float, default=0.01)
    parser.add_argument("--method", choices=list(METHODS), help="measure one method in this process (a child)")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods, in table order")
    parser.add_argument("--repeat", type=int, default=1, help="fresh processes per method, odd (median shown)")
    parser.add_argument("--out", type=Path, help="folder for anchor_<shapes>.{json,md}")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.repeat % 2 == 0:
        parser.error(f"--repeat must be odd so that the median is one run's, not {args.repeat}")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """A child prints its row as JSON; the parent runs each method fresh and writes the table."""
    args = _parse(argv)
    if args.method:
        print(json.dumps(measure(args.method, args.shapes, args.k_fraction)))
        return 0
    rows = [summarise([run_fresh(method, args.shapes, args.k_fraction) for _ in range(args.repeat)])
            for method in args.methods.split(",")]
    report(rows, markdown(rows), args.out, f"anchor_{args.shapes}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
