"""The output files of ``deftx heldout-mlm --csv``, ``deftx paired --out`` and ``deftx bench --out``: an earlier
run's are refused before any work, naming them, unless ``--overwrite`` (as ``deftx evaluate --output``); a
folder where a file goes, and ``--overwrite`` with no output, are refused too."""

from __future__ import annotations

import pytest

from deftx.cli import main
from tests.commands.test_bench_profile_inputs import FAST, TINY, error_line, exit_status
from tests.commands.test_results_inputs import TARGETS, paired, results_rows, write_results

OUR_TARGETS = ("--targets", ",".join(TARGETS))


@pytest.fixture
def tiny_shapes(tmp_path):
    import json

    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return str(path)


def test_paired_refuses_the_files_of_an_earlier_run_until_overwrite(tmp_path, capsys):
    results = write_results(tmp_path / "results.csv", results_rows())
    out = tmp_path / "paired"
    assert main(paired(results, *OUR_TARGETS, "--out", str(out))) == 0
    capsys.readouterr()
    first = {name: (out / name).read_bytes() for name in ("paired.md", "paired.csv", "paired.png")}
    (out / "paired.md").write_text("an earlier study\n")
    assert main(paired(results, *OUR_TARGETS, "--out", str(out))) == 2
    line = error_line(capsys, "paired")
    assert f"--out: {out / 'paired.md'}, {out / 'paired.csv'}, {out / 'paired.png'} already exist" in line
    assert "pass --overwrite to replace them" in line
    assert (out / "paired.md").read_text() == "an earlier study\n", "nothing was replaced"
    assert main(paired(results, *OUR_TARGETS, "--out", str(out), "--overwrite")) == 0
    assert {name: (out / name).read_bytes() for name in first} == first, "--overwrite writes the study again"


def test_paired_refuses_overwrite_without_out_and_an_out_that_is_a_file(tmp_path, capsys):
    results = write_results(tmp_path / "results.csv", results_rows())
    assert main(paired(results, "--overwrite")) == 2
    assert "--overwrite replaces the files of an --out folder, and no --out is given" in error_line(capsys, "paired")
    assert main(paired(results, "--out", str(results))) == 2
    assert f"--out {results}: exists and is not a folder" in error_line(capsys, "paired")


def test_heldout_mlm_refuses_an_earlier_csv_before_reading_the_config(tmp_path, capsys):
    """Checked first: the scoring (minutes on a real run) never starts for a CSV it may not write."""
    earlier = tmp_path / "heldout.csv"
    earlier.write_text("seed,language\n0,madurese\n")
    missing_config = str(tmp_path / "no-such-config.yaml")
    assert exit_status(["heldout-mlm", missing_config, "--csv", str(earlier)]) == 2
    line = error_line(capsys, "heldout-mlm")
    assert f"--csv: {earlier} already exists (an earlier run's): choose another path, or pass --overwrite" in line
    assert earlier.read_text() == "seed,language\n0,madurese\n"
    assert exit_status(["heldout-mlm", missing_config, "--csv", str(tmp_path)]) == 2
    assert f"--csv: {tmp_path} is a folder, where this command writes a file" in error_line(capsys, "heldout-mlm")
    assert exit_status(["heldout-mlm", missing_config, "--overwrite"]) == 2
    assert "--overwrite replaces an earlier --csv file, and no --csv is given" in error_line(capsys, "heldout-mlm")
    assert exit_status(["heldout-mlm", missing_config, "--csv", str(earlier), "--overwrite"]) == 2
    assert "no-such-config.yaml" in error_line(capsys, "heldout-mlm"), "past the check: the config is read"


def test_bench_refuses_the_outputs_of_an_earlier_run_of_the_same_shapes_until_overwrite(tmp_path, capsys,
                                                                                       tiny_shapes):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "cpu_tiny.md").write_text("an earlier table\n")
    assert exit_status(["bench", "--out", str(out), "--model-shapes", tiny_shapes, "--scale", "1", *FAST]) == 2
    line = error_line(capsys, "bench")
    assert f"--out: {out / 'cpu_tiny.md'} already exists (an earlier run's)" in line, line
    assert (out / "cpu_tiny.md").read_text() == "an earlier table\n"
    assert main(["bench", "--out", str(out), "--model-shapes", tiny_shapes, "--scale", "1", *FAST,
                 "--overwrite"]) == 0
    assert (out / "cpu_tiny.md").read_text().startswith("| op | shapes | K |")
    assert (out / "cpu_tiny.json").is_file() and (out / "cpu_tiny.png").is_file()


@pytest.mark.parametrize(("command", "option"), [("paired", "--out"), ("heldout-mlm", "--csv"), ("bench", "--out")])
def test_the_help_says_an_earlier_output_is_refused_until_overwrite(command, option, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--overwrite" in text and "refused unless --overwrite" in text, text
