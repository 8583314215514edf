"""Seeds of a pipeline study as independent units, run within one short GPU visit.

``python -m deftx.gpucheck.study CONFIG --seeds 0 1 2 --out OUT --budget 500`` runs one
``deftx pipeline CONFIG --seeds S`` per seed (and, with ``--ablate``, one ``deftx ablate`` per
variant and seed), each in its own process stopped at the visit's deadline. After every unit
the output folder is refreshed, so a visit cut short still returns every unit that finished:

* ``study.json``: per unit its command, status (``ok``, ``failed``, ``timeout``, ``not started``),
  exit code and wall seconds, and the visit's settings;
* ``<name>-seeds.csv``: the result rows of the pipeline units that finished, all seeds in one table
  (``deftx paired`` reads it; tables of several visits merge there);
* ``<name>-ablate.csv``: the same for the ablation units;
* ``study-logs.tar.gz``: each unit's log and result files.

A unit is not started when the time left is under the time it is taken to need
(:func:`unit_estimate`: ``--min-unit-seconds`` before any has run, the first unit's time, then the
longest after the first, which alone also did the visit's one-off work): its seed is left for the
next visit. Stopped by SIGTERM or SIGHUP (the device call's time limit), the visit stops the running
unit with everything it started, records it as ``stopped`` and refreshes the output folder once more.

The data root can arrive as one archive (``--data-archive``, extracted once into the work
folder) and the e5 model as packed folders (``--e5-source``, see ``deftx e5-pack``), since only
the checkout travels to the GPU machine.
"""

from __future__ import annotations

import argparse
import csv
import lzma
import os
import sys
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from deftx.gpucheck import processes
from deftx.gpucheck.outputs import bundle, returnable_problems, write_json
from deftx.text import repeated

RESULT_FILES: tuple[str, ...] = ("results.csv", "ablation.csv", "summary.csv", "results.md", "timings.json",
                                 "selection.csv", "overlap.csv", "mlm_head.json", "variants.json")
"""The files of a finished unit's results folder that the visit keeps (the rest stays on the machine)."""
LOG_BUNDLE = "study-logs.tar.gz"
MARGIN_S = 5.0
"""Seconds kept back at the deadline for the last refresh of the output folder."""
UNIT_SETS_THIS = "set-by-each-unit"
"""The output and results folders a config is checked with: each unit passes its own."""


@dataclass(frozen=True)
class Unit:
    """One independent piece of a study: a command whose results land in ``results_dir``.

    kind: ``pipeline`` or ``ablate`` (names the merged CSV the unit's rows go to).
    label: ``seed-3`` or ``steps-200-seed-1``: the unit's folder in the log bundle.
    table: the unit's result table in ``results_dir`` (``results.csv`` or ``ablation.csv``).
    """

    kind: str
    label: str
    command: tuple[str, ...]
    results_dir: Path
    table: str = "results.csv"


@dataclass
class UnitRecord:
    """What became of a unit: status ``ok`` / ``failed`` / ``timeout`` / ``stopped`` / ``not started``."""

    kind: str
    label: str
    command: list[str]
    status: str = "not started"
    exit_code: int | None = None
    wall_s: float | None = None
    rows: int = 0
    why: str = ""


@dataclass
class Visit:
    """The state of one visit, written to ``study.json`` after every unit."""

    name: str
    device: str
    budget_s: float
    records: list[UnitRecord] = field(default_factory=list)


def pipeline_units(config: Path, seeds: Sequence[int], device: str, work: Path) -> list[Unit]:
    """One ``deftx pipeline`` per seed, each writing into its own results folder under ``work`` (no held-out
    masked-LM check: a visit's time goes to the zero-shot rows)."""
    units = []
    for seed in seeds:
        out = work / "pipeline" / f"seed-{seed}"
        command = (sys.executable, "-m", "deftx", "pipeline", str(config), "--seeds", str(seed), "--device", device,
                   "--output-dir", str(work / "runs" / "pipeline"), "--results-dir", str(out), "--no-heldout")
        units.append(Unit("pipeline", f"seed-{seed}", command, out))
    return units


def ablation_units(config: Path, variants: Sequence[str], seeds: Sequence[int], device: str,
                   work: Path) -> list[Unit]:
    """One ``deftx ablate`` per variant and seed (seed-major: all variants of seed 0 first; no held-out check)."""
    units = []
    for seed in seeds:
        for variant in variants:
            label = f"{variant}-seed-{seed}"
            out = work / "ablate" / label
            command = (sys.executable, "-m", "deftx", "ablate", str(config), "--seeds", str(seed), "--variants",
                       variant, "--device", device, "--output-dir", str(work / "runs" / "ablate"),
                       "--results-dir", str(out), "--no-heldout")
            units.append(Unit("ablate", label, command, out, table="ablation.csv"))
    return units


def merged_rows(visit: Visit, units: Sequence[Unit], kind: str) -> tuple[list[str], list[dict[str, str]]]:
    """The header and rows of every finished ``kind`` unit's ``results.csv``, in unit order."""
    header: list[str] = []
    rows: list[dict[str, str]] = []
    for unit, record in zip(units, visit.records, strict=True):
        table = unit.results_dir / unit.table
        if unit.kind != kind or record.status != "ok" or not table.is_file():
            continue
        with table.open(newline="") as handle:
            reader = csv.DictReader(handle)
            header = header or list(reader.fieldnames or [])
            if list(reader.fieldnames or []) != header:
                raise ValueError(f"{table}: columns {reader.fieldnames} differ from the other units' {header}")
            rows.extend(reader)
    return header, rows


def write_csv(path: Path, header: list[str], rows: list[dict[str, str]]) -> None:
    """``rows`` under ``header`` (atomically)."""
    tmp = path.parent / f".{path.name}.tmp"
    with tmp.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)


def refresh_outputs(visit: Visit, units: Sequence[Unit], work: Path, out: Path) -> None:
    """``study.json``, the merged CSVs and the log bundle, from what has finished so far."""
    out.mkdir(parents=True, exist_ok=True)
    for kind in ("pipeline", "ablate"):
        header, rows = merged_rows(visit, units, kind)
        if rows:
            write_csv(out / f"{visit.name}-{'seeds' if kind == 'pipeline' else 'ablate'}.csv", header, rows)
    write_json(out / "study.json", asdict(visit))
    logs = work / "logs"
    if logs.is_dir():
        bundle(logs, out / LOG_BUNDLE)
    problems = returnable_problems(out)
    if problems:
        raise RuntimeError(f"{out} would not come back whole: {'; '.join(problems)}")


def keep_unit_files(unit: Unit, logs: Path) -> None:
    """Copy the unit's kept result files beside its log in ``logs/<label>/``."""
    target = logs / unit.label
    for name in RESULT_FILES:
        source = unit.results_dir / name
        if source.is_file():
            (target / name).write_bytes(source.read_bytes())


def row_count(unit: Unit) -> int:
    """Result rows the unit wrote (0 without its table)."""
    table = unit.results_dir / unit.table
    if not table.is_file():
        return 0
    with table.open(newline="") as handle:
        return sum(1 for _ in csv.DictReader(handle))


def unit_outcome(code: int | None, cap_s: float, last_line: str) -> str:
    """Why a unit that ran did not finish (empty when it did): stopped at the visit's deadline (``code``
    None, after ``cap_s`` seconds), or its log's last line (its error)."""
    if code is None:
        stopped = f"stopped at the visit's deadline, {cap_s:.0f} s after it started"
        return f"{stopped} (log's last line: {last_line})" if last_line else stopped
    return "" if code == 0 else last_line


def unit_estimate(walls: Sequence[float], min_unit_s: float) -> float:
    """Seconds the next unit is taken to need, from the wall seconds of the units run so far (in order):
    ``min_unit_s`` before any ran, the first one's alone, then the longest after the first (the first also
    converts the e5 model and warms the MLM head up, which the later units load from the cache)."""
    if not walls:
        return min_unit_s
    return max(walls[1:]) if len(walls) > 1 else walls[0]


def run_units(visit: Visit, units: Sequence[Unit], work: Path, out: Path, *, deadline: float,
              min_unit_s: float, env: dict[str, str], say: Callable[[str], None] = print) -> Visit:
    """Run ``units`` in order until the deadline (a ``time.monotonic()`` value); refresh ``out`` after each."""
    visit.records = [UnitRecord(u.kind, u.label, list(u.command)) for u in units]
    logs = work / "logs"
    walls: list[float] = []
    refresh_outputs(visit, units, work, out)
    for index, (unit, record) in enumerate(zip(units, visit.records, strict=True)):
        left = deadline - time.monotonic() - MARGIN_S
        needed = unit_estimate(walls, min_unit_s)
        if left < needed:
            record.why = f"{left:.0f} s left, under the {needed:.0f} s a unit may take: left for the next visit"
            say(f"[study] {unit.label}: not started ({record.why})")
            continue
        say(f"[study] {unit.label}: {' '.join(unit.command[1:])}")
        (logs / unit.label).mkdir(parents=True, exist_ok=True)
        log = logs / unit.label / "log.txt"
        started = time.monotonic()
        try:
            code = processes.run(list(unit.command), Path.cwd(), log, left, env)
        except processes.Stopped as stop:
            record.wall_s, record.status, record.why = round(time.monotonic() - started, 1), "stopped", str(stop)
            say(f"[study] {unit.label}: {stop} after {record.wall_s:.0f} s")
            for later in visit.records[index + 1:]:
                later.why = f"the visit was {stop} before it"
            keep_unit_files(unit, logs)
            refresh_outputs(visit, units, work, out)
            raise
        record.wall_s = round(time.monotonic() - started, 1)
        record.exit_code = code
        record.status = "timeout" if code is None else ("ok" if code == 0 else "failed")
        record.rows = row_count(unit) if code == 0 else 0
        record.why = unit_outcome(code, left, processes.last_line(log))
        walls.append(record.wall_s)
        keep_unit_files(unit, logs)
        say(f"[study] {unit.label}: {record.status} in {record.wall_s:.0f} s ({record.rows} rows)"
            + (f": {record.why}" if record.why else ""))
        refresh_outputs(visit, units, work, out)
    return visit


def unpacked_data(archive: Path, work: Path) -> Path:
    """The data root inside ``archive`` (a tar of the data root's folders), extracted once into ``work/data``.

    Raises:
        ValueError: the archive is truncated, damaged or not a tar (nothing is marked extracted).
    """
    root = work / "data"
    marker = root / ".extracted"
    if not marker.is_file():
        root.mkdir(parents=True, exist_ok=True)
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(root, filter="data")
        except (tarfile.TarError, EOFError, lzma.LZMAError, zlib.error) as err:
            raise ValueError(f"--data-archive {archive} cannot be extracted ({type(err).__name__}: {err}): "
                             "carry the archive `make gpu-carry` wrote, whole") from err
        marker.write_text(str(archive) + "\n")
    return root


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m deftx.gpucheck.study",
        description=__doc__.split("\n\n")[0] + " Each seed is an independent unit whose rows come back even "
                    "when the visit ends early; `deftx paired` merges the tables of several visits.",
        epilog="example (on the GPU machine): python -m deftx.gpucheck.study configs/nusax-e5-small-h200.yaml "
               "--seeds 0 1 2 3 4 --out $OUT --budget 520 --data-archive .carry/data.tar.xz --e5-source .carry/e5",
    )
    parser.add_argument("config", type=Path, help="pipeline config of the study")
    parser.add_argument("--seeds", type=int, nargs="+", default=[], help="pipeline seeds to run, in order")
    parser.add_argument("--out", type=Path, required=True, help="output folder (at most 8 files come back)")
    parser.add_argument("--budget", type=float, required=True, help="seconds for the whole visit")
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu", "auto"), help="device of every unit")
    parser.add_argument("--name", help="prefix of the merged CSVs (default: the config's file stem)")
    parser.add_argument("--ablate", type=Path, help="ablation config whose --variants run after the seeds")
    parser.add_argument("--variants", nargs="+", default=[], help="ablation variants (with --ablate)")
    parser.add_argument("--ablate-seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the variants")
    parser.add_argument("--work-dir", type=Path, help="where units write (default: a new temp folder)")
    parser.add_argument("--data-archive", type=Path, help="tar(.xz) of the data root, extracted once")
    parser.add_argument("--e5-source", type=Path, help="folder packed by `deftx e5-pack` (sets DEFTX_E5_SOURCE)")
    parser.add_argument("--min-unit-seconds", type=float, default=60.0,
                        help="time a unit is assumed to need before any has run (default 60)")
    return parser


def visit_env(args: argparse.Namespace, work: Path) -> dict[str, str]:
    """The environment every unit gets: data root and e5 source when given."""
    env: dict[str, str] = {}
    if args.data_archive is not None:
        env["DEFTX_DATA_DIR"] = str(unpacked_data(args.data_archive, work).resolve())
    if args.e5_source is not None:
        env["DEFTX_E5_SOURCE"] = str(args.e5_source.resolve())
    return env


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse a visit that would do nothing or name missing inputs, before any work."""
    if not args.seeds and not args.variants:
        parser.error("nothing to run: give --seeds and/or --ablate CONFIG --variants ...")
    if args.variants and args.ablate is None:
        parser.error("--variants needs --ablate CONFIG")
    listed = (("--seeds", args.seeds), ("--variants", args.variants), ("--ablate-seeds", args.ablate_seeds))
    for option, values in listed:
        twice = repeated(values)
        if twice:
            parser.error(f"{option} {' '.join(map(str, twice))} given twice: each unit runs once (its rows would "
                         "be merged twice)")
    for path in (args.config, args.ablate, args.data_archive, args.e5_source):
        if path is not None and not path.exists():
            parser.error(f"{path} does not exist")
    if args.e5_source is not None:
        from deftx.models.e5 import packed_source_problems

        problems = packed_source_problems(args.e5_source)
        if problems:
            parser.error(f"--e5-source {args.e5_source} is incomplete ({'; '.join(problems)}): every folder "
                         "`deftx e5-pack` wrote must be there, those carried by an earlier call too")
    if args.budget <= MARGIN_S:
        parser.error(f"--budget must be over {MARGIN_S:g} seconds")
    problem = config_problem(args)
    if problem:
        parser.error(problem)


def config_problem(args: argparse.Namespace) -> str | None:
    """Why the pipeline config or the ablation config and its ``--variants`` would fail every unit (each
    unit would start a process only to refuse them, seed after seed), or None."""
    from deftx.pipeline.ablation import chosen_variants, load_ablation
    from deftx.pipeline.config import ConfigError, load_config

    try:
        load_config(args.config)
        if args.ablate is not None:
            ablation = load_ablation(args.ablate, output_dir=UNIT_SETS_THIS, results_dir=UNIT_SETS_THIS)
            chosen_variants(ablation, args.variants)
    except (ConfigError, OSError) as err:
        return f"{err} (every unit would fail on it)"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    check_args(parser, args)
    deadline = time.monotonic() + args.budget
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="deftx-study-"))
    work.mkdir(parents=True, exist_ok=True)
    units = pipeline_units(args.config, args.seeds, args.device, work)
    if args.ablate is not None:
        units += ablation_units(args.ablate, args.variants, args.ablate_seeds, args.device, work)
    visit = Visit(args.name or args.config.stem, args.device, args.budget)
    try:
        env = {**visit_env(args, work), "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "8")}
    except ValueError as err:
        parser.error(str(err))
    try:
        with processes.stopping_on_signals():
            run_units(visit, units, work, args.out, deadline=deadline, min_unit_s=args.min_unit_seconds, env=env)
    except processes.Stopped as stop:
        print(f"[study] {stop}; outputs in {args.out}")
        return stop.exit_status
    done = sum(r.status == "ok" for r in visit.records)
    print(f"[study] {done} of {len(units)} units finished; outputs in {args.out}")
    return 0 if done == len(units) else 1


if __name__ == "__main__":
    sys.exit(main())
