"""The training / evaluation subcommands: help, clear errors, and one tiny end-to-end run."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
import yaml

from deftx.cli import command_modules, main
from deftx.sft import SparseDiff
from tests.helpers import nusax_plan_root

COMMANDS = ("train-lang", "train-task", "compose", "evaluate", "pipeline")


@pytest.mark.parametrize("command", COMMANDS)
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert f"usage: deftx {command}" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train-lang", "train-task", "pipeline", "heldout-mlm"])
def test_data_dir_help_names_the_config_s_data_dir_as_the_default(command, tmp_path, capsys):
    """Without --data-dir the config's data_dir is read (only a config without one falls back to
    $DEFTX_DATA_DIR): the help's default must say so."""
    with pytest.raises(SystemExit):
        main([command, "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    data_dir_help = help_text.split("--data-dir DATA_DIR ", 1)[1].split(" --", 1)[0]
    assert "config's data_dir" in data_dir_help, data_dir_help
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "nusax").mkdir(parents=True)
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"output_dir": str(tmp_path / "run"), "data_dir": str(elsewhere),
                                       "targets": ["madurese"]}))
    from argparse import Namespace

    from deftx.commands._common import load_pipeline_config

    assert load_pipeline_config(Namespace(config=config, data_dir=None)).data_dir == str(elsewhere)


def test_no_help_text_shows_a_doubled_percent_sign(capsys):
    """argparse %-formats argument and subcommand help, not descriptions: a '%%' there is printed as is."""
    texts = []
    for name in ["", *(module.NAME for module in command_modules())]:
        with pytest.raises(SystemExit):
            main([name, "--help"] if name else ["--help"])
        texts.append(capsys.readouterr().out)
    assert all("%%" not in text for text in texts), [t[:80] for t in texts if "%%" in t]


def test_every_command_module_declares_its_subcommand():
    modules = command_modules()
    assert {m.NAME for m in modules} >= set(COMMANDS) and len({m.NAME for m in modules}) == len(modules)
    for module in modules:
        assert isinstance(module.SUMMARY, str) and isinstance(module.DESCRIPTION, str)
        assert callable(module.add_arguments) and callable(module.run)


def test_missing_config_is_a_clear_error(tmp_path, capsys):
    assert main(["pipeline", str(tmp_path / "absent.yaml")]) == 2
    assert "deftx pipeline: error:" in capsys.readouterr().err


def test_bad_config_value_is_a_clear_error(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text("targets: [madurese]\nlanguage_sft: {k: 2.5}\n")
    assert main(["train-lang", str(path), "--language", "madurese"]) == 2
    assert "language_sft.k" in capsys.readouterr().err


def test_evaluate_rejects_bad_language_sft_spec(tmp_path, capsys):
    task = tmp_path / "task.safetensors"
    task.write_bytes(b"")
    assert main(["evaluate", "--task-sft", str(task), "--lang-sft", "madurese"]) == 2
    assert "LANGUAGE=PATH" in capsys.readouterr().err


def test_evaluate_refuses_a_language_sft_of_a_language_it_does_not_evaluate(tmp_path, capsys):
    """A typo in --lang-sft's language would leave its SFT unused: refused before any file is read."""
    data = tmp_path / "data"
    (data / "madurese").mkdir(parents=True)
    assert main(["evaluate", "--task-sft", str(tmp_path / "absent"), "--data-dir", str(data), "--languages",
                 "madurese", "--lang-sft", f"maduresee={tmp_path / 'lang'}"]) == 2
    err = capsys.readouterr().err
    assert "--lang-sft for maduresee, which is not evaluated (languages: madurese)" in err and err.count("\n") == 1


@pytest.mark.parametrize(("device", "message"), [
    ("cuda", "deftx evaluate: error: device cuda asked for, but torch.cuda.is_available() is false"),
    ("tpu", "deftx evaluate: error: --device: expected one of ['auto', 'cpu', 'cuda'], got 'tpu'"),
])
def test_evaluate_refuses_an_unusable_device_before_loading_anything(tmp_path, monkeypatch, capsys, device, message):
    """The task SFT does not exist: the device is refused first, in one line, exit code 2."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["evaluate", "--task-sft", str(tmp_path / "absent"), "--device", device]) == 2
    err = capsys.readouterr().err
    assert err.startswith(message) and err.count("\n") == 1


def tiny_config(tmp_path, model_dir) -> dict:
    return {
        "name": "tiny", "model": str(model_dir), "output_dir": str(tmp_path / "run"),
        "results_dir": str(tmp_path / "results"),
        "seeds": [0], "sources": ["indonesian"], "targets": ["madurese", "buginese"],
        "methods": {"lt-sft": None, "deft-x": {"rank": 1, "method": "exact"}},
        "training": {"batch_size": 8, "max_length": 32, "save_steps": 50, "logging_steps": 1,
                     "progress": False},
        "mlm_head": {"steps": 2, "batch_size": 8, "seq_len": 32},
        "language_sft": {"k": 0.01, "full": {"steps": 2}, "sparse": {"steps": 2}},
        "task_sft": {"k": 0.05, "full": {"steps": 2}, "sparse": {"steps": 2}},
        "full_finetune": {"steps": 2},
        "eval_batch_size": 128,
        "americasnli": {"train_languages": ["aym"], "test_languages": ["bzd"], "max_train_examples": 48},
    }


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory, tiny_model_dir):
    tmp = tmp_path_factory.mktemp("pipeline")
    path = tmp / "tiny.yaml"
    path.write_text(yaml.safe_dump(tiny_config(tmp, tiny_model_dir)))
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEFTX_CACHE", str(tmp / "cache"))
        code = main(["pipeline", str(path), "--quiet"])
    return tmp, path, code


def test_pipeline_end_to_end_on_a_tiny_model(pipeline_run, capsys):
    tmp, _, code = pipeline_run
    assert code == 0
    results = tmp / "results"
    with (results / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    cells = {(r["method"], r["target"]) for r in rows}
    for method in ("full-ft", "lt-sft", "deft-x", "lt-sft (no lang SFT)"):
        assert {(method, "madurese"), (method, "indonesian")} <= cells
    assert not any(r["target"] == "buginese" for r in rows)
    anli = {(r["method"], r["target"], r["protocol"]) for r in rows if r["benchmark"] == "americasnli"}
    assert {("full-ft", "bzd", "leave-languages-out"), ("deft-x", "bzd", "leave-languages-out")} <= anli
    text = (results / "results.md").read_text()
    assert "buginese: no NusaX test split" in text and "| **avg** |" in text
    assert ("Held-out masked-LM check: none — the AmericasNLI language SFTs trained on every AmericasNLP 2021 split "
            "but test (americasnlp_text_splits: train+dev)") in text
    assert "language SFT text: AmericasNLP 2021 train+dev of each test language" in text
    assert (results / "results.png").is_file() and (results / "overlap.csv").is_file()
    assert list((results / "logs").rglob("log.jsonl"))
    lang = SparseDiff.load(tmp / "run" / "seed-0" / "lang" / "madurese" / "deft-x" / "sft.safetensors")
    assert all(name.startswith("bert.") for name in lang.indices) and not lang.dense
    task = SparseDiff.load(tmp / "run" / "seed-0" / "task" / "indonesian" / "deft-x" / "deft-x" / "sft.safetensors")
    assert set(task.dense) == {"classifier.weight", "classifier.bias"}
    assert not list((tmp / "run").rglob("checkpoint-*")), "finished phases keep no Trainer checkpoints"


@pytest.mark.parametrize("args", [["train-lang", "--language", "madurese"],
                                  ["train-lang", "--language", "bzd", "--americasnlp"],
                                  ["train-task", "--source", "indonesian"]], ids=" ".join)
def test_single_step_commands_reuse_the_pipeline_s_finished_run_and_print_its_files(pipeline_run, capsys, args):
    """train-lang and train-task find the pipeline's step folders (one layout: deftx.pipeline.layout)."""
    tmp, path, _ = pipeline_run
    before = {p: p.stat().st_mtime_ns for p in (tmp / "run").rglob("*.safetensors")}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEFTX_CACHE", str(tmp / "cache"))
        assert main([args[0], str(path), *args[1:]]) == 0
    printed = capsys.readouterr().out
    files = {line.split(": ", 1)[0]: Path(line.split(": ", 1)[1].split(" (", 1)[0])
             for line in printed.splitlines() if line.startswith(("deft-x: ", "lt-sft: "))}
    assert set(files) == {"deft-x", "lt-sft"}, printed
    assert all(file in before for file in files.values()), files
    if args[0] == "train-lang":
        assert " all: jaccard " in printed
    after = {p: p.stat().st_mtime_ns for p in (tmp / "run").rglob("*.safetensors")}
    assert before == after, "a finished step must be reused, not retrained"


def test_compose_and_evaluate_commands(pipeline_run, tiny_model_dir, capsys):
    tmp, _, _ = pipeline_run
    task = tmp / "run" / "seed-0" / "task" / "indonesian" / "lt-sft" / "lt-sft" / "sft.safetensors"
    lang = tmp / "run" / "seed-0" / "lang" / "madurese" / "lt-sft" / "sft.safetensors"
    out = tmp / "composed"
    assert main(["compose", "--model", str(tiny_model_dir), "--sft", str(task), "--sft", str(lang),
                 "--output", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "revert restores the base bit-exactly: True" in printed
    assert (f"load it with deftx.models.classifier.BertMeanPoolClassifier.from_pretrained({str(out)!r}) "
            "(transformers' AutoModelForSequenceClassification would add a random pooler)") in printed
    from deftx.models.classifier import BertMeanPoolClassifier

    composed = BertMeanPoolClassifier.from_pretrained(out)
    head = SparseDiff.load(task).dense["classifier.weight"]
    assert torch.equal(composed.classifier.weight.detach(), head)
    assert main(["evaluate", "--model", str(tiny_model_dir), "--task-sft", str(task),
                 "--lang-sft", f"madurese={lang}", "--languages", "madurese", "buginese", "indonesian",
                 "--scale", "1.25", "--output", str(tmp / "eval")]) == 0
    printed = capsys.readouterr().out
    assert "buginese: no test split" in printed and "madurese: macro-F1" in printed
    with (tmp / "eval" / "evaluate.csv").open(newline="") as handle:
        recorded = {row["target"]: (row["language_sft"], row["language_scale"]) for row in csv.DictReader(handle)}
    assert recorded == {"madurese": ("True", "1.25"), "indonesian": ("False", "")}, "the scale each row composed at"


def test_evaluate_on_cpu_equals_the_default_without_cuda(pipeline_run, tiny_model_dir, monkeypatch, capsys):
    tmp, _, _ = pipeline_run
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    task = tmp / "run" / "seed-0" / "task" / "indonesian" / "lt-sft" / "lt-sft" / "sft.safetensors"
    tables = {}
    for device in ([], ["--device", "cpu"]):
        out = tmp / f"eval-{'-'.join(device) or 'default'}"
        assert main(["evaluate", "--model", str(tiny_model_dir), "--task-sft", str(task), "--languages", "madurese",
                     "--output", str(out), *device]) == 0
        tables[bool(device)] = (out / "evaluate.csv").read_text()
    capsys.readouterr()
    assert tables[True] == tables[False]


def test_compose_of_two_sfts_shipping_one_head_reverts_exactly(pipeline_run, tiny_model_dir, capsys):
    """Issue #24: two task SFTs (or one twice) both ship classifier.*; the revert must restore the base head."""
    tmp, _, _ = pipeline_run
    lt = tmp / "run" / "seed-0" / "task" / "indonesian" / "lt-sft" / "lt-sft" / "sft.safetensors"
    dx = tmp / "run" / "seed-0" / "task" / "indonesian" / "deft-x" / "deft-x" / "sft.safetensors"
    for pair in ([lt, dx], [lt, lt]):
        code = main(["compose", "--model", str(tiny_model_dir), "--sft", str(pair[0]), "--sft", str(pair[1])])
        assert "revert restores the base bit-exactly: True" in capsys.readouterr().out
        assert code == 0


def test_a_changed_config_is_one_error_line_naming_the_change_until_overwrite(pipeline_run, capsys):
    """Issue #19: train-lang with another K refuses the finished run's folder; --overwrite retrains it."""
    tmp, _, _ = pipeline_run
    changed = tiny_config(tmp, yaml.safe_load((tmp / "tiny.yaml").read_text())["model"])
    changed["language_sft"]["k"] = 0.02
    path = tmp / "changed.yaml"
    path.write_text(yaml.safe_dump(changed))
    sft = tmp / "run" / "seed-0" / "lang" / "madurese" / "lt-sft" / "sft.safetensors"
    before = SparseDiff.load(sft).k
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEFTX_CACHE", str(tmp / "cache"))
        assert main(["train-lang", str(path), "--language", "madurese"]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
        assert len(errors) == 1 and errors[0].startswith("deftx train-lang: error: "), errors
        assert f"branch lt-sft: k: {before} -> " in errors[0] and "--overwrite" in errors[0]
        assert SparseDiff.load(sft).k == before, "a refused run changes nothing"
        assert main(["train-lang", str(path), "--language", "madurese", "--overwrite"]) == 0
    assert SparseDiff.load(sft).k > before


def test_output_reaches_a_pipe_line_by_line(tmp_path):
    """A progress line printed by a command is in the pipe before the command ends (here, by
    ``os._exit``, which flushes nothing): ``deftx ... > log`` shows long runs as they go."""
    import os
    import subprocess
    import sys

    script = ("import os, deftx.commands.doctor as doctor, deftx.cli as cli\n"
              "doctor.run = lambda args: (print('progress line'), os._exit(0))\n"
              "cli.main(['doctor'])\n")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONUNBUFFERED"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "progress line\n"


def test_a_reader_that_goes_away_ends_the_command_quietly():
    """``deftx doctor | head -1``: once the reader has closed the pipe, the command stops with
    status 141 (128 + SIGPIPE) and no traceback."""
    import subprocess
    import sys

    script = ("import sys, deftx.commands.doctor as doctor, deftx.cli as cli\n"
              "doctor.run = lambda args: [print(f'line {i}') for i in range(200_000)]\n"
              "sys.exit(cli.main(['doctor']))\n")
    reader = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert reader.stdout.readline() == b"line 0\n"
    reader.stdout.close()
    assert reader.wait(timeout=120) == 141
    assert reader.stderr.read() == b"", "nothing on stderr: no traceback, no 'Exception ignored' line"


def dry_run(tmp_path: Path, capsys, config: dict, *flags: str) -> list[str]:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["pipeline", str(path), "--dry-run", *flags]) == 0
    return capsys.readouterr().out.splitlines()


def test_the_dry_run_plan_lists_the_held_out_check_a_run_makes(tmp_path, capsys):
    """With language_text_splits [train] every seed's run scores its language SFTs on MT valid text
    (heldout.csv): the plan said nothing of it. Languages: those the seed trains (buginese, without a test
    split, is not trained) and those already on disk; --no-heldout and train+valid text leave it out."""
    config = {"model": "org/some-encoder", "data_dir": str(nusax_plan_root(tmp_path)), "seeds": [0, 1],
              "output_dir": str(tmp_path / "run"), "targets": ["madurese", "buginese"], "language_scale": [0.5, 1.25],
              "language_text_splits": ["train"], "methods": {"lt-sft": None}}
    lines = dry_run(tmp_path, capsys, config)
    heldout = [line for line in lines if "held-out" in line]
    expected = ("held-out masked-LM check of the NusaX language SFTs of madurese, indonesian: θ0 and scales "
                "[0.5, 1.0, 1.25] on NusaX MT valid text -> heldout.csv")
    assert heldout == [f"{step}. [seed {seed}] {expected}" for step, seed in ((7, 0), (13, 1))], heldout
    assert lines.index(heldout[0]) > max(i for i, line in enumerate(lines) if "[seed 0] NusaX test evaluation" in line)
    earlier = tmp_path / "run" / "seed-1" / "lang" / "buginese" / "lt-sft" / "sft.safetensors"
    earlier.parent.mkdir(parents=True)
    earlier.write_bytes(b"")
    heldout = [line for line in dry_run(tmp_path, capsys, config) if "held-out" in line]
    assert "[seed 1] held-out masked-LM check of the NusaX language SFTs of madurese, buginese, indonesian:" in \
        heldout[1], heldout
    assert not [line for line in dry_run(tmp_path, capsys, config, "--no-heldout") if "held-out" in line]
    trained_on_valid = {**config, "language_text_splits": ["train", "valid"]}
    assert not [line for line in dry_run(tmp_path, capsys, trained_on_valid) if "held-out" in line]


def test_the_dry_run_plan_lists_the_americasnli_held_out_check(tmp_path, capsys):
    config = {"model": "org/some-encoder", "data_dir": str(nusax_plan_root(tmp_path)), "targets": [],
              "output_dir": str(tmp_path / "run"), "americasnlp_text_splits": ["train"],
              "americasnli": {"train_languages": ["aym"], "test_languages": ["bzd", "tar"]}}
    heldout = [line for line in dry_run(tmp_path, capsys, config) if "held-out" in line]
    assert heldout == ["7. [seed 0] held-out masked-LM check of the AmericasNLI language SFTs of bzd, tar: θ0 and "
                       "scales [1.0, 1.25] on AmericasNLP 2021 dev text -> heldout.csv"], heldout


def test_pipeline_help_names_the_folder_the_tables_go_to(tmp_path, capsys):
    """The help said the tables go under output_dir; they go under results_dir where the config sets one."""
    with pytest.raises(SystemExit):
        main(["pipeline", "--help"])
    assert "results.md/.csv/.png under results_dir (default: output_dir)" in " ".join(capsys.readouterr().out.split())
    config = {"model": "org/some-encoder", "data_dir": str(nusax_plan_root(tmp_path)), "targets": ["madurese"],
              "output_dir": str(tmp_path / "run"), "results_dir": str(tmp_path / "tables")}
    assert f"output: {tmp_path / 'run'}; results: {tmp_path / 'tables'}" in dry_run(tmp_path, capsys, config)
