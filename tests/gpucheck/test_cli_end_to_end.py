"""The check end to end on CPU at toy size, through its command line: the first GPU run is not
the first run. Every CPU-capable stage runs in its own process (install and the CUDA tests are
covered by their own tests; ncu and the sanitizer need CUDA and are skipped with the reason)."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from deftx.gpucheck.outputs import returnable_problems

REPO = Path(__file__).resolve().parents[2]
GENEROUS = ["--budget", "3000"] + [
    arg for name in ("environment", "ceilings", "histogram", "bench-xlmr", "bench-llama", "training")
    for arg in ("--budget-of", f"{name}=400")
]


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "deftx.gpucheck", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=2400, check=False)


def test_dry_run_prints_the_plan_and_runs_nothing(tmp_path):
    done = gpu_check("--dry-run", "--device", "cpu", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "device cpu, sizes tiny, result prefix cpu" in done.stdout
    assert "ncu            skip  needs CUDA" in done.stdout
    assert "total         370 s  of a 480 s budget" in done.stdout
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "bench-gpt"], "unknown stage(s) bench-gpt"),
        (["--budget-of", "bench-llama=500"], "over the total budget of 480 s"),
        (["--budget-of", "bench-llama"], "expected NAME=SECONDS"),
        ([], "--out DIR is required"),
    ],
)
def test_usage_errors_say_what_is_wrong(args, message):
    done = gpu_check("--device", "cpu", *args)
    assert done.returncode == 2, "the epilog's promise: 2 on a usage error"
    assert message in done.stderr and "Traceback" not in done.stderr


def test_work_dir_inside_the_output_folder_is_refused(tmp_path):
    done = gpu_check("--device", "cpu", "--only", "environment", "--out", str(tmp_path), "--work-dir",
                     str(tmp_path / "work"))
    assert done.returncode == 2 and "--work-dir must be outside --out" in done.stderr


@pytest.mark.slow
def test_cpu_stages_end_to_end_at_toy_size(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    done = gpu_check("--device", "cpu", "--shapes", "tiny", "--skip", "install,tests", "--out", str(out),
                     "--work-dir", str(work), *GENEROUS)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert sorted(p.name for p in out.iterdir()) == [
        "cpu_kernels.json", "cpu_tiny-bert.json", "cpu_tiny-llama.json", "gpucheck-logs.tar.gz", "summary.json",
        "summary.md",
    ]
    assert returnable_problems(out) == []
    summary = json.loads((out / "summary.json").read_text())
    statuses = {s["stage"]: s["status"] for s in summary["stages"]}
    assert statuses == {"install": "skipped", "environment": "ok", "tests": "skipped", "ceilings": "ok",
                        "histogram": "ok", "bench-xlmr": "ok", "bench-llama": "ok", "training": "ok",
                        "ncu": "skipped", "sanitizer": "skipped"}
    assert all(c["ok"] for c in summary["results"]["training"]["checks"])
    histogram = summary["results"]["histogram"]["rows"]
    assert len(histogram) == 24 and not [r for r in histogram if "error" in r]
    assert [r["role"] for r in histogram[:6]] == ["pass", "pass", "fallback", "fallback", "probe", "probe"]
    assert all(r["list_entries"] >= r["k"] for r in histogram if r["role"] == "pass")
    for name, dtype in (("tiny-bert", "fp32"), ("tiny-llama", "bf16")):
        doc = json.loads((out / f"cpu_{name}.json").read_text())
        assert doc["config"]["dtype"] == dtype
        assert not [r for r in doc["results"] if "error" in r or "skipped" in r]
        assert {r["op"] for r in doc["results"]} >= {"topk", "compose", "step", "scores"}
        assert doc["predicted"]["target"]["gpu"] == "NVIDIA H200 SXM"
        assert all(r["predicted_time_s"] for r in doc["predicted"]["rows"]
                   if r["impl"] not in ("cat_kthvalue", "linalg_svd", "deftx_prepared"))
    with tarfile.open(out / "gpucheck-logs.tar.gz") as tar:
        names = set(tar.getnames())
    for inside in ("bench-xlmr/cpu_tiny-bert.md", "bench-llama/cpu_tiny-llama.png", "training/stage.log",
                   "histogram/result.json", "summary.md", "cpu_kernels.md", "training/profile_train_step.md"):
        assert f"work/{inside}" in names
    assert "## Goals (issue #17)" in (out / "summary.md").read_text()
    assert "goals:" in done.stdout
