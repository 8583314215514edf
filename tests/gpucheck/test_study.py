"""A study visit: seeds as independent units, a deadline, outputs that come back after every unit."""

from __future__ import annotations

import csv
import json
import sys
import tarfile
import time
from pathlib import Path

import pytest

from deftx.gpucheck import study
from deftx.gpucheck.study import Unit, Visit, ablation_units, main, pipeline_units, run_units, unpacked_data

HEADER = "method,target,seed,macro_f1"
VALID_CONFIG = "name: c\ntargets: [balinese]\n"
"""The smallest pipeline config the study accepts (NusaX, Indonesian to Balinese)."""


def fake_unit(tmp_path: Path, label: str, body: str, kind: str = "pipeline") -> Unit:
    """A unit whose command is a tiny python program run in ``results_dir``'s parent."""
    out = tmp_path / "work" / kind / label
    program = f"import pathlib, sys, time\nout = pathlib.Path({str(out)!r})\nout.mkdir(parents=True, exist_ok=True)\n"
    return Unit(kind, label, (sys.executable, "-c", program + body), out)


def writes_rows(seed: int, value: float) -> str:
    return (f"(out / 'results.csv').write_text('{HEADER}\\n' + 'lt-sft,balinese,{seed},{value}\\n' + "
            f"'deft-x,balinese,{seed},{value + 0.01}\\n')\nprint('trained seed {seed}')\n")


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def visit_of(tmp_path: Path, units: list[Unit], budget_s: float, min_unit_s: float = 0.0) -> tuple[Visit, Path]:
    out = tmp_path / "out"
    visit = run_units(Visit("study", "cpu", budget_s), units, tmp_path / "work", out,
                      deadline=time.monotonic() + budget_s, min_unit_s=min_unit_s, env={}, say=lambda _: None)
    return visit, out


def test_every_finished_seed_comes_back_in_one_table_and_a_failed_one_is_named(tmp_path):
    units = [fake_unit(tmp_path, "seed-0", writes_rows(0, 0.61)),
             fake_unit(tmp_path, "seed-1", "sys.exit(3)\n"),
             fake_unit(tmp_path, "seed-2", writes_rows(2, 0.65))]
    visit, out = visit_of(tmp_path, units, budget_s=120)
    assert [(r.label, r.status, r.exit_code, r.rows) for r in visit.records] == [
        ("seed-0", "ok", 0, 2), ("seed-1", "failed", 3, 0), ("seed-2", "ok", 0, 2)]
    rows = read_rows(out / "study-seeds.csv")
    assert [(r["method"], r["seed"], r["macro_f1"]) for r in rows] == [
        ("lt-sft", "0", "0.61"), ("deft-x", "0", "0.62"), ("lt-sft", "2", "0.65"), ("deft-x", "2", "0.66")]
    doc = json.loads((out / "study.json").read_text())
    assert [r["status"] for r in doc["records"]] == ["ok", "failed", "ok"]
    with tarfile.open(out / "study-logs.tar.gz") as tar:
        names = set(tar.getnames())
    assert {"logs/seed-0/log.txt", "logs/seed-0/results.csv", "logs/seed-1/log.txt"} <= names
    with tarfile.open(out / "study-logs.tar.gz") as tar:
        assert tar.extractfile("logs/seed-0/log.txt").read() == b"trained seed 0\n"
    assert sorted(p.name for p in out.iterdir()) == ["study-logs.tar.gz", "study-seeds.csv", "study.json"]


def test_a_unit_past_the_deadline_is_stopped_and_the_next_is_left_for_another_visit(tmp_path):
    units = [fake_unit(tmp_path, "seed-0", writes_rows(0, 0.5)),
             fake_unit(tmp_path, "seed-1", "time.sleep(60)\n"),
             fake_unit(tmp_path, "seed-2", writes_rows(2, 0.5))]
    started = time.monotonic()
    visit, out = visit_of(tmp_path, units, budget_s=12)
    assert time.monotonic() - started < 20, "the sleeping unit is killed at the deadline"
    assert [r.status for r in visit.records] == ["ok", "timeout", "not started"]
    assert visit.records[1].why.startswith("stopped at the visit's deadline"), visit.records[1].why
    assert "left for the next visit" in visit.records[2].why
    assert {r["seed"] for r in read_rows(out / "study-seeds.csv")} == {"0"}


def test_no_unit_starts_when_the_time_left_is_under_the_assumed_unit_time(tmp_path):
    units = [fake_unit(tmp_path, "seed-0", writes_rows(0, 0.5))]
    visit, out = visit_of(tmp_path, units, budget_s=30, min_unit_s=60)
    assert [r.status for r in visit.records] == ["not started"]
    assert not (tmp_path / "work" / "pipeline" / "seed-0").exists(), "nothing ran"
    assert json.loads((out / "study.json").read_text())["records"][0]["status"] == "not started"


def test_units_name_the_device_and_a_results_folder_each(tmp_path):
    config = tmp_path / "study.yaml"
    seeds = pipeline_units(config, [3, 4], "cuda", tmp_path)
    assert [u.label for u in seeds] == ["seed-3", "seed-4"]
    assert seeds[0].command[1:] == ("-m", "deftx", "pipeline", str(config), "--seeds", "3", "--device", "cuda",
                                    "--output-dir", str(tmp_path / "runs" / "pipeline"),
                                    "--results-dir", str(tmp_path / "pipeline" / "seed-3"), "--no-heldout")
    variants = ablation_units(config, ["reference", "steps-200"], [0, 1], "cuda", tmp_path)
    assert [u.label for u in variants] == ["reference-seed-0", "steps-200-seed-0", "reference-seed-1",
                                           "steps-200-seed-1"]
    assert {u.table for u in variants} == {"ablation.csv"} and len({u.results_dir for u in variants}) == 4
    assert all(u.command[-1] == "--no-heldout" for u in variants)


def test_the_data_archive_is_extracted_once(tmp_path):
    source = tmp_path / "src" / "nusax"
    source.mkdir(parents=True)
    (source / "README.md").write_text("data\n")
    archive = tmp_path / "data.tar.xz"
    with tarfile.open(archive, "w:xz") as tar:
        tar.add(source, arcname="nusax")
    root = unpacked_data(archive, tmp_path / "work")
    assert (root / "nusax" / "README.md").read_text() == "data\n"
    (root / "nusax" / "README.md").write_text("changed\n")
    assert unpacked_data(archive, tmp_path / "work") == root
    assert (root / "nusax" / "README.md").read_text() == "changed\n", "not extracted a second time"


@pytest.mark.parametrize(("argv", "message"), [
    (["--out", "o", "--budget", "100"], "nothing to run"),
    (["--out", "o", "--budget", "100", "--variants", "steps-200"], "--variants needs --ablate"),
    (["--out", "o", "--budget", "3", "--seeds", "0"], "--budget must be over"),
    (["--out", "o", "--budget", "100", "--seeds", "0", "--data-archive", "missing.tar.xz"], "does not exist"),
])
def test_a_visit_that_would_do_nothing_or_lacks_an_input_is_refused_before_any_work(tmp_path, capsys, argv,
                                                                                   message):
    config = tmp_path / "c.yaml"
    config.write_text(VALID_CONFIG)
    with pytest.raises(SystemExit) as exit_info:
        main([str(config), *argv])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_a_failed_unit_names_its_last_log_line_in_the_record_and_the_output(tmp_path):
    lines = []
    units = [fake_unit(tmp_path, "seed-0", "print('loading'); print('ValueError: part missing', file=sys.stderr)\n"
                                           "sys.exit(1)\n"),
             fake_unit(tmp_path, "seed-1", writes_rows(1, 0.5))]
    visit = run_units(Visit("study", "cpu", 60), units, tmp_path / "work", tmp_path / "out",
                      deadline=time.monotonic() + 60, min_unit_s=0, env={}, say=lines.append)
    assert [(r.status, r.why) for r in visit.records] == [("failed", "ValueError: part missing"), ("ok", "")]
    assert next(line for line in lines if line.startswith("[study] seed-0: failed in ")).endswith(
        " s (0 rows): ValueError: part missing")
    records = json.loads((tmp_path / "out" / "study.json").read_text())["records"]
    assert records[0]["why"] == "ValueError: part missing"


def write_packed(folder: Path, present: dict[str, bytes]) -> None:
    """A `deftx e5-pack` folder whose manifest lists 0/w.part0 (3 bytes) and 1/w.part3 (2 bytes); only
    ``present`` (path -> content) is written."""
    (folder / "1").mkdir(parents=True)
    (folder / "1" / "manifest.json").write_text(json.dumps({"files": {}, "parts": [
        {"file": "w", "path": "0/w.part0", "bytes": 3, "sha256": ""},
        {"file": "w", "path": "1/w.part3", "bytes": 2, "sha256": ""}]}))
    for path, content in present.items():
        (folder / path).parent.mkdir(exist_ok=True)
        (folder / path).write_bytes(content)


def test_an_e5_source_missing_a_folder_is_refused_before_any_work(tmp_path, capsys):
    config, packed, out = tmp_path / "c.yaml", tmp_path / "e5", tmp_path / "out"
    config.write_text(VALID_CONFIG)
    write_packed(packed, {"1/w.part3": b"ab"})
    with pytest.raises(SystemExit) as exit_info:
        main([str(config), "--seeds", "0", "--out", str(out), "--budget", "100", "--e5-source", str(packed)])
    assert exit_info.value.code == 2
    assert f"{packed / '0' / 'w.part0'}: part missing" in capsys.readouterr().err
    assert not out.exists(), "refused before any work"


def test_packed_source_problems_names_missing_and_short_parts(tmp_path):
    from deftx.models.e5 import packed_source_problems

    write_packed(tmp_path / "whole", {"0/w.part0": b"abc", "1/w.part3": b"de"})
    assert packed_source_problems(tmp_path / "whole") == []
    write_packed(tmp_path / "short", {"0/w.part0": b"ab", "1/w.part3": b"de"})
    assert packed_source_problems(tmp_path / "short") == [
        f"{tmp_path / 'short' / '0' / 'w.part0'}: 2 bytes, the manifest says 3"]
    assert packed_source_problems(tmp_path / "none") == [
        f"{tmp_path / 'none'}: no manifest.json (has every folder of `deftx e5-pack` arrived?)"]


def test_a_truncated_data_archive_is_refused_before_any_work(tmp_path, capsys):
    source = tmp_path / "src" / "nusax"
    source.mkdir(parents=True)
    (source / "train.csv").write_bytes(bytes(range(256)) * 4000)
    whole = tmp_path / "whole.tar.xz"
    with tarfile.open(whole, "w:xz") as tar:
        tar.add(source, arcname="nusax")
    archive = tmp_path / "data.tar.xz"
    archive.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    config, out = tmp_path / "c.yaml", tmp_path / "out"
    config.write_text(VALID_CONFIG)
    with pytest.raises(SystemExit) as exit_info:
        main([str(config), "--seeds", "0", "--out", str(out), "--budget", "100", "--data-archive", str(archive),
              "--work-dir", str(tmp_path / "work")])
    assert exit_info.value.code == 2
    assert f"--data-archive {archive} cannot be extracted" in capsys.readouterr().err
    assert not out.exists(), "refused before any work"


def test_a_seed_given_twice_is_refused_before_any_work(tmp_path, capsys):
    config, out = tmp_path / "c.yaml", tmp_path / "out"
    config.write_text(VALID_CONFIG)
    with pytest.raises(SystemExit) as exit_info:
        main([str(config), "--seeds", "0", "1", "0", "--out", str(out), "--budget", "100"])
    assert exit_info.value.code == 2
    assert "--seeds 0 given twice" in capsys.readouterr().err
    assert not out.exists(), "refused before any work"


def test_the_first_units_one_off_work_does_not_keep_a_later_unit_that_fits_from_starting(tmp_path, monkeypatch):
    monkeypatch.setattr(study, "MARGIN_S", 1.0)
    units = [fake_unit(tmp_path, "seed-0", "time.sleep(5)\n" + writes_rows(0, 0.5)),
             fake_unit(tmp_path, "seed-1", "time.sleep(1.5)\n" + writes_rows(1, 0.5)),
             fake_unit(tmp_path, "seed-2", "time.sleep(1.5)\n" + writes_rows(2, 0.5))]
    visit, out = visit_of(tmp_path, units, budget_s=12.5, min_unit_s=1)
    assert [r.status for r in visit.records] == ["ok", "ok", "ok"], [r.why for r in visit.records]
    assert [r["seed"] for r in read_rows(out / "study-seeds.csv")] == ["0", "0", "1", "1", "2", "2"]


@pytest.mark.parametrize(("walls", "needed"), [([], 60.0), ([200.0], 200.0), ([200.0, 90.0, 110.0], 110.0),
                                               ([30.0, 20.0], 20.0)])
def test_a_unit_is_taken_to_need_the_longest_unit_after_the_first_once_one_ran(walls, needed):
    assert study.unit_estimate(walls, 60.0) == needed


@pytest.mark.parametrize(("config_text", "extra", "message"), [
    ("name: c\ntraning: {}\n", [], "unknown keys ['traning']"),
    (VALID_CONFIG, ["--ablate", "ABLATION", "--variants", "nope"], "unknown variants ['nope']"),
])
def test_a_config_every_unit_would_refuse_is_refused_once_before_any_work(tmp_path, capsys, config_text, extra,
                                                                          message):
    config, ablation, out = tmp_path / "c.yaml", tmp_path / "a.yaml", tmp_path / "out"
    config.write_text(config_text)
    ablation.write_text("name: a\nbase: c.yaml\nvariants: {reference: {}}\n")
    argv = [str(ablation) if arg == "ABLATION" else arg for arg in extra]
    with pytest.raises(SystemExit) as exit_info:
        main([str(config), "--seeds", "0", "1", "--out", str(out), "--budget", "100",
              "--work-dir", str(tmp_path / "work"), *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err and "every unit would fail on it" in err
    assert not out.exists() and not (tmp_path / "work").exists(), "refused before any work"
