"""Bad input to the results-reading commands (``deftx paired``, ``deftx losses``) and to ``evaluate --data``:
one line naming the problem."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from deftx.cli import main
from deftx.eval.paired import KEY_COLUMNS

COLUMNS = [*KEY_COLUMNS, "macro_f1"]
TARGETS = ("acehnese", "balinese", "madurese")


def results_rows(seeds: range = range(3)) -> list[dict[str, str]]:
    """deft-x beats lt-sft by 0.01 on every target and seed."""
    return [{"benchmark": "nusax", "protocol": "zero-shot", "source": "indonesian", "method": method,
             "target": target, "seed": str(seed), "split": "test", "macro_f1": repr(0.5 + bonus + seed / 100)}
            for seed in seeds for target in TARGETS for method, bonus in (("deft-x", 0.01), ("lt-sft", 0.0))]


def write_results(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return path


def paired(results: Path, *options: str) -> list[str]:
    return ["paired", str(results), "--pair", "deft-x:lt-sft", "--resamples", "50", *options]


def error_line(capsys, command: str) -> str:
    """The last stderr line, checked to be ``deftx COMMAND: error: ...`` with no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"deftx {command}: error: "), err
    return last


def argparse_error(capsys, argv: list[str]) -> str:
    with pytest.raises(SystemExit) as raised:
        main(argv)
    assert raised.value.code == 2
    return error_line(capsys, "paired")


def test_paired_refuses_a_target_named_twice(tmp_path, capsys):
    results = write_results(tmp_path / "results.csv", results_rows())
    line = argparse_error(capsys, paired(results, "--targets", "madurese,madurese,acehnese"))
    assert "argument --targets: target madurese named more than once" in line


@pytest.mark.parametrize("targets", ["", ",", "acehnese,,balinese"])
def test_paired_refuses_an_empty_target_name(tmp_path, capsys, targets):
    results = write_results(tmp_path / "results.csv", results_rows())
    line = argparse_error(capsys, paired(results, "--targets", targets))
    assert "argument --targets: expected comma-separated target names" in line


def test_paired_strips_spaces_around_target_names(tmp_path, capsys):
    results = write_results(tmp_path / "results.csv", results_rows())
    assert main(paired(results, "--targets", " madurese, acehnese ")) == 0
    out = capsys.readouterr().out
    assert "| mean of 2 targets | deft-x − lt-sft | +1.00 |" in out
    assert "| madurese | deft-x − lt-sft |" in out and "| balinese |" not in out


def test_paired_help_says_targets_are_a_comma_separated_list(capsys):
    with pytest.raises(SystemExit):
        main(["paired", "--help"])
    assert "comma-separated list" in " ".join(capsys.readouterr().out.split())


def test_paired_names_a_target_without_rows_and_the_targets_found(tmp_path, capsys):
    results = write_results(tmp_path / "results.csv", results_rows())
    assert main(paired(results, "--targets", "klingon,acehnese")) == 2
    line = error_line(capsys, "paired")
    assert "no test rows for target 'klingon' (targets with test rows: acehnese, balinese, madurese)" in line
    assert "method" not in line


def test_paired_names_the_file_line_and_column_of_a_seed_that_is_not_an_integer(tmp_path, capsys):
    rows = results_rows()
    rows[1] = dict(rows[1], seed="x")
    results = write_results(tmp_path / "results.csv", rows)
    assert main(paired(results, "--targets", ",".join(TARGETS))) == 2
    assert f"{results}, line 3, column seed: 'x', not an integer" in error_line(capsys, "paired")


def test_paired_names_a_file_that_is_not_utf8(tmp_path, capsys):
    results = write_results(tmp_path / "results.csv", results_rows())
    results.write_bytes(results.read_bytes().replace(b"balinese", b"bal\xefnese"))
    assert main(paired(results, "--targets", ",".join(TARGETS))) == 2
    assert f"{results}: not UTF-8 text" in error_line(capsys, "paired")


def test_paired_reads_a_utf8_file_with_a_byte_order_mark(tmp_path, capsys):
    results = write_results(tmp_path / "results.csv", results_rows())
    results.write_bytes(b"\xef\xbb\xbf" + results.read_bytes())
    assert main(paired(results, "--targets", ",".join(TARGETS))) == 0
    assert "| mean of 3 targets | deft-x − lt-sft | +1.00 |" in capsys.readouterr().out


def test_paired_names_the_rows_of_a_merged_file_without_the_metric_column(tmp_path, capsys):
    first = write_results(tmp_path / "a.csv", results_rows(range(2)))
    second = tmp_path / "b.csv"
    with second.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*KEY_COLUMNS, "accuracy"])
        writer.writeheader()
        writer.writerows({**{c: r[c] for c in KEY_COLUMNS}, "accuracy": r["macro_f1"]}
                         for r in results_rows(range(2, 4)))
    assert main(["paired", str(first), str(second), "--pair", "deft-x:lt-sft", "--targets", ",".join(TARGETS)]) == 2
    assert ("no column 'macro_f1' for deft-x on acehnese, seed 2: its results file has no such column"
            in error_line(capsys, "paired"))


def log_text(steps: int = 4) -> str:
    return "".join(json.dumps({"phase": "full", "step": s, "loss": 2.0 / s}) + "\n" for s in range(1, steps + 1))


@pytest.mark.parametrize(("text", "line"), [
    ("this is not a run log\n", 1),
    (log_text() + "oops\n" + log_text(), 5),
    (log_text() + "[1, 2]\n", 5),
])
def test_losses_names_a_log_that_is_not_json_lines_and_its_line(tmp_path, capsys, text, line):
    log = tmp_path / "run" / "log.jsonl"
    log.parent.mkdir()
    log.write_text(text)
    assert main(["losses", str(tmp_path)]) == 2
    message = error_line(capsys, "losses")
    assert f"{log}, line {line}: unreadable run log, not a JSON object" in message
    assert "holds no run log" not in message


def test_losses_names_a_log_that_is_not_utf8(tmp_path, capsys):
    log = tmp_path / "log.jsonl"
    log.write_bytes(b"\x89PNG\r\n\x1a\n")
    assert main(["losses", str(tmp_path)]) == 2
    assert f"{log}: unreadable run log, not UTF-8 text" in error_line(capsys, "losses")


def test_losses_still_leaves_out_a_torn_last_line(tmp_path, capsys):
    log = tmp_path / "run" / "log.jsonl"
    log.parent.mkdir()
    log.write_text(log_text() + '{"phase": "full", "st')
    assert main(["losses", str(tmp_path)]) == 0
    assert "| run | full | 4 | 1.5000 | 0.5833 |" in capsys.readouterr().out


@pytest.fixture(scope="module")
def classifier_with_sft(plain_bert) -> tuple[Path, Path]:
    """The tiny BERT classifier (``plain_bert``) and a task SFT of it."""
    from tests.commands.tiny_classifier import task_sft

    sft = plain_bert.parent / f"{plain_bert.name}-task.safetensors"
    task_sft(plain_bert).save(sft)
    return plain_bert, sft


@pytest.mark.parametrize(("name", "text", "problem"), [
    ("empty.csv", "", "empty file (no header, no rows)"),
    ("header.csv", "text,label\n", "no rows"),
    ("broken.jsonl", '{"text": "a good film", "label": "positive"}\n{"text": oops}\n', "cannot be read"),
    ("cells.csv", "text,label\na good film,positive\n,negative\n", "row 2 (counting data rows from 1) has no 'text'"),
])
def test_evaluate_names_a_data_file_that_is_empty_headed_only_broken_or_has_an_empty_cell(
        tmp_path, capsys, classifier_with_sft, name, text, problem):
    model, sft = classifier_with_sft
    data = tmp_path / name
    data.write_text(text)
    assert main(["evaluate", "--model", str(model), "--task-sft", str(sft), "--data", str(data)]) == 2
    # only the last line: datasets' own logger may report a parse failure before (through a stale stream under capsys)
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"deftx evaluate: error: {data}: {problem}"), last
