"""What a stage process is told: device, problem sizes, folders, tools and its deadline.

The runner writes one :class:`StageContext` per stage as JSON (``<work>/<stage>/context.json``)
and starts ``python -m deftx.gpucheck.stage`` on it; the stage writes its result to
``<work>/<stage>/result.json`` (also partial results while it runs) and its other files
beside it.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

SIZES = ("full", "tiny")
"""``full``: the issue's shapes (XLM-R base, Llama-2-7B, GB-sized buffers); ``tiny``: the same
code at toy sizes, for CPU runs and CI."""

RESULT_FILE = "result.json"
CONTEXT_FILE = "context.json"


@dataclass(frozen=True)
class StageContext:
    """Everything a stage needs to know.

    Attributes:
        stage: the stage's name.
        repo: the repository root (the checkout being checked).
        work_dir: the run's working folder; the stage writes under ``work_dir/stage``.
        device: ``"cuda"`` or ``"cpu"``.
        sizes: ``"full"`` or ``"tiny"`` (:data:`SIZES`).
        prefix: file-name prefix of result files (``h200``, ``cuda``, ``cpu``).
        deadline: epoch seconds by which the stage must have written its result; the runner
            kills it a few seconds later.
        tools: executable name -> resolved path (``ncu``, ``compute-sanitizer``), or None.
        test_paths: what the tests stage gives pytest.
        pytest_workers: pytest-xdist workers for the tests stage (0: none).
    """

    stage: str
    repo: str
    work_dir: str
    device: str = "cpu"
    sizes: str = "tiny"
    prefix: str = "cpu"
    deadline: float = 0.0
    tools: dict[str, str | None] = field(default_factory=dict)
    test_paths: tuple[str, ...] = ("tests",)
    pytest_workers: int = 0

    def __post_init__(self) -> None:
        if self.sizes not in SIZES:
            raise ValueError(f"sizes must be one of {', '.join(SIZES)}, got {self.sizes!r}")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {self.device!r}")

    @property
    def stage_dir(self) -> Path:
        path = Path(self.work_dir) / self.stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def full(self) -> bool:
        return self.sizes == "full"

    def seconds_left(self) -> float:
        """Seconds until the deadline (negative once past it)."""
        return self.deadline - time.time()

    def write_result(self, result: dict[str, Any]) -> None:
        """Write (or overwrite) the stage's result; call it with partial results as they come."""
        path = self.stage_dir / RESULT_FILE
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1, default=str) + "\n")
        tmp.replace(path)

    def save(self, path: Path) -> None:
        data = asdict(self)
        data["test_paths"] = list(self.test_paths)
        path.write_text(json.dumps(data, indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> StageContext:
        data = json.loads(Path(path).read_text())
        data["test_paths"] = tuple(data.get("test_paths", ("tests",)))
        return cls(**data)


def read_result(work_dir: str | Path, stage: str) -> dict[str, Any] | None:
    """The result a stage wrote (None if it wrote none or it is unreadable)."""
    path = Path(work_dir) / stage / RESULT_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
