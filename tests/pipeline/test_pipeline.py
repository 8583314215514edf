from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from deftx.pipeline.config import PipelineConfig, parse_config
from deftx.pipeline.head import head_curve_table, head_report_line
from deftx.pipeline.run import run_pipeline
from deftx.sft import SparseDiff
from deftx.train.checkpoint import folder_bytes
from deftx.train.identity import IdentityMismatchError

METRICS = {
    "steps": 20, "seconds": 90.0, "heldout_seconds": 6.0, "cache_hit": False, "corpora": ["nusax", "americasnlp"],
    "initial_accuracy": 0.0125, "final_accuracy": 0.25,
    "train_curve": [{"step": 10, "loss": 7.0, "accuracy": 0.1}, {"step": 20, "loss": 6.0, "accuracy": 0.2345}],
    "heldout_curve": [
        {"step": 0, "seconds": 3.0, "groups": {"nusax": {"accuracy": 0.01}, "americasnlp": {"accuracy": 0.0}}},
        {"step": 10, "seconds": 45.0, "groups": {"nusax": {"accuracy": 0.12}, "americasnlp": {"accuracy": 0.05}}},
        {"step": 20, "seconds": 90.0, "groups": {"nusax": {"accuracy": 0.2}, "americasnlp": {"accuracy": 0.0625}}},
    ],
}


def test_head_curve_table_one_row_per_heldout_point():
    assert head_curve_table(METRICS).splitlines() == [
        "| step | min | training accuracy | held out nusax | held out americasnlp |",
        "|---:|---:|---:|---:|---:|",
        "| 0 | 0.1 |  | 0.010 | 0.000 |",
        "| 10 | 0.8 | 0.100 | 0.120 | 0.050 |",
        "| 20 | 1.5 | 0.234 | 0.200 | 0.062 |",
    ]


def test_head_curve_table_empty_without_heldout_text():
    assert head_curve_table({**METRICS, "heldout_curve": []}) == ""


def test_head_report_line_names_cost_and_first_last_accuracy():
    line = head_report_line(METRICS)
    assert line.startswith("MLM head warm-up (trained): 20 steps on nusax+americasnlp text, 90 s when trained "
                           "(6 s of it held-out scoring)")
    assert "training batches 0.013 -> 0.250" in line
    assert "held out: nusax 0.010 -> 0.200, americasnlp 0.000 -> 0.062" in line


def tiny_pipeline(tmp_path: Path, model_dir: Path, run: str, methods: dict) -> PipelineConfig:
    return parse_config(tiny_mapping(tmp_path, model_dir, run, methods))


def tiny_mapping(tmp_path: Path, model_dir: Path, run: str, methods: dict) -> dict:
    """The config file's mapping of a tiny pipeline (seconds on a tiny model)."""
    return {
        "name": run, "model": str(model_dir), "output_dir": str(tmp_path / run), "step_store": str(tmp_path / "store"),
        "seeds": [0], "sources": ["indonesian"], "targets": ["madurese"], "methods": methods,
        "training": {"batch_size": 8, "max_length": 32, "save_steps": 50, "logging_steps": 1, "progress": False},
        "mlm_head": {"steps": 2, "batch_size": 8, "seq_len": 32},
        "language_sft": {"k": 0.01, "full": {"steps": 2}, "sparse": {"steps": 2}},
        "task_sft": {"k": 0.05, "full": {"steps": 2}, "sparse": {"steps": 2}},
        "full_finetune": {"steps": 2}, "eval_batch_size": 128,
    }


def test_a_run_links_the_equal_finished_steps_of_a_step_store(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("DEFTX_CACHE", str(tmp_path / "cache"))
    first = tiny_pipeline(tmp_path, tiny_model_dir, "first", {"lt-sft": None})
    run_pipeline(first, log=lambda _: None)
    deft_x = {"rank": 1, "method": "exact"}
    second = tiny_pipeline(tmp_path, tiny_model_dir, "second", {"lt-sft": None, "deft-x": deft_x})
    run_pipeline(second, log=lambda _: None)

    def same_file(relative: str) -> bool:
        return os.stat(tmp_path / "first" / relative).st_ino == os.stat(tmp_path / "second" / relative).st_ino

    for language in ("madurese", "indonesian"):
        log = (tmp_path / "second" / f"seed-0/lang/{language}/log.jsonl").read_text()
        assert '"phase": "full"' not in log and '"phase": "sparse:deft-x"' in log, f"{language}: phase 1 is linked"
        assert same_file(f"seed-0/lang/{language}/lt-sft/sft.safetensors"), f"{language}: the lt-sft branch too"
        assert not (tmp_path / "second" / f"seed-0/lang/{language}/theta1.safetensors").exists(), "θ1 left the run"
    assert same_file("seed-0/task/indonesian/lt-sft/lt-sft/sft.safetensors"), "the task SFT on an equal source SFT"
    assert same_file("seed-0/full/indonesian/final.safetensors"), "the baseline"
    assert (tmp_path / "second" / "seed-0/lang/madurese/deft-x/sft.safetensors").is_file(), "deft-x branch trained"

    def rows(run: str) -> set[tuple[str, str, str]]:
        with (tmp_path / run / "results.csv").open() as handle:
            return {(r["method"], r["target"], r["macro_f1"]) for r in csv.DictReader(handle)
                    if not r["method"].startswith("deft-x")}

    assert rows("first") == rows("second"), "linked steps give the rows they gave where they were trained"
    text = (tmp_path / "second" / "results.md").read_text()
    assert (f"step store {tmp_path / 'store'}: this invocation linked 6 finished steps instead of training them "
            "(full fine-tuning ×1, language sft branch ×2, language sft phase 1 ×2, task sft branch ×1)") in text
    disk = json.loads((tmp_path / "second" / "disk.json").read_text())
    assert disk["total"] == sum(v for k, v in disk.items() if k != "total") > 0
    assert disk["seed-0/lang/madurese"] == folder_bytes(tmp_path / "second" / "seed-0/lang/madurese")
    assert f"| seed-0/full/indonesian | {disk['seed-0/full/indonesian']:,} |" in text


def test_a_changed_config_is_refused_naming_the_change_until_overwrite(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("DEFTX_CACHE", str(tmp_path / "cache"))
    config = tiny_pipeline(tmp_path, tiny_model_dir, "run", {"lt-sft": None})
    assert config.baseline, "the dry run checks the baseline too"
    run_pipeline(config, log=lambda _: None)
    task_sft = tmp_path / "run" / "seed-0/task/indonesian/lt-sft/lt-sft/sft.safetensors"
    language_sft = tmp_path / "run" / "seed-0/lang/indonesian/lt-sft/sft.safetensors"
    before = SparseDiff.load(task_sft).k, os.stat(language_sft).st_mtime_ns
    smaller = replace(config, task_sft=replace(config.task_sft, k=0.02))
    for trainer_folder in (tmp_path / "run").rglob("trainer"):
        trainer_folder.rmdir()  # the Trainers' empty output folders: a copy of the runs (git, rsync) may lack them
    files = {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*")}
    folders = {path for path in files if path.is_dir()}
    change = rf"branch lt-sft: k: {before[0]} -> (\d+)"
    plan = planned_statuses(smaller)
    assert {plan[language_sft], plan[language_sft.parents[1] / "lt-sft/sft.safetensors"]} == {"done"}, plan
    refused = re.fullmatch(rf"REFUSED: the run stops here, its results are of other settings \(--overwrite "
                           rf"retrains it\): {change}", plan[task_sft])
    assert refused, "the dry run says what the run does: it refuses the changed task SFT (it said done)"
    assert re.fullmatch(rf"to retrain \(--overwrite\): its results are of other settings: {change}",
                        planned_statuses(smaller, overwrite=True)[task_sft])
    assert {path for path in tmp_path.rglob("*") if path.is_dir()} == folders, "the dry run made no folder"
    assert {path: path.stat().st_mtime_ns for path in tmp_path.rglob("*")} == files, "the dry run wrote nothing"
    with pytest.raises(IdentityMismatchError, match=rf"task/indonesian/lt-sft holds results of another run: "
                                                    rf"branch lt-sft: k: {before[0]} -> {refused[1]}\."):
        run_pipeline(smaller, log=lambda _: None)
    run_pipeline(smaller, log=lambda _: None, overwrite=True)
    after = SparseDiff.load(task_sft)
    assert after.k == after.nnz == round(before[0] * 0.02 / 0.05) == int(refused[1])
    assert os.stat(language_sft).st_mtime_ns == before[1], "the unchanged language SFT was kept"
    assert set(planned_statuses(smaller).values()) == {"done"}


def test_a_tiny_pipeline_keeps_a_quarter_of_what_it_kept_with_model_copies(tmp_path, tiny_model_dir, monkeypatch):
    """θ0 and θ1 were kept per SFT run and the baseline as a whole model (issue #19: 2.2 GB for a tiny run)."""
    monkeypatch.setenv("DEFTX_CACHE", str(tmp_path / "cache"))
    config = replace(tiny_pipeline(tmp_path, tiny_model_dir, "run", {"lt-sft": None}), step_store=None)
    run_pipeline(config, log=lambda _: None)
    out = tmp_path / "run"
    names = {path.name for path in out.rglob("*") if path.is_file()}
    assert not names & {"theta0.safetensors", "theta1.safetensors", "mask.safetensors"}
    sfts = [SparseDiff.load(path) for path in out.glob("seed-0/*/**/lt-sft/sft.safetensors")]
    assert len(sfts) == 3, "two language SFTs, one task SFT"
    model_copies = 0
    for diff in sfts:
        trained = sum(info.numel * info.dtype.itemsize for info in diff.params.values())
        dense = sum(tensor.numel() * tensor.element_size() for tensor in diff.dense.values())
        model_copies += 2 * trained + dense   # θ0 (trained + dense parameters) and θ1 (trained ones)
    model_copies += sum(path.stat().st_size for path in tiny_model_dir.glob("*.safetensors"))   # the baseline
    disk = json.loads((out / "disk.json").read_text())
    assert disk["total"] == sum(folder_bytes(out / folder) for folder in disk if folder != "total")
    assert 4 * folder_bytes(out) <= model_copies, (folder_bytes(out), model_copies)


def test_a_run_of_other_seeds_adds_them_to_the_results_folder_of_the_same_recipe(tmp_path, tiny_model_dir,
                                                                                  monkeypatch):
    """results.csv (and selection.csv, overlap.csv) keep the seeds a run does not train when the folder's
    config.json records the same recipe; another recipe's seeds are refused, naming the change, or
    dropped with overwrite. Nothing of the earlier seeds is rewritten differently."""
    from deftx.pipeline.config import ConfigError

    monkeypatch.setenv("DEFTX_CACHE", str(tmp_path / "cache"))
    config = replace(tiny_pipeline(tmp_path, tiny_model_dir, "run", {"lt-sft": None, "deft-x": {"rank": 1}}),
                     step_store=None)
    results = tmp_path / "run"

    def records(name: str) -> list[dict[str, str]]:
        with (results / name).open(newline="") as handle:
            return list(csv.DictReader(handle))

    table = run_pipeline(config, log=lambda _: None)
    assert table.endswith("phases took off less than 5% of their loss — read their rows with care.\n"), \
        "the tiny run's phases hardly train, and the printed table says so"
    seed0 = {name: records(name) for name in ("results.csv", "selection.csv", "overlap.csv")}
    lines: list[str] = []
    run_pipeline(replace(config, seeds=(1,)), log=lines.append)
    assert f"keeping seeds [0] already in {results / 'results.csv'} (same recipe)" in lines
    assert not any("may differ by more than the seed" in line for line in lines), "same versions: no note"
    ledger = [json.loads(line) for line in (results / "invocations.jsonl").read_text().splitlines()]
    assert [record["environment"]["torch"] for record in ledger] == [torch.__version__] * 2
    for name, earlier in seed0.items():
        now = records(name)
        assert {r["seed"] for r in now} == {"0", "1"}, name
        assert [r for r in now if r["seed"] == "0"] == earlier, f"{name}: seed 0's lines as they were"
    assert json.loads((results / "config.json").read_text())["seeds"] == [0, 1]
    assert {r["seeds"] for r in records("summary.csv")} == {"2"}
    assert {r["seed"] for r in records("losses.csv")} == {"0", "1"}, "the kept seed's phases too"
    disk = json.loads((results / "disk.json").read_text())
    assert {folder.split("/")[0] for folder in disk if folder != "total"} == {"seed-0", "seed-1"}, (
        "the kept seed's run folders too")
    assert disk["total"] == sum(folder_bytes(results / folder) for folder in disk if folder != "total")
    assert "Seeds: [0, 1]." in (results / "results.md").read_text()
    assert f", torch {torch.__version__}, " in (results / "results.md").read_text(), "the versions it ran on"

    other = replace(config, seeds=(2,), task_sft=replace(config.task_sft, k=0.02))
    with pytest.raises(ConfigError, match=r"holds the results of seeds \[0, 1\] of another recipe "
                                          r"\(task_sft\.k: 0\.05 -> 0\.02\): give this run its own --results-dir"):
        run_pipeline(other, log=lambda _: None)
    assert {r["seed"] for r in records("results.csv")} == {"0", "1"}, "nothing written before the refusal"
    run_pipeline(other, log=lines.append, overwrite=True)
    assert f"dropping seeds [0, 1] of another recipe from {results} (--overwrite)" in lines
    assert {r["seed"] for r in records("results.csv")} == {"2"}


def planned_statuses(config: PipelineConfig, overwrite: bool = False) -> dict[Path, str]:
    """Every file ``deftx pipeline --dry-run`` names for ``config``, and what it says the run does with it."""
    from deftx.pipeline.plan import plan_lines

    statuses = {}
    for line in plan_lines(config, overwrite=overwrite):
        named = re.fullmatch(r".* (/\S+\.safetensors) \((.*)\)", line)
        if named:
            statuses[Path(named[1])] = named[2]
    return statuses


def planned_files(config: PipelineConfig) -> dict[Path, bool]:
    """Every file ``deftx pipeline --dry-run`` names for ``config``, and whether it says it is done."""
    from deftx.pipeline.plan import plan_lines

    files = {}
    for line in plan_lines(config):
        for status in ("done", "to run"):
            if line.endswith(f" ({status})"):
                files[Path(line[: -len(status) - 3].rsplit(" ", 1)[-1])] = status == "done"
    return files


def trained_files(output_dir: Path) -> set[Path]:
    """The SFT and baseline files a run wrote under ``output_dir``."""
    return {*output_dir.rglob("sft.safetensors"), *output_dir.rglob("final.safetensors")}


def assert_run_trains_exactly_its_plan(config: PipelineConfig) -> dict[Path, bool]:
    """Before the run the plan names its files as to run; after it, as done, and they are all it wrote."""
    before = planned_files(config)
    assert before and not any(before.values()), before
    run_pipeline(config, log=lambda _: None)
    after = planned_files(config)
    assert after == dict.fromkeys(before, True), {path for path, done in after.items() if not done}
    written = trained_files(Path(config.output_dir))
    assert written == set(before), (sorted(written - set(before)), sorted(set(before) - written))
    return before


@pytest.mark.parametrize("on_source", [True, False], ids=["task-on-source-sft", "shared-task-run"])
def test_a_nusax_run_trains_exactly_the_files_its_dry_run_plan_names(tmp_path, tiny_model_dir, monkeypatch,
                                                                    on_source):
    """The plan and the run take every step folder from one layout (deftx.pipeline.layout): language
    SFTs, task SFTs (their own runs on the source SFT, or one shared run) and the baseline."""
    monkeypatch.setenv("DEFTX_CACHE", str(tmp_path / "cache"))
    mapping = {**tiny_mapping(tmp_path, tiny_model_dir, "run", {"lt-sft": None, "deft-x": {"rank": 1}}),
               "step_store": None, "task_on_source_sft": on_source}
    planned = assert_run_trains_exactly_its_plan(parse_config(mapping))
    task_runs = {path.parent.parent.name for path in planned if "/task/" in path.as_posix()}
    assert task_runs == ({"lt-sft", "deft-x"} if on_source else {"shared"}), task_runs
    assert len(planned) == 2 * 2 + 2 + 1, "two language SFTs and the task SFTs, two branches each; the baseline"
    assert_losses_report_every_phase(tmp_path / "run")


def assert_losses_report_every_phase(results: Path) -> None:
    """losses.csv has one row per phase of every run log of the run, and results.md counts them."""
    logged = set()
    for log in results.rglob("log.jsonl"):
        run = log.parent.relative_to(results / "seed-0").as_posix()
        logged |= {(run, json.loads(line)["phase"]) for line in log.read_text().splitlines()}
    with (results / "losses.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["run"], r["phase"]) for r in rows} == logged and len(rows) == len(logged), (rows, logged)
    assert {r["seed"] for r in rows} == {"0"}
    flat = sum(r["verdict"] != "fell" for r in rows)
    assert f"{flat} of {len(rows)} phases took off less than 5% of their loss" in (results / "results.md").read_text()


def test_an_americasnli_only_run_trains_what_its_dry_run_plan_lists_and_no_nusax_step(tmp_path, tiny_model_dir,
                                                                                     monkeypatch):
    """With no NusaX targets the pipeline runs AmericasNLI alone: the plan lists no NusaX step (it once
    listed the source's, which the run skips), and the run writes exactly the files the plan names."""
    from deftx.pipeline.plan import plan_lines

    monkeypatch.setenv("DEFTX_CACHE", str(tmp_path / "cache"))
    mapping = {**tiny_mapping(tmp_path, tiny_model_dir, "anli", {"lt-sft": None, "deft-x": {"rank": 1}}),
               "targets": [], "step_store": None,
               "americasnli": {"train_languages": ["aym"], "test_languages": ["bzd", "tar"], "max_train_examples": 16}}
    config = parse_config(mapping)
    planned = plan_lines(config)
    steps = [line for line in planned if line[0].isdigit() and not line.startswith("1. MLM head")]
    assert steps and all(" AmericasNLI " in line for line in steps), steps
    assert not any("indonesian" in line for line in planned), planned
    files = assert_run_trains_exactly_its_plan(config)
    assert len(files) == 2 * 2 + 1 + 2, "two language SFTs and the task SFT, two branches each; the baseline"
    out = tmp_path / "anli"
    assert not (out / "seed-0" / "lang").exists() and not (out / "seed-0" / "task").exists(), "no NusaX step ran"
    with (out / "results.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {r["benchmark"] for r in rows} == {"americasnli"} and {r["target"] for r in rows} == {"bzd", "tar"}
    from deftx.eval.zero_shot import EvalRow
    from deftx.pipeline.outputs import Cell
    from deftx.pipeline.run import seed_cells
    from deftx.pipeline.workspace import Workspace

    assert seed_cells(Workspace.open(config, log=lambda _: None)) == {Cell.of(EvalRow.from_record(r)) for r in rows}, \
        "a kept seed is checked against the grid a whole seed writes"


def test_the_losses_section_groups_phases_by_run_over_seeds():
    from deftx.pipeline.outputs import loss_lines

    def row(seed, run, phase, first, last, verdict):
        return {"seed": seed, "run": run, "phase": phase, "steps": 100, "window": 50, "first_loss": first,
                "last_loss": last, "verdict": verdict}

    rows = [row(0, "task", "full", 1.0, 0.5, "fell"), row(0, "task", "sparse:a", 0.8, 0.4, "fell"),
            row(1, "lang/x", "full", 8.0, 7.9, "hardly trained"), row(1, "task", "full", 1.2, 0.5, "fell"),
            row(1, "task", "sparse:a", 0.8, 0.8, "hardly trained")]
    lines = loss_lines(rows)
    assert lines[0].endswith("2 of 5 phases took off less than 5% of their loss — read their rows with care.")
    assert lines[4:7] == ["| lang/x | full | 100 | 8.000 → 7.900 | +1.2% | 1 |",
                          "| task | full | 100 | 1.100 → 0.500 | +54.5% | — |",
                          "| task | sparse:a | 100 | 0.800 → 0.600 | +25.0% | 1 |"]
    assert loss_lines([]) == []


def test_the_losses_section_names_a_non_finite_phase_as_such_not_as_one_that_hardly_trained():
    """Seed 1 logged one NaN loss mid-phase: its windows fell by 55% (as seed 0's), so it did not take
    off less than 5% of its loss; the section names it non-finite."""
    from deftx.pipeline.outputs import loss_lines
    from deftx.train.losses import loss_trends

    def trend(loss):
        return loss_trends([{"phase": "full", "step": step, "loss": loss(step)} for step in range(1, 201)])[0]

    falling = trend(lambda step: 3.0 - step / 100)
    with_nan = trend(lambda step: float("nan") if step == 100 else 3.0 - step / 100)
    # first window: steps 1-50, mean 3 - 25.5 / 100; last: steps 151-200, mean 3 - 175.5 / 100
    assert (with_nan.first, with_nan.last) == pytest.approx((2.745, 1.245))
    lines = loss_lines([{"seed": 0, "run": "lang/x", **falling.as_row()},
                        {"seed": 1, "run": "lang/x", **with_nan.as_row()}])
    assert lines[0].endswith("0 of 2 phases took off less than 5% of their loss, 1 logged a non-finite loss (NaN or "
                             "Inf) — read their rows with care.")
    assert lines[4] == "| lang/x | full | 200 | 2.745 → 1.245 | +54.6% | 1 (non-finite) |"


def test_kept_seeds_are_flagged_when_their_invocations_ran_on_other_versions_or_recorded_none(tmp_path):
    from deftx.eval.report import append_invocation
    from deftx.pipeline.outputs import kept_seeds_note

    ledger = tmp_path / "invocations.jsonl"
    now = {"commit": "b", "torch": "2.13.0+cpu", "transformers": "5.25.0"}
    append_invocation(ledger, "deftx pipeline c.yaml --seeds 0", 1.0, {**now, "commit": "a"})
    assert kept_seeds_note([0], ledger, now) is None, "another commit alone is the normal course of work"
    append_invocation(ledger, "deftx pipeline c.yaml --seeds 1", 1.0, {**now, "transformers": "5.17.0"})
    append_invocation(ledger, "deftx pipeline c.yaml --seeds 2", 1.0)
    assert kept_seeds_note([0, 1, 2], ledger, now) == (
        "seeds [0, 1, 2] are kept from earlier invocations, of which 1 of 3 recorded no versions and some ran on "
        "other versions (transformers 5.17.0 -> 5.25.0): their rows and this invocation's may differ by more "
        "than the seed")


def test_the_run_says_how_many_texts_fill_the_token_limit():
    """The pipeline cuts texts at training.max_length as `deftx evaluate` does, and now says so as it does
    (madurese test: 10 of 400 at 128 e5 tokens), where it cut them without a word."""
    from types import SimpleNamespace

    from deftx.pipeline.run import note_cut
    from deftx.train.task import at_token_limit

    examples = [{"input_ids": list(range(n))} for n in (3, 4, 5, 1, 4)]
    assert at_token_limit(examples, 4) == 3 and at_token_limit(examples, 6) == 0
    lines: list[str] = []
    ws = SimpleNamespace(config=SimpleNamespace(training=SimpleNamespace(max_length=4)), log=lines.append)
    note_cut(ws, "madurese test", examples)
    note_cut(ws, "indonesian train", examples[:1])
    assert lines == ["  madurese test: 3 of 5 texts reach training.max_length 4 tokens (longer ones cut)"]
