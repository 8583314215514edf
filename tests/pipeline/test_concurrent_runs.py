"""Runs at the same time in shared folders (seeds in parallel): appends to a shared ledger or CSV from two
processes keep every line, and a results folder or step work folder that one process is writing is refused
to a second, naming the first, instead of being rewritten or trained over."""

from __future__ import annotations

import csv
import json
import multiprocessing
from pathlib import Path

from deftx.eval.report import append_records
from deftx.pipeline.ablation import append_rows

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

