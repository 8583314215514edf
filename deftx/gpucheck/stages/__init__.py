"""One module per stage of ``deftx gpu-check``; each has ``run(ctx) -> dict``.

The dict is the stage's result: ``status`` (``ok`` / ``failed``), ``headline`` (one line for
the summary) and the stage's data. Stages import what they need inside ``run`` so that
``python -m deftx.gpucheck.stage`` starts fast.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from deftx.gpucheck.context import StageContext

RUNNERS: dict[str, tuple[str, str]] = {
    "install": ("install", "run"),
    "environment": ("environment", "run"),
    "tests": ("tests", "run"),
    "ceilings": ("ceilings", "run"),
    "histogram": ("histogram", "run"),
    "bench-xlmr": ("bench", "run_xlmr"),
    "bench-llama": ("bench", "run_llama"),
    "training": ("training", "run"),
    "ncu": ("ncu", "run"),
    "sanitizer": ("sanitizer", "run"),
}
"""stage name -> (module in this package, function)."""


def stage_runner(name: str) -> Callable[[StageContext], dict[str, Any]]:
    """The function that runs stage ``name``."""
    if name not in RUNNERS:
        raise KeyError(f"no stage named {name!r}; stages: {', '.join(RUNNERS)}")
    module, function = RUNNERS[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), function)
