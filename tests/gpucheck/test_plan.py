"""The stage plan: default budgets fit the 8 minutes, selection, skips and their reasons."""

from __future__ import annotations

import pytest

from deftx.gpucheck.plan import (
    STAGE_NAMES,
    STAGES,
    TOTAL_BUDGET_S,
    Stage,
    plan_lines,
    plan_stages,
    planned_budget,
    with_budgets,
)

TOOLS = {"ncu": True, "compute-sanitizer": True}


def plan(**kwargs):
    settings = {"has_cuda": True, "tools": TOOLS, **kwargs}
    return plan_stages(STAGES, **settings)


def test_every_stage_together_fits_the_eight_minutes_with_room_for_start_up():
    assert TOTAL_BUDGET_S == 480
    assert sum(s.budget_s for s in STAGES) <= TOTAL_BUDGET_S - 10


def test_stage_names_are_unique_and_cover_the_issue_items():
    assert len(set(STAGE_NAMES)) == len(STAGE_NAMES)
    for name in ("install", "environment", "tests", "bench-xlmr", "bench-llama", "histogram", "training", "ncu",
                 "sanitizer"):
        assert name in STAGE_NAMES


def test_on_a_gpu_machine_with_the_tools_every_stage_runs():
    planned = plan()
    assert all(p.runs for p in planned)
    assert planned_budget(planned) == sum(s.budget_s for s in STAGES)


def test_only_and_skip_select_stages_in_plan_order():
    planned = plan(only=("ncu", "bench-llama", "tests"), skip=("tests",))
    running = [p.stage.name for p in planned if p.runs]
    assert running == ["bench-llama", "ncu"]
    reasons = {p.stage.name: p.skip_reason for p in planned}
    assert reasons["tests"] == "skipped (--skip)"
    assert reasons["install"] == "not selected (--only)"


def test_without_cuda_the_profilers_are_skipped_and_say_why():
    planned = {p.stage.name: p for p in plan(has_cuda=False)}
    assert planned["ncu"].skip_reason == "needs CUDA"
    assert planned["sanitizer"].skip_reason == "needs CUDA"
    assert planned["bench-llama"].runs


def test_a_missing_tool_skips_its_stage():
    planned = {p.stage.name: p for p in plan(tools={"ncu": False, "compute-sanitizer": True})}
    assert planned["ncu"].skip_reason == "ncu not found on PATH"
    assert planned["sanitizer"].runs


def test_unknown_stage_names_are_refused_with_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown stage.*bench-gpt.*stages: install"):
        plan(only=("bench-gpt",))
    with pytest.raises(ValueError, match="--skip"):
        plan(skip=("nope",))


def test_budgets_over_the_total_are_refused_before_anything_runs():
    stages = with_budgets(STAGES, {"bench-llama": 300})
    with pytest.raises(ValueError, match="sum to 680 s, over the total budget of 480 s"):
        plan_stages(stages, has_cuda=True, tools=TOOLS)
    planned = plan_stages(stages, only=("bench-llama",), has_cuda=True, tools=TOOLS)
    assert planned_budget(planned) == 300


def test_budget_overrides_must_name_stages_and_be_positive():
    with pytest.raises(ValueError, match="--budget-of"):
        with_budgets(STAGES, {"benchmark": 10})
    with pytest.raises(ValueError, match="positive"):
        with_budgets(STAGES, {"ncu": 0})


def test_plan_lines_show_budgets_skips_and_the_total():
    stages = (Stage("a", 10, "does a"), Stage("bb", 20, "does b", needs_cuda=True))
    lines = plan_lines(plan_stages(stages, has_cuda=False, tools={}), 480)
    assert lines == [
        "  a        10 s  does a",
        "  bb       skip  needs CUDA: does b",
        "  total    10 s  of a 480 s budget",
    ]
