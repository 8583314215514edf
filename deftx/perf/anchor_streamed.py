"""The anchor table's streamed row: LT-SFT's selection from two checkpoints on disk that are
not loaded, in a fresh process.

:func:`write_pair` writes a synthetic θ0 (N(0, 0.05²)) and θ1 = θ0 + N(0, 10⁻⁶) in the shapes
of a shape set (bf16 by default, as models of that size ship) as sharded safetensors
checkpoints with an index (``theta0/``, ``theta1/`` under a scratch folder). A fresh child
process (``python -m deftx.perf.anchor_streamed --child θ1 θ0``) then runs
:func:`deftx.ops.topk_streamed.select_streamed` once at ``k = round(fraction × N)`` and
reports its wall time, its peak RSS (``VmHWM``: the whole process, and its growth during the
call after a ``clear_refs`` reset), the entries selected, its full passes and the bytes they
read. The files are read with ``read``, not mapped, so the page cache never counts as the
process's memory.

Run: ``python benchmarks/anchor_selection.py --streamed --shapes llama-7b --scratch DIR --out
results/anchor`` (``results/anchor/run_streamed.sh``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from deftx.perf.anchor import CHILD_ENV, report
from deftx.perf.memory import reset_peak_rss, status_bytes
from deftx.perf.shapes import TensorShape, load_shape_set

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
SHARD_BYTES = 2 << 30
"""Largest shard written (as ``save_pretrained`` shards, here at 2 GiB)."""


def write_checkpoint(folder: Path, tensors: dict[str, torch.Tensor], shards: list[dict[str, str]]) -> None:
    """Append ``tensors`` to ``folder`` as the next shard ``part-<i>.safetensors``; ``shards``
    collects name -> file across calls (for :func:`write_index`)."""
    file = f"part-{len(shards):05d}.safetensors"
    save_file(tensors, str(folder / file))
    shards.append(dict.fromkeys(tensors, file))


def write_index(folder: Path, shards: list[dict[str, str]]) -> None:
    """``model.safetensors.index.json``: the weight map of every shard written."""
    weight_map = {name: file for shard in shards for name, file in shard.items()}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def write_pair(shapes: Sequence[TensorShape], scratch: Path, dtype: torch.dtype,
               shard_bytes: int = SHARD_BYTES, seed: int = 0) -> tuple[Path, Path]:
    """θ1 and θ0 of ``shapes`` as sharded checkpoints ``scratch/theta1``, ``scratch/theta0``;
    at most one shard of each is in memory at a time."""
    gen = torch.Generator().manual_seed(seed)
    folders = (scratch / "theta1", scratch / "theta0")
    for folder in folders:
        folder.mkdir(parents=True)
    shards: tuple[list[dict[str, str]], list[dict[str, str]]] = ([], [])
    pending: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]] = ({}, {})
    pending_bytes = 0
    for shape in shapes:
        theta0 = torch.randn(shape.shape, generator=gen).mul_(0.05)
        theta1 = theta0.add(torch.randn(shape.shape, generator=gen), alpha=1e-3).to(dtype)
        pending[0][shape.name], pending[1][shape.name] = theta1, theta0.to(dtype)
        del theta0
        pending_bytes += theta1.nbytes
        if pending_bytes >= shard_bytes:
            for folder, part, written in zip(folders, pending, shards, strict=True):
                write_checkpoint(folder, part, written)
                part.clear()
            pending_bytes = 0
    for folder, part, written in zip(folders, pending, shards, strict=True):
        if part:
            write_checkpoint(folder, part, written)
        write_index(folder, written)
    return folders


def measure(theta1: Path, theta0: Path, k_fraction: float) -> dict[str, Any]:
    """Run the streamed selection once in this process (meant to be fresh); its figures."""
    start = time.perf_counter()
    from deftx.ops.topk_streamed import checkpoint_tensors, select_streamed

    import_s = time.perf_counter() - start
    numel = sum(t.numel for t in checkpoint_tensors(theta1).values())
    k = max(1, round(k_fraction * numel))
    has_hwm = reset_peak_rss()
    rss_before = status_bytes("VmRSS")
    start = time.perf_counter()
    selection = select_streamed(theta1, theta0, k)
    call_s = time.perf_counter() - start
    peak = status_bytes("VmHWM")
    return {
        "method": "deftx_streamed", "numel": numel, "k": k,
        "entries": sum(int(i.numel()) for i in selection.indices.values()),
        "import_s": import_s, "first_call_s": call_s,
        "peak_rss_bytes": peak, "peak_extra_bytes": peak - rss_before if has_hwm else None,
        "full_passes": selection.full_passes, "bytes_read": selection.bytes_read,
        "candidates": selection.candidates, "threads": torch.get_num_threads(),
        "load_average_1m": os.getloadavg()[0],
    }


def run_fresh(theta1: Path, theta0: Path, k_fraction: float) -> dict[str, Any]:
    """:func:`measure` in a new Python process; its JSON row."""
    command = [sys.executable, "-m", "deftx.perf.anchor_streamed", "--child", str(theta1), str(theta0),
               "--k-fraction", str(k_fraction)]
    done = subprocess.run(command, capture_output=True, text=True, check=True, env=os.environ | CHILD_ENV)
    return json.loads(done.stdout.strip().splitlines()[-1])


def _size(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n >= 1e8 else f"{n / 1e6:.1f} MB"


def _growth(n: int | None) -> str:
    """``+1.2 MB``, ``-0.1 MB`` (RSS that shrank); ``-`` where the growth was not measured (no ``VmHWM`` reset)."""
    if n is None:
        return "-"
    return f"{'-' if n < 0 else '+'}{_size(abs(n))}"


def markdown(row: dict[str, Any]) -> str:
    """The streamed row and what it read."""
    checkpoint = row["numel"] * row["element_bytes"]
    lines = [
        "| method | shapes | first call | peak RSS (process) | peak RSS growth | entries |",
        "|---|---|---|---|---|---|",
        f"| deftx `select_streamed(θ1 dir, θ0 dir, k)` | {row['shapes']} ({row['numel'] / 1e9:.2f}B {row['dtype']}) "
        f"| {row['first_call_s']:.1f} s | {_size(row['peak_rss_bytes'])} | {_growth(row['peak_extra_bytes'])} "
        f"| {'k' if row['entries'] == row['k'] else row['entries']} |",
        "",
        f"k = {row['k']} ({row['k_fraction']:g} of N); one checkpoint is {_size(checkpoint)} on disk. "
        f"{row['full_passes']} full passes over (θ1, θ0), {_size(row['bytes_read'])} read "
        f"({row['bytes_read'] / row['first_call_s'] / 1e6:.0f} MB/s); {row['candidates']} keys in the "
        f"threshold's bin. Writing the pair took {row['write_s']:.0f} s. Load average (1 min) "
        f"before / after: {row['load_before']:.2f} / {row['load_after']:.2f}.",
    ]
    return "\n".join(lines) + "\n"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m deftx.perf.anchor_streamed", description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", default="llama-7b", help="shape set (default llama-7b, 6.74B)")
    parser.add_argument("--dtype", choices=list(DTYPES), default="bf16")
    parser.add_argument("--k-fraction", type=float, default=0.01)
    parser.add_argument("--scratch", type=Path, help="folder for the pair (must not exist; removed afterwards)")
    parser.add_argument("--keep", action="store_true", help="keep the pair in --scratch")
    parser.add_argument("--out", type=Path, help="folder for anchor_streamed_<shapes>.{json,md}")
    parser.add_argument("--child", nargs=2, type=Path, metavar=("THETA1", "THETA0"),
                        help="measure on these checkpoints in this process (a child)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """A child prints its row as JSON; the parent writes the pair, runs a child and the table."""
    args = _parse(argv)
    if args.child:
        print(json.dumps(measure(*args.child, args.k_fraction)))
        return 0
    if args.scratch is None:
        raise SystemExit("--scratch is required (a folder with room for both checkpoints)")
    shape_set = load_shape_set(args.shapes)
    start = time.perf_counter()
    theta1, theta0 = write_pair(shape_set.flat(), args.scratch, DTYPES[args.dtype])
    write_s = time.perf_counter() - start
    load_before = os.getloadavg()[0]
    try:
        row = run_fresh(theta1, theta0, args.k_fraction)
    finally:
        if not args.keep:
            shutil.rmtree(args.scratch)
    row |= {"shapes": shape_set.name, "dtype": args.dtype, "element_bytes": DTYPES[args.dtype].itemsize,
            "k_fraction": args.k_fraction, "write_s": write_s, "load_before": load_before,
            "load_after": os.getloadavg()[0]}
    report(row, markdown(row), args.out, f"anchor_streamed_{shape_set.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
