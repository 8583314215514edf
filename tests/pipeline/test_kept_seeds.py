"""A results folder's config.json and results.csv describe each other however a run stops, and a run of
other seeds keeps an earlier seed only when every row of it is of this recipe and the seed is complete."""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import pytest

from deftx.pipeline.config import ConfigError, PipelineConfig, parse_config
from deftx.pipeline.identity import run_identity
from deftx.pipeline.run import run_pipeline
from deftx.train.identity import IdentityMismatchError, normalised
from tests.pipeline.test_pipeline import tiny_pipeline


def records(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def recorded_recipe(results: Path) -> dict:
    """The run identity of the config results/config.json records."""
    return normalised(run_identity(parse_config(json.loads((results / "config.json").read_text()))))


@pytest.fixture
def finished(tmp_path, tiny_model_dir, monkeypatch) -> PipelineConfig:
    """A finished tiny run of seed 0 (task_sft.k 0.05), no baseline."""
    monkeypatch.setenv("DEFTX_CACHE", str(tmp_path / "cache"))
    config = replace(tiny_pipeline(tmp_path, tiny_model_dir, "run", {"lt-sft": None}), step_store=None,
                     baseline=False)
    run_pipeline(config, log=lambda _: None)
    return config


def test_a_stopped_run_of_another_recipe_leaves_the_folder_as_it_was_and_its_seeds_are_not_mixed_in(finished):
    """Run A (k 0.05, seed 0) finished; run B (k 0.02, seed 0) is refused by the step check, or crashes
    after the refusal is overridden; run C (k 0.02, seed 1) must refuse seed 0 (recipe A), not keep it."""
    results = Path(finished.output_dir)
    other = replace(finished, task_sft=replace(finished.task_sft, k=0.02))
    before = (results / "results.csv").read_bytes()
    with pytest.raises(IdentityMismatchError):
        run_pipeline(other, log=lambda _: None)
    assert recorded_recipe(results) == normalised(run_identity(finished)), "config.json still describes A's rows"
    assert (results / "results.csv").read_bytes() == before

    import deftx.pipeline.run as run_module

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed between steps")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run_module, "task_sfts", killed)
        with pytest.raises(KeyboardInterrupt):
            run_pipeline(other, log=lambda _: None, overwrite=True)
    assert recorded_recipe(results) == normalised(run_identity(finished)), "a kill leaves config.json as A's"
    assert (results / "results.csv").read_bytes() == before
    with pytest.raises(ConfigError, match=r"holds the results of seeds \[0\] of another recipe "
                                          r"\(task_sft\.k: 0\.05 -> 0\.02\)"):
        run_pipeline(replace(other, seeds=(1,)), log=lambda _: None)
    assert (results / "results.csv").read_bytes() == before, "nothing written before the refusal"


def test_each_row_records_its_recipe_so_a_config_json_of_another_recipe_does_not_pass_it_off(finished):
    """config.json rewritten to recipe B (by hand, or by an older version that wrote it first) over recipe
    A's rows: the rows' own digests still refuse them to a run of recipe B."""
    results = Path(finished.output_dir)
    other = replace(finished, task_sft=replace(finished.task_sft, k=0.02))
    recorded = json.loads((results / "config.json").read_text())
    assert recorded["seeds"] == [0]
    recorded["task_sft"]["k"] = 0.02
    (results / "config.json").write_text(json.dumps(recorded))
    assert recorded_recipe(results) == normalised(run_identity(other))
    stamps = {row["recipe"] for row in records(results / "results.csv")}
    assert len(stamps) == 1 and len(stamps.pop()) == 12
    with pytest.raises(ConfigError, match=r"holds the results of seeds \[0\] of another recipe \(their rows' "
                                          r"recipe [0-9a-f]{12} is not this config's [0-9a-f]{12}, and config\.json "
                                          r"does not describe them\)"):
        run_pipeline(replace(other, seeds=(1,)), log=lambda _: None)


def test_a_kept_seed_missing_a_row_of_its_grid_is_refused_naming_the_cell_and_how_to_rerun_it(finished):
    """A results.csv that lost a row of seed 0 (cut short by an older in-place write): a run of seed 1
    refuses to keep seed 0, whose average would silently be over fewer targets."""
    from deftx.pipeline.run import seed_cells
    from deftx.pipeline.workspace import Workspace

    results = Path(finished.output_dir)
    rows = records(results / "results.csv")
    grid = seed_cells(Workspace.open(finished, log=lambda _: None))
    written = {(r["benchmark"], r["split"], r["source"], r["target"], r["method"],
                float(r["language_scale"]) if r["language_scale"] else None) for r in rows}
    assert written == {(c.benchmark, c.split, c.source, c.target, c.method, c.language_scale) for c in grid}, \
        "the grid is what a whole seed writes"
    assert len(written) == len(rows) == 4, "(indonesian, madurese) × lt-sft (at scale 1.25, and without language SFT)"
    dropped = next(r for r in rows if r["target"] == "madurese" and r["language_scale"])
    with (results / "results.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(r for r in rows if r is not dropped)
    before = (results / "results.csv").read_bytes()
    cell = f"nusax test indonesian->madurese {dropped['method']} scale {float(dropped['language_scale']):g}"
    with pytest.raises(ConfigError, match=rf"results\.csv lacks rows of seeds \[0\] that this recipe scores "
                                          rf"\(seed 0: {cell}\).*Re-run them first \(seeds: \[0\] in the config, "
                                          rf"or --seeds 0"):
        run_pipeline(replace(finished, seeds=(1,)), log=lambda _: None)
    assert (results / "results.csv").read_bytes() == before
    run_pipeline(finished, log=lambda _: None)
    assert len(records(results / "results.csv")) == len(rows), "re-running seed 0 writes it whole"


def test_copying_the_run_logs_into_a_results_folder_inside_the_output_folder_does_not_copy_the_copies(tmp_path,
                                                                                                      monkeypatch):
    """results_dir under output_dir: each write of the tables copied the earlier copies again, one level deeper."""
    from deftx.pipeline.outputs import copy_run_logs

    log = tmp_path / "seed-0" / "lang" / "madurese" / "log.jsonl"
    log.parent.mkdir(parents=True)
    log.write_text('{"phase": "full", "loss": 1.0}\n')
    monkeypatch.chdir(tmp_path)
    for _ in range(3):
        copy_run_logs(tmp_path, Path("tables") / "logs")
    assert sorted(path.relative_to(tmp_path).as_posix() for path in tmp_path.rglob("log.jsonl")) == [
        "seed-0/lang/madurese/log.jsonl", "tables/logs/seed-0/lang/madurese/log.jsonl"]
    assert (tmp_path / "tables/logs/seed-0/lang/madurese/log.jsonl").read_text() == log.read_text()
