"""Did a phase train? The trend of the logged training loss of each phase of a run's ``log.jsonl``.

The Trainer logs the mean loss of every ``logging_steps`` steps. Those points are poor
witnesses one by one: under ``group_by_length`` (the default here) each megabatch of at most
50 batches is sorted longest first, so the logged loss climbs through a megabatch and drops
at the next (the language SFTs' MLM loss swings by ±15% that way). A trend therefore compares
the mean over the phase's first ``window`` steps with the mean over its last ``window``
steps, ``window`` being :data:`WINDOW_STEPS` (one whole megabatch at most) or half the phase
when it is shorter. A phase whose loss fell by less than :data:`FLAT_FALL` of its first
window's mean (or rose) *hardly trained*; one that logged a NaN or Inf loss is *non-finite*.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deftx.text import not_utf8, short_repr
from deftx.train.checkpoint import LOG, log_record, read_log

WINDOW_STEPS = 50
FLAT_FALL = 0.05
FELL, FLAT, NON_FINITE = "fell", "hardly trained", "non-finite"


@dataclass(frozen=True)
class LossTrend:
    """The logged loss of one phase, first window against last.

    Attributes:
        phase: the log's phase tag (``full``, ``sparse:lt-sft``, ...).
        steps: the phase's last logged step.
        window: the steps each window spans.
        first, last: mean logged loss over the first and the last window (NaN where non-finite).
        points: the loss records of the phase.
        finite: every logged loss is finite.
    """

    phase: str
    steps: int
    window: int
    first: float
    last: float
    points: int
    finite: bool

    @property
    def fall(self) -> float:
        """``(first - last) / first``: the fraction of the loss the phase took off (negative: it rose)."""
        return (self.first - self.last) / self.first if self.first else 0.0

    @property
    def verdict(self) -> str:
        """:data:`NON_FINITE`, :data:`FLAT` (fell by less than :data:`FLAT_FALL`) or :data:`FELL`."""
        if not self.finite:
            return NON_FINITE
        return FELL if self.fall >= FLAT_FALL else FLAT

    def as_row(self) -> dict[str, Any]:
        """The trend as a CSV row (losses to 4 decimals, fall to 3)."""
        return {"phase": self.phase, "steps": self.steps, "window": self.window, "points": self.points,
                "first_loss": round(self.first, 4), "last_loss": round(self.last, 4), "fall": round(self.fall, 3),
                "verdict": self.verdict}


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def phase_trend(phase: str, points: Sequence[tuple[int, float]], window_steps: int = WINDOW_STEPS) -> LossTrend | None:
    """The trend of one phase's ``(step, loss)`` points in step order; None when the phase is too
    short for two separate windows (its first and last points fall in one window)."""
    steps = points[-1][0]
    window = max(1, min(window_steps, steps // 2))
    first_end = max(window, points[0][0])
    first = [loss for step, loss in points if step <= first_end]
    last = [loss for step, loss in points if step > first_end and step > steps - window]
    if not last:
        return None
    finite = all(math.isfinite(loss) for _, loss in points)
    return LossTrend(phase, steps, window, _mean(first), _mean(last), len(points), finite)


def loss_trends(records: Sequence[Mapping[str, Any]], window_steps: int = WINDOW_STEPS) -> list[LossTrend]:
    """One :class:`LossTrend` per phase of a run log's records (phases in order of first appearance);
    records without a numeric ``loss`` and an int ``step`` (a phase's closing summary) are skipped,
    and so are phases too short for a trend."""
    by_phase: dict[str, list[tuple[int, float]]] = {}
    for record in records:
        loss, step = record.get("loss"), record.get("step")
        if isinstance(loss, int | float) and isinstance(step, int) and not isinstance(step, bool):
            by_phase.setdefault(str(record.get("phase")), []).append((step, float(loss)))
    trends = (phase_trend(phase, sorted(points), window_steps) for phase, points in by_phase.items())
    return [trend for trend in trends if trend is not None]


def folder_trends(root: Path, window_steps: int = WINDOW_STEPS, *, strict: bool = False) -> list[tuple[str, LossTrend]]:
    """``(run, trend)`` for every phase of every run log below ``root`` (``run``: the log's folder
    relative to ``root``, ``.`` for ``root`` itself), runs in path order.

    Raises:
        ValueError: with ``strict``, a run log that is not UTF-8 JSON lines (:func:`read_run_log`);
            without it, such lines are left out as torn.
    """
    read = read_run_log if strict else read_log
    return [(path.parent.relative_to(root).as_posix(), trend)
            for path in sorted(Path(root).rglob(LOG)) for trend in loss_trends(read(path), window_steps)]


def read_run_log(path: Path) -> list[dict[str, Any]]:
    """The records of the run log ``path`` in order, checked to be JSON lines.

    A last line without its newline that is not JSON is a write torn by a kill and is left
    out; every whole line must be a JSON object (blank lines aside).

    Raises:
        ValueError: the file is not UTF-8 text, or a whole line is not a JSON object (naming the
            file and the line).
    """
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: unreadable run log, {not_utf8(err)}; a run log is JSON lines") from err
    lines = text.split("\n")
    records = []
    for number, line in enumerate(lines, start=1):
        torn = number == len(lines)  # after the last newline: empty, or a write cut short
        record = log_record(line)
        if record is not None:
            records.append(record)
        elif line.strip() and not torn:
            raise ValueError(f"{path}, line {number}: unreadable run log, not a JSON object: {short_repr(line)}")
    return records
