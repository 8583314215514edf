"""The documented command: ``torchrun --nproc_per_node 2 examples/distributed_sft.py`` on CPU/gloo (FSDP2)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from deftx.sft import SparseDiff

REPO = Path(__file__).resolve().parents[2]


def test_torchrun_two_ranks_fsdp_saves_the_single_process_selection(tmp_path):
    out = tmp_path / "sft.safetensors"
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(REPO / "examples" / "distributed_sft.py"),
        "--strategy",
        "fsdp",
        "--method",
        "lt-sft",
        "--full-steps",
        "4",
        "--sparse-steps",
        "4",
        "--k",
        "2000",
        "--out",
        str(out),
        "--verify",
    ]
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}   # this checkout's deftx, installed or not
    run = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180, check=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "2 ranks, fsdp, lt-sft, backend gloo, K = 2000" in run.stdout
    assert "selection vs single process on the same θ1: 2000/2000 shared, identical: True" in run.stdout
    assert "loss, mean of the first / last 2 steps: phase 1 " in run.stdout, "4 steps: two windows of 2"
    diff = SparseDiff.load(out)
    assert diff.nnz == 2000 and diff.method == "lt-sft" and diff.settings["world_size"] == 2
    assert set(diff.dense) == {
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
        "classifier.weight",
        "classifier.bias",
    }


def load_example():
    """examples/distributed_sft.py as a module (its main guarded; importing it starts nothing)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("distributed_sft", REPO / "examples" / "distributed_sft.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_printed_loss_trend_compares_separate_windows_of_a_short_phase():
    """A 4-step phase (the README's runs) must not print the mean of all its steps twice as 'first -> last'."""
    window, first, last = load_example().loss_ends([4.0, 3.0, 2.0, 1.0])
    assert (window, first, last) == (2, 3.5, 1.5)
    assert load_example().loss_ends([float(v) for v in range(30, 0, -1)]) == (10, 25.5, 5.5)
    assert load_example().loss_ends([2.0]) == (1, 2.0, 2.0)
