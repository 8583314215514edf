"""``deftx ablate``: help, the plan of the shipped config, clear errors, and a tiny run."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml

from deftx.cli import main

REPO = Path(__file__).resolve().parents[2]


def test_help_explains_the_valid_split_and_the_config(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["ablate", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "usage: deftx ablate" in text
    for phrase in ("*valid* splits", "variants: {name: {overrides}}", "hard-linked", "--dry-run", "resumes"):
        assert phrase in text, phrase


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path, capsys):
    assert main(["ablate", str(REPO / "configs" / "ablation-nusax-e5-small-language.yaml"), "--dry-run",
                 "--output-dir", str(tmp_path / "runs"), "--results-dir", str(tmp_path / "results")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert "14 variants × seeds [0, 1, 2] on NusaX valid" in lines[0]
    assert "10 distinct language-SFT phase 1" in lines[0]
    reference = next(line for line in lines if line.startswith("  reference "))
    assert reference.endswith("(language phase 1 shared with k-1pct, k-6pct, reference-rerun)")
    assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()


def write(tmp_path, raw) -> Path:
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


@pytest.mark.parametrize("variant, message", [
    ({"language_sft.ful.l1": 0}, "variant 'bad'"),
    ({"eval_split": "test"}, "eval_split 'test' refused"),
])
def test_bad_variants_are_one_clear_line(tmp_path, capsys, variant, message):
    path = write(tmp_path, {"base": {"targets": ["madurese"]}, "variants": {"ok": {}, "bad": variant},
                            "output_dir": str(tmp_path / "runs")})
    assert main(["ablate", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("deftx ablate: error:") and message in err and len(err.strip().splitlines()) == 1


def test_missing_config_and_unknown_variant(tmp_path, capsys):
    assert main(["ablate", str(tmp_path / "absent.yaml")]) == 2
    assert "does not exist" in capsys.readouterr().err
    path = write(tmp_path, {"base": {"targets": ["madurese"]}, "variants": {"ok": {}},
                            "output_dir": str(tmp_path / "runs")})
    assert main(["ablate", str(path), "--variants", "nope", "--quiet"]) == 2
    assert "unknown variants ['nope']" in capsys.readouterr().err


def test_a_tiny_ablation_end_to_end(tmp_path, tiny_model_dir, capsys, monkeypatch):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # two spinning threads run the tiny model ~10x slower on the shared 2 cores
    monkeypatch.setenv("DEFTX_CACHE", str(tmp_path / "cache"))
    base = {"model": str(tiny_model_dir), "sources": ["indonesian"], "targets": ["madurese"],
            "methods": {"lt-sft": None}, "baseline": False, "language_scale": [0.5, 1.0],
            "training": {"batch_size": 8, "max_length": 32, "save_steps": 50, "logging_steps": 1, "progress": False},
            "mlm_head": {"steps": 2, "batch_size": 8, "seq_len": 32},
            "language_sft": {"k": 0.01, "full": {"steps": 1}, "sparse": {"steps": 1}},
            "task_sft": {"k": 0.05, "full": {"steps": 1}, "sparse": {"steps": 1}}}
    path = write(tmp_path, {"name": "cli", "base": base, "variants": {"only": {}}, "seeds": [3],
                            "output_dir": str(tmp_path / "runs"), "results_dir": str(tmp_path / "results")})
    try:
        assert main(["ablate", str(path), "--quiet"]) == 0
    finally:
        torch.set_num_threads(threads)
    out = capsys.readouterr().out
    assert "[ablate 1/1] only seed 3:" in out and "| variant | lt-sft ×0.5 | lt-sft ×1 |" in out
    with (tmp_path / "results" / "ablation.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 6 and {r["seed"] for r in rows} == {"3"} and {r["split"] for r in rows} == {"valid"}
