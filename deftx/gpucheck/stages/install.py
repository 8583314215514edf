"""Stage ``install``: deftx onto the machine's own torch, without a network.

``python -m pip install --no-deps --no-build-isolation --no-index -e .``: no dependency is
resolved or fetched (the machine is offline and has torch, triton and transformers of
its own), the build uses the setuptools / cmake already installed (the build requirements
cannot be fetched), and ``setup.py`` builds the native CPU library with cmake. If cmake
fails the install still succeeds and deftx uses its torch backend on CPU: the stage says
so and the check carries on.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from deftx.gpucheck import processes
from deftx.gpucheck.context import StageContext

PIP_ENV = {"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"}
"""No version check (a network call that would hang offline), never a prompt."""


def install_command(python: str) -> list[str]:
    """The pip command line, for ``python``."""
    return [python, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-e", "."]


def native_status(repo: Path) -> str:
    """What ``setup.py`` wrote about the native library (``ok`` or why it was not built)."""
    status = repo / "deftx" / "_native" / "BUILD_STATUS.txt"
    libraries = sorted((repo / "deftx" / "_native").glob("deftx_native*.so"))
    if not status.is_file():
        return "no BUILD_STATUS.txt: the native library was not built"
    text = status.read_text().strip()
    return f"{text} ({libraries[0].name})" if text == "ok" and libraries else text


def run(ctx: StageContext) -> dict[str, Any]:
    repo = Path(ctx.repo)
    log = ctx.stage_dir / "pip.log"
    command = install_command(sys.executable)
    code = processes.run(command, repo, log, ctx.seconds_left() - 2, PIP_ENV)
    native = native_status(repo)
    tail = log.read_text().splitlines()[-15:]
    if code != 0:
        ended = "was stopped at the stage deadline" if code is None else f"exited with {code}"
        return {"status": "timeout" if code is None else "failed", "headline": f"pip {ended}; native: {native}",
                "command": command, "log_tail": tail, "native": native}
    native_ok = native.startswith("ok")
    headline = "deftx installed (editable); native library " + ("built" if native_ok else f"NOT built: {native}")
    return {"status": "ok", "headline": headline, "command": command, "native": native, "native_built": native_ok,
            "log_tail": tail}
