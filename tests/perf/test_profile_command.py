"""``deftx profile``: argument handling, both modes, outputs that exist and parse."""

from __future__ import annotations

import json

import pytest

from deftx.cli import main
from deftx.perf.static import analysis
from deftx.perf.static.compile import DeclaredSpec, Registry
from tests.kernels.bad_kernels import BAD, GOOD


def registry_of(specs) -> Registry:
    return Registry([DeclaredSpec("bad_kernels", i, s) for i, s in enumerate(specs)], [], {}, [])


def test_help_describes_both_modes(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["profile", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for needle in ("--static", "--arch", "--shapes", "--device", "train-step", "PREDICTED", "Chrome"):
        assert needle in text


@pytest.mark.parametrize("argv", [["profile"], ["profile", "--static", "topk"]])
def test_needs_exactly_one_mode(argv, capsys):
    assert main(argv) == 2
    assert "either --static or a TARGET" in capsys.readouterr().err


def test_unknown_target(capsys):
    assert main(["profile", "no-such-op"]) == 2
    assert "neither one of" in capsys.readouterr().err


def test_static_mode_writes_report(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(analysis, "declared_specializations", lambda: registry_of(GOOD))
    code = main(["profile", "--static", "--arch", "sm_80", "--shapes", "tiny", "--out", str(tmp_path)])
    assert code == 0, capsys.readouterr().out
    report = json.loads((tmp_path / "static_sm80_tiny.json").read_text())
    assert [k["name"] for k in report["kernels"]] == [s.name for s in GOOD]
    assert report["command"] == "deftx profile --static --arch sm_80 --shapes tiny"
    assert "PREDICTED" in (tmp_path / "static_sm80_tiny.md").read_text()
    assert "PREDICTED, not measured" in capsys.readouterr().out


def test_static_mode_fails_on_violations(tmp_path, monkeypatch, capsys):
    spec, check = BAD[1]
    monkeypatch.setattr(analysis, "declared_specializations", lambda: registry_of([spec]))
    assert main(["profile", "--static", "--shapes", "tiny", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert f"{spec.name}: {check}" in out
    report = json.loads((tmp_path / "static_sm90_tiny.json").read_text())
    assert report["kernels"][0]["violations"][0].startswith(check)


def test_runtime_mode_writes_trace(tmp_path, capsys):
    assert main(["profile", "step", "--device", "cpu", "--backend", "torch", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "profile_step.json").read_text())
    assert summary["backend"] == "torch" and summary["device"] == "cpu"
    assert json.loads((tmp_path / "trace_step.json").read_text())["traceEvents"]
    assert "deftx.masked_step" in capsys.readouterr().out


def test_runtime_mode_from_config_file(tmp_path):
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"target": "topk", "shapes": "tiny", "warmup": 0}))
    assert main(["profile", str(config), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "profile_topk.md").exists()
