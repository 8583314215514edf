"""What a pipeline run writes under its results folder (:mod:`deftx.pipeline.outputs`), on rows made here."""

from __future__ import annotations

import json
from pathlib import Path

from deftx.eval.report import read_csv
from deftx.eval.zero_shot import EvalRow
from deftx.pipeline.config import PipelineConfig, parse_config
from deftx.pipeline.heldout import HELDOUT_CSV
from deftx.pipeline.layout import seed_runs
from deftx.pipeline.outputs import earlier_seeds, write_outputs
from deftx.pipeline.workspace import Workspace

SIDE_TABLES = ("overlap.csv", "selection.csv", HELDOUT_CSV)


def config_of(tmp_path: Path, methods: dict, seeds: list[int] | None = None) -> PipelineConfig:
    """A NusaX config of ``methods`` (indonesian -> madurese, no baseline) for ``seeds`` (default [0])."""
    return parse_config(
        {
            "name": "run",
            "model": str(tmp_path / "model"),
            "output_dir": str(tmp_path / "run"),
            "seeds": seeds or [0],
            "sources": ["indonesian"],
            "targets": ["madurese"],
            "methods": methods,
            "baseline": False,
        }
    )


def workspace(config: PipelineConfig, tmp_path: Path) -> Workspace:
    """The bookkeeping of a run of ``config`` (nothing loaded: :func:`write_outputs` reads none of it)."""
    out = tmp_path / "run"
    out.mkdir(exist_ok=True)
    return Workspace(config, tmp_path / "model", tmp_path / "data", out, out, tokenizer=None, log=lambda _: None)


def rows_of(seed: int, methods: list[str]) -> list[EvalRow]:
    return [
        EvalRow("nusax", "zero-shot", method, "indonesian", target, seed, 0.5, 0.6, 100, False)
        for method in methods
        for target in ("madurese", "indonesian")
    ]


def test_a_rerun_without_side_rows_leaves_none_of_the_earlier_runs_side_rows(tmp_path):
    """overlap.csv and heldout.csv (and selection.csv, losses.csv) were written only when the run had rows for
    them: a rerun of seed 0 with one method (no mask overlap) and no held-out scoring kept the two-method run's
    seed-0 overlap and held-out rows, which the next run of another seed then kept as its kept seed's."""
    both = config_of(tmp_path, {"lt-sft": None, "deft-x": {"rank": 1}})
    first = workspace(both, tmp_path)
    first.overlaps.append({"kind": "language", "language": "madurese", "seed": 0, "pair": "lt-sft vs deft-x"})
    first.selections += [
        {"kind": "language", "language": "madurese", "seed": 0, "method": method} for method in both.methods
    ]
    first.heldout.append({"seed": 0, "language": "madurese", "method": "deft-x", "scale": 1.0})
    write_outputs(first, rows_of(0, list(both.methods)), 1.0, None, {})
    assert all(read_csv(first.results_dir / name) for name in SIDE_TABLES)

    one = config_of(tmp_path, {"lt-sft": None})
    again = workspace(one, tmp_path)
    again.selections.append({"kind": "language", "language": "madurese", "seed": 0, "method": "lt-sft"})
    write_outputs(again, rows_of(0, ["lt-sft"]), 1.0, None, {})
    for name in ("overlap.csv", HELDOUT_CSV):
        assert read_csv(first.results_dir / name) == [], f"{name}: the two-method run's rows are not this run's"
    assert [row["method"] for row in read_csv(first.results_dir / "selection.csv")] == ["lt-sft"]
    kept = earlier_seeds(config_of(tmp_path, {"lt-sft": None}, seeds=[1]), first.results_dir, set())
    assert kept.seeds == (0,) and [row["method"] for row in kept.selections] == ["lt-sft"]
    assert (kept.overlaps, kept.heldout) == ((), ()), "nothing of the two-method run is kept"


def write_log(run_dir: Path, phases: list[str]) -> None:
    """A run log of ``phases``, each 20 steps of a falling loss."""
    run_dir.mkdir(parents=True, exist_ok=True)
    records = [{"phase": phase, "step": step, "loss": 2.0 - step / 20} for phase in phases for step in range(1, 21)]
    (run_dir / "log.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))


def test_the_losses_report_the_runs_and_phases_of_this_config_not_those_another_config_left(tmp_path):
    """A one-method rerun without the baseline (the run reuses the lt-sft steps of a two-method run with one)
    reported 11 phases in losses.csv where it trains 6: the baseline's, the deft-x task run's two and the
    deft-x branch of each language SFT."""
    seed = tmp_path / "run" / "seed-0"
    for language in ("madurese", "indonesian"):
        write_log(seed / "lang" / language, ["full", "sparse:lt-sft", "sparse:deft-x"])
    for method in ("lt-sft", "deft-x"):
        write_log(seed / "task" / "indonesian" / method, ["full", f"sparse:{method}"])
    write_log(seed / "full" / "indonesian", ["full"])
    one = config_of(tmp_path, {"lt-sft": None})
    assert not one.baseline and one.task_on_source_sft
    ws = workspace(one, tmp_path)
    write_outputs(ws, rows_of(0, ["lt-sft"]), 1.0, None, seed_runs(one, ["madurese", "indonesian"]))
    reported = {(row["run"], row["phase"]) for row in read_csv(ws.results_dir / "losses.csv")}
    assert reported == {
        ("lang/madurese", "full"),
        ("lang/madurese", "sparse:lt-sft"),
        ("lang/indonesian", "full"),
        ("lang/indonesian", "sparse:lt-sft"),
        ("task/indonesian/lt-sft", "full"),
        ("task/indonesian/lt-sft", "sparse:lt-sft"),
    }
    assert "of 6 phases took off" in (ws.results_dir / "results.md").read_text()


def test_seed_runs_name_each_run_folder_of_the_layout_with_its_phases(tmp_path):
    config = parse_config(
        {
            "name": "run",
            "model": "m",
            "output_dir": str(tmp_path),
            "sources": ["indonesian"],
            "targets": ["madurese"],
            "methods": {"lt-sft": None, "deft-x": {"rank": 1}},
            "task_on_source_sft": False,
            "americasnli": {"train_languages": ["aym"], "test_languages": ["bzd"]},
        }
    )
    both = ("full", "sparse:lt-sft", "sparse:deft-x")
    assert seed_runs(config, ["madurese", "indonesian"]) == {
        "lang/madurese": both,
        "lang/indonesian": both,
        "task/indonesian/shared": both,
        "full/indonesian": ("full",),
        "anli/lang/bzd": both,
        "anli/task/pooled/shared": both,
        "anli/full": ("full",),
    }
