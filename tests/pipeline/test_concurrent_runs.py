"""Runs at the same time in shared folders (seeds in parallel): appends to a shared ledger or CSV from two
processes keep every line, and a results folder or step work folder that one process is writing is refused
to a second, naming the first, instead of being rewritten or trained over."""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from deftx.eval.report import append_records
from deftx.files import BusyError
from deftx.pipeline.ablation import append_rows
from deftx.pipeline.run import run_pipeline
from deftx.train.config import PhaseConfig, SparseFineTuningConfig
from deftx.train.identity import owned
from deftx.train.sparse_finetuner import SparseFineTuner
from deftx.train.store import LinkedStepStore
from tests.pipeline.test_pipeline import tiny_pipeline
from tests.train.conftest import tiny_trainer

APPENDS = 100
SPAWN = multiprocessing.get_context("spawn")
WAIT_S = 120


def append_many(folder: Path, who: str, start) -> None:
    """Child: once ``start`` is set, append APPENDS ledger records and ablation.csv rows, one per call."""
    start.wait(WAIT_S)
    for index in range(APPENDS):
        append_records(folder / "invocations.jsonl", [{"who": who, "index": index}])
        append_rows(folder / "ablation.csv", [{"variant": who, "seed": index}])


def test_two_processes_appending_to_one_ledger_and_csv_keep_every_line(tmp_path):
    start = SPAWN.Event()
    children = [SPAWN.Process(target=append_many, args=(tmp_path, who, start)) for who in ("a", "b")]
    for child in children:
        child.start()
    start.set()
    for child in children:
        child.join(WAIT_S)
        assert child.exitcode == 0
    ledger = [json.loads(line) for line in (tmp_path / "invocations.jsonl").read_text().splitlines()]
    with (tmp_path / "ablation.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    expected = {(who, index) for who in ("a", "b") for index in range(APPENDS)}
    assert sorted((r["who"], r["index"]) for r in ledger) == sorted(expected), "no ledger line lost or doubled"
    assert sorted((r["variant"], int(r["seed"])) for r in rows) == sorted(expected), "no CSV row lost or doubled"


def hold_folder(folder: Path, held, release) -> None:
    """Child: hold ``folder`` as a training step does, until ``release``."""
    with owned(folder):
        held.set()
        release.wait(WAIT_S)


@pytest.mark.filterwarnings("ignore::deftx.train.trainer_contract.TrainerOverrideWarning")
def test_a_work_folder_another_process_trains_in_is_refused_naming_it_and_left_alone(tmp_path):
    work = tmp_path / "work"
    held, release = SPAWN.Event(), SPAWN.Event()
    child = SPAWN.Process(target=hold_folder, args=(work, held, release))
    child.start()
    try:
        assert held.wait(WAIT_S)
        config = SparseFineTuningConfig(k=0.1, full=PhaseConfig(steps=2, learning_rate=1e-2),
                                        sparse=PhaseConfig(steps=2, learning_rate=1e-2), selections={"lt-sft": None})
        tuner = SparseFineTuner(tiny_trainer(tmp_path), config, work, progress=False)
        with pytest.raises(BusyError, match=f"work folder {work} is in use by another process \\(pid {child.pid} "):
            tuner.fit()
        assert not work.exists(), "nothing claimed, trained or written"
    finally:
        release.set()
        child.join(WAIT_S)
    assert child.exitcode == 0
    tuner.fit()
    assert (work / "lt-sft" / "sft.safetensors").is_file(), "the folder is free once its holder ends"


def pipeline_paused_at_first_log(root: Path, model: Path, seed: int, started, release) -> None:
    """Child: run seed ``seed`` of the tiny pipeline, pausing at its first log line until ``release``."""
    os.environ["DEFTX_CACHE"] = str(root / "cache")

    def log(_: str) -> None:
        if not started.is_set():
            started.set()
            release.wait(WAIT_S)

    config = replace(tiny_pipeline(root, model, "run", {"lt-sft": None}), seeds=[seed], baseline=False,
                     step_store=None)
    run_pipeline(config, log=log)


def test_a_second_pipeline_run_into_a_busy_results_folder_is_refused_and_the_first_keeps_its_rows(
        tmp_path, tiny_model_dir, monkeypatch):
    """Before, both ran: each rewrote results.csv with its own seed's rows, and the last to write won."""
    monkeypatch.setenv("DEFTX_CACHE", str(tmp_path / "cache"))
    started, release = SPAWN.Event(), SPAWN.Event()
    child = SPAWN.Process(target=pipeline_paused_at_first_log, args=(tmp_path, tiny_model_dir, 1, started, release))
    child.start()
    try:
        assert started.wait(WAIT_S), "the first run is under way"
        config = replace(tiny_pipeline(tmp_path, tiny_model_dir, "run", {"lt-sft": None}), seeds=[0], baseline=False,
                         step_store=None)
        with pytest.raises(BusyError, match=f"results folder {tmp_path / 'run'} is in use by another process "
                                            f"\\(pid {child.pid} .*give this run its own --results-dir"):
            run_pipeline(config, log=lambda _: None)
        assert not (tmp_path / "run" / "seed-0").exists(), "the refused run trained nothing"
    finally:
        release.set()
        child.join(WAIT_S)
    assert child.exitcode == 0
    with (tmp_path / "run" / "results.csv").open(newline="") as handle:
        assert {row["seed"] for row in csv.DictReader(handle)} == {"1"}, "the first run's rows are all there"


def test_two_runs_publishing_an_equal_step_at_once_leave_the_entry_of_one_not_a_mix(tmp_path, monkeypatch):
    """Run a has linked the first of the step's files into the store when run b publishes the whole step; then a
    goes on. Before, each linked the files the entry lacked: a's selection report beside b's SFT (of another
    phase 1 where training is not bit-reproducible, as on a GPU)."""
    store = LinkedStepStore(tmp_path / "store")
    identity, files = {"step": "branch", "k": 1}, ["lt-sft/selection.json", "lt-sft/sft.safetensors"]
    for run in ("a", "b"):
        for name in files:
            (tmp_path / run / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / run / name).write_text(f"run {run}")
    a_linked_one, b_done = threading.Event(), threading.Event()
    link = LinkedStepStore._link

    def pausing_link(source: Path, target: Path, *, own: bool) -> None:
        link(source, target, own=own)
        if threading.current_thread().name == "a" and not a_linked_one.is_set():
            a_linked_one.set()
            b_done.wait(WAIT_S)

    monkeypatch.setattr(LinkedStepStore, "_link", staticmethod(pausing_link))
    run_a = threading.Thread(target=store.publish, args=(tmp_path / "a", identity, files), name="a")
    run_a.start()
    assert a_linked_one.wait(WAIT_S)
    store.publish(tmp_path / "b", identity, files)
    b_done.set()
    run_a.join(WAIT_S)
    entry = store.folder(identity)
    assert {(entry / Path(name).name).read_text() for name in files} == {"run b"}, "the entry of the first to finish"
    assert store.published["branch"] == 1, "kept once"
    assert store.attach(tmp_path / "c", identity, files)
    assert {(tmp_path / "c" / name).read_text() for name in files} == {"run b"}
    assert sorted(path.name for path in store.root.iterdir()) == [entry.name], "no staging folder left"


PUBLISH_UNTIL_KILLED = """
import sys, time
from pathlib import Path
from deftx.train.store import LinkedStepStore
LinkedStepStore._install = staticmethod(lambda *args: (print("staged", flush=True), time.sleep(60)))
LinkedStepStore(Path(sys.argv[1])).publish(Path(sys.argv[2]), {"step": "phase 1"}, ["theta1.safetensors"])
"""


def test_a_publish_killed_halfway_leaves_no_staged_copy_after_the_next_publish(tmp_path):
    """A run killed between staging a step and renaming it into place left the staging folder, a hard link to
    θ1 (e5-small: 470 MB), in the store for good: the next publish of that step removes what a dead process of
    this host staged; a half-published step is never attached."""
    import signal
    import subprocess
    import sys

    store_root, work = tmp_path / "store", tmp_path / "work"
    work.mkdir()
    (work / "theta1.safetensors").write_bytes(b"theta1 of the killed run")
    child = subprocess.Popen([sys.executable, "-c", PUBLISH_UNTIL_KILLED, str(store_root), str(work)],
                             stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2])
    try:
        assert child.stdout.readline().strip() == "staged"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    assert os.stat(work / "theta1.safetensors").st_nlink == 2, "the killed run's staged link"
    store = LinkedStepStore(store_root)
    identity, files = {"step": "phase 1"}, ["theta1.safetensors"]
    assert not store.attach(tmp_path / "other", identity, files), "a half-published step is not there"
    (tmp_path / "next").mkdir()
    (tmp_path / "next" / "theta1.safetensors").write_bytes(b"theta1 of the next run")
    store.publish(tmp_path / "next", identity, files)
    entry = store.folder(identity)
    assert sorted(path.name for path in store_root.iterdir()) == [entry.name], "no staging folder left"
    assert os.stat(work / "theta1.safetensors").st_nlink == 1, "the killed run's file is its own again"
    assert (entry / "theta1.safetensors").read_bytes() == b"theta1 of the next run"
