"""The stages of a GPU check, their time budgets, and which of them a run executes.

Budgets are wall seconds for the stage's process, start-up included; the runner kills a
stage at its budget. Together they fit :data:`TOTAL_BUDGET_S` (8 minutes: the issue's
limit, so that a 15-minute GPU lease can run the check twice).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace

TOTAL_BUDGET_S = 480
"""The whole check's budget: 8 minutes."""


@dataclass(frozen=True)
class Stage:
    """One step of the check.

    Attributes:
        name: its command-line name.
        budget_s: wall seconds before the runner kills it.
        what: one line saying what it does.
        needs_cuda: skipped on a run without CUDA.
        tool: an executable it needs on PATH (skipped without it), or None.
    """

    name: str
    budget_s: int
    what: str
    needs_cuda: bool = False
    tool: str | None = None


STAGES: tuple[Stage, ...] = (
    Stage("install", 20, "pip install --no-deps --no-build-isolation --no-index -e . onto this python "
          "(the native library by its cmake)"),
    Stage("environment", 10, "versions (python, torch, triton, transformers, numpy, CUDA, driver), "
          "nvidia-smi, device properties, tools on PATH"),
    Stage("tests", 115, "python -m pytest -m cuda over tests/ (the CUDA kernel tests)"),
    Stage("ceilings", 10, "measured copy bandwidth (fp32, bf16) and matmul rate (bf16, fp32)"),
    Stage("histogram", 15, "the top-k's two full passes (count, partition) and its fallback radix pass "
          "over a few GB vs a read-only and a tl.histogram-only kernel, at the copy bandwidth"),
    Stage("bench-xlmr", 80, "XLM-R base fp32 at full size: top-k, compose, masked AdamW, rSVD scores, "
          "rSVD factors vs the dense baselines, interleaved"),
    Stage("bench-llama", 90, "Llama-2-7B bf16 at full size: top-k, compose, masked AdamW, rSVD scores "
          "vs the dense baselines, interleaved"),
    Stage("training", 30, "two-phase sparse fine-tuning of a tiny BERT (SparseFineTuner), save, apply, "
          "revert; LT-SFT selection on the device vs on the CPU"),
    Stage("ncu", 35, "ncu --clock-control none on one launch of each kernel", needs_cuda=True, tool="ncu"),
    Stage("sanitizer", 65, "compute-sanitizer memcheck + racecheck over one small case of each kernel",
          needs_cuda=True, tool="compute-sanitizer"),
)

STAGE_NAMES: tuple[str, ...] = tuple(s.name for s in STAGES)


@dataclass(frozen=True)
class PlannedStage:
    """A stage and what the run does with it: run it, or skip it and why."""

    stage: Stage
    skip_reason: str | None = None

    @property
    def runs(self) -> bool:
        return self.skip_reason is None


def check_names(names: Iterable[str], option: str) -> tuple[str, ...]:
    """``names`` if every one is a stage; else a ValueError naming the unknown ones."""
    names = tuple(names)
    unknown = [n for n in names if n not in STAGE_NAMES]
    if unknown:
        raise ValueError(f"{option}: unknown stage(s) {', '.join(unknown)}; stages: {', '.join(STAGE_NAMES)}")
    return names


def with_budgets(stages: Iterable[Stage], budgets: Mapping[str, int]) -> tuple[Stage, ...]:
    """The stages with ``budgets`` (name -> seconds) replacing their default budgets."""
    check_names(budgets, "--budget-of")
    bad = {name: s for name, s in budgets.items() if s <= 0}
    if bad:
        raise ValueError(f"--budget-of: budgets must be positive seconds, got {bad}")
    return tuple(replace(s, budget_s=budgets.get(s.name, s.budget_s)) for s in stages)


def plan_stages(
    stages: Iterable[Stage],
    *,
    only: Iterable[str] = (),
    skip: Iterable[str] = (),
    has_cuda: bool,
    tools: Mapping[str, bool],
    total_budget_s: float = TOTAL_BUDGET_S,
) -> list[PlannedStage]:
    """Which stages run: ``only`` (if given) minus ``skip``, minus those needing CUDA or a
    missing tool. Raises ValueError on unknown names, or if the running stages' budgets
    exceed ``total_budget_s``."""
    stages = tuple(stages)
    only, skip = check_names(only, "--only"), check_names(skip, "--skip")
    planned = []
    for stage in stages:
        if only and stage.name not in only:
            reason = "not selected (--only)"
        elif stage.name in skip:
            reason = "skipped (--skip)"
        elif stage.needs_cuda and not has_cuda:
            reason = "needs CUDA"
        elif stage.tool is not None and not tools.get(stage.tool, False):
            reason = f"{stage.tool} not found on PATH"
        else:
            reason = None
        planned.append(PlannedStage(stage, reason))
    total = planned_budget(planned)
    if total > total_budget_s:
        raise ValueError(
            f"the selected stages' budgets sum to {total} s, over the total budget of {total_budget_s:g} s; "
            "lower some with --budget-of NAME=SECONDS or run fewer stages"
        )
    return planned


def planned_budget(planned: Iterable[PlannedStage]) -> int:
    """Seconds the running stages may take together."""
    return sum(p.stage.budget_s for p in planned if p.runs)


def plan_lines(planned: list[PlannedStage], total_budget_s: float) -> list[str]:
    """The plan as printed by ``--dry-run`` and at the start of a run."""
    width = max(len("total"), *(len(p.stage.name) for p in planned))
    lines = []
    for p in planned:
        state = f"{p.stage.budget_s:>4d} s" if p.runs else "  skip"
        note = p.stage.what if p.runs else f"{p.skip_reason}: {p.stage.what}"
        lines.append(f"  {p.stage.name.ljust(width)}  {state}  {note}")
    lines.append(f"  {'total'.ljust(width)}  {planned_budget(planned):>4d} s  of a {total_budget_s:g} s budget")
    return lines
