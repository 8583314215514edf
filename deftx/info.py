"""Environment and backend report (``deftx doctor`` / ``python -m deftx.info``)."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path

import torch

import deftx
from deftx.ops.dispatch import ENV_VAR, backend_report, requested_backend, triton_unavailable_reason
from deftx.ops.registry import OPS


def distribution_version(name: str) -> str:
    """The installed version of distribution ``name``, or ``"not installed"`` (read from metadata, not imported)."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


RUN_LIBRARIES = ("transformers", "tokenizers", "numpy", "accelerate", "kernels", "triton")
"""Distributions besides torch whose release can change a training run's numbers (``kernels``: Hugging
Face's Hub-kernel loader, which transformers >= 5.25 requires and deftx keeps off)."""

LIBRARIES = (*(name for name in RUN_LIBRARIES if name != "triton"), "datasets", "peft", "safetensors")
"""Distributions the doctor names: every one of :data:`RUN_LIBRARIES` (triton has a line of its own, with
why it is unavailable where it is) and those deftx interoperates with (datasets, peft, safetensors)."""


def source_commit() -> str:
    """The git commit of the checkout deftx is imported from, or ``"unknown"`` (an installed wheel,
    a copy without ``.git``, no git)."""
    root = Path(deftx.__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return "unknown"
    try:
        done = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10, check=True)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return done.stdout.strip() or "unknown"


def first_gpu_name() -> str | None:
    """The name of CUDA device 0 (``"NVIDIA H200"``), or None where torch has no usable CUDA device
    (asked of ``is_available`` and ``device_count`` both: a CPU build that a test tells CUDA is there
    counts none, and a broken driver is not available)."""
    if torch.cuda.is_available() and torch.cuda.device_count() > 0:
        return torch.cuda.get_device_name(0)
    return None


def environment_record() -> dict[str, str]:
    """What a run's numbers may depend on below its settings: deftx and its commit, python, torch,
    :data:`RUN_LIBRARIES`, CPU threads and, on a machine with a CUDA device, its first GPU.

    JSON-ready strings, e.g. ``{"deftx": "0.1.0", "commit": "34db878...", "python": "3.11.7",
    "torch": "2.13.0+cpu", ..., "threads": "2"}`` (``"gpu": "NVIDIA H200"`` last where
    :func:`first_gpu_name` names one: a study spread over visits to an H100 and an H200 says which
    seed ran where); a library that is not installed reads ``"not installed"``. torch's is
    ``torch.__version__``, which names the build (``+cpu``, ``+cu130``) where the distribution's
    metadata may not.
    """
    record = {"deftx": deftx.__version__, "commit": source_commit(), "python": platform.python_version(),
              "torch": torch.__version__, **{name: distribution_version(name) for name in RUN_LIBRARIES},
              "threads": str(torch.get_num_threads())}
    gpu = first_gpu_name()
    if gpu is not None:
        record["gpu"] = gpu
    return record


def environment_lines() -> list[str]:
    """Versions and devices, one ``key: value`` line each."""
    lines = [
        f"deftx: {deftx.__version__}",
        f"python: {platform.python_version()} ({sys.executable})",
        f"torch: {torch.__version__} (CUDA available: {torch.cuda.is_available()})",
        f"CPU threads: {torch.get_num_threads()}",
    ]
    gpu = first_gpu_name()
    if gpu is not None:
        lines.append(f"GPU: {gpu}")
    reason = triton_unavailable_reason()
    triton = distribution_version("triton")
    lines.append(f"triton: {triton}" if reason is None else f"triton: {triton} (unavailable: {reason})")
    lines += [f"{name}: {distribution_version(name)}" for name in LIBRARIES]
    return lines


def op_lines() -> list[str]:
    """One line per op of the registry: what it does and the public functions that run it."""
    return [f"  {entry.name}: {entry.summary} ({', '.join(entry.functions)})" for entry in OPS.values()]


def report() -> str:
    """The full doctor report: environment, which backend each op uses and why, then the ops."""
    rows = backend_report()
    width_op = max(len(r["op"]) for r in [*rows, {"op": "op"}])
    width_dev = max(len(r["device"]) for r in [*rows, {"device": "device"}])
    width_be = max(len(r["backend"]) for r in [*rows, {"backend": "backend"}])
    table = [f"{'op':<{width_op}}  {'device':<{width_dev}}  {'backend':<{width_be}}  why"]
    table += [
        f"{r['op']:<{width_op}}  {r['device']:<{width_dev}}  {r['backend']:<{width_be}}  {r['why']}" for r in rows
    ]
    return "\n".join([*environment_lines(), override_line(), "", *table, "", "ops:", *op_lines()])


def backend_override_problem() -> str | None:
    """Why ``$DEFTX_BACKEND`` makes every op call fail (a value naming no backend), or None."""
    try:
        requested_backend(None)
    except ValueError as err:
        return f"{err}: every op call, and every deftx command that runs one, fails until it is fixed or unset"
    return None


def override_line() -> str:
    """The report's line on ``$DEFTX_BACKEND``: not set, the backend it asks for, or why it is invalid."""
    if ENV_VAR not in os.environ:
        return f"backend override: ${ENV_VAR} is not set (auto)"
    problem = backend_override_problem()
    if problem is not None:
        return f"backend override: INVALID: {problem}"
    return f"backend override: ${ENV_VAR}={os.environ[ENV_VAR]} (explicit: unavailable backends raise)"


if __name__ == "__main__":
    print(report())
