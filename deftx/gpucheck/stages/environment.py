"""Stage ``environment``: the versions, the GPU and the tools, printed and recorded.

Versions of python, torch (and its CUDA), triton, transformers, numpy, safetensors and
deftx; ``nvidia-smi`` (driver, clocks, memory) and ``nvidia-smi -q`` into the log; torch's
device properties; ``nvcc``, ``ncu`` and ``compute-sanitizer`` versions; the kernel
(``/proc/version`` tells gVisor, where ncu and the sanitizer do not work, from Firecracker);
and which backend each deftx op picks on this machine.
"""

from __future__ import annotations

import platform
import shutil
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from deftx.gpucheck.context import StageContext

PACKAGES = ("torch", "triton", "transformers", "numpy", "safetensors", "accelerate", "deftx")
SMI_QUERY = "name,driver_version,memory.total,clocks.sm,clocks.mem,clocks.max.sm,power.limit,temperature.gpu"
TOOL_COMMANDS: dict[str, list[str]] = {"nvcc": ["nvcc", "--version"]}
COMMAND_TIMEOUT_S = 20.0
STOP_MARGIN_S = 2.0
"""Seconds before the deadline by which the commands are given up, left for writing the result."""


def package_versions(names: tuple[str, ...] = PACKAGES) -> dict[str, str | None]:
    """name -> installed version from the package metadata (None where it is not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def command_output(command: list[str], timeout: float = 20.0) -> str | None:
    """Stripped stdout+stderr of ``command``, or None if it cannot run."""
    if shutil.which(command[0]) is None and not Path(command[0]).is_file():
        return None
    if timeout <= 0:
        return f"could not run {command[0]}: no time left before the stage deadline"
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"could not run {command[0]}: {err}"
    return (done.stdout + done.stderr).strip()


def parse_smi_query(text: str | None) -> dict[str, str] | None:
    """``nvidia-smi --query-gpu=... --format=csv,noheader`` first line -> field -> value."""
    if not text or text.startswith("could not run"):
        return None
    values = [v.strip() for v in text.splitlines()[0].split(",")]
    fields = SMI_QUERY.split(",")
    return dict(zip(fields, values, strict=False)) if len(values) == len(fields) else None


def torch_device(device: str) -> dict[str, Any] | None:
    """torch's view of the GPU (None on a CPU run)."""
    import torch

    if device != "cuda":
        return None
    props = torch.cuda.get_device_properties(0)
    return {
        "name": props.name,
        "capability": f"{props.major}.{props.minor}",
        "multi_processor_count": props.multi_processor_count,
        "total_memory_bytes": props.total_memory,
        "l2_cache_bytes": getattr(props, "L2_cache_size", None),
        "torch_cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "device_count": torch.cuda.device_count(),
    }


def run(ctx: StageContext) -> dict[str, Any]:
    from deftx.ops import backend_report

    def output(command: list[str]) -> str | None:
        """``command``'s output within the time left: a hung nvidia-smi must not keep the stage past its
        deadline (killed there, it would record nothing)."""
        return command_output(command, min(COMMAND_TIMEOUT_S, ctx.seconds_left() - STOP_MARGIN_S))

    versions = package_versions()
    smi = output(["nvidia-smi", f"--query-gpu={SMI_QUERY}", "--format=csv,noheader"])
    smi_full = output(["nvidia-smi", "-q"])
    tools = {name: output([path, "--version"]) if path else None for name, path in ctx.tools.items()}
    tools["nvcc"] = output(TOOL_COMMANDS["nvcc"])
    kernel = Path("/proc/version").read_text().strip() if Path("/proc/version").is_file() else platform.platform()
    gpu = torch_device(ctx.device)
    report = backend_report()
    (ctx.stage_dir / "nvidia-smi.txt").write_text((output(["nvidia-smi"]) or "nvidia-smi not found") + "\n\n"
                                                 + (smi_full or ""))
    for name, version in versions.items():
        print(f"{name:14s} {version}")
    print(f"{'kernel':14s} {kernel}")
    print(f"{'gpu':14s} {gpu}")
    print(f"{'nvidia-smi':14s} {smi}")
    for name, text in tools.items():
        print(f"{name:14s} {(text or 'not found').splitlines()[-1]}")
    for row in report:
        print(f"backend        {row['op']:12s} {row['device']:18s} {row['backend']:8s} {row['why']}")
    gpu_name, cuda = (gpu["name"], gpu["torch_cuda"]) if gpu else ("no GPU", "-")
    headline = (
        f"{gpu_name}; python {versions['python']}, torch {versions['torch']} (CUDA {cuda}), "
        f"triton {versions['triton']}, transformers {versions['transformers']}, numpy {versions['numpy']}"
    )
    smi_fields = parse_smi_query(smi)
    if smi_fields:
        headline += f"; driver {smi_fields['driver_version']}"
    return {
        "status": "ok",
        "headline": headline,
        "versions": versions,
        "gpu": gpu,
        "nvidia_smi": smi_fields,
        "tools": tools,
        "kernel": kernel,
        "backends": report,
    }
