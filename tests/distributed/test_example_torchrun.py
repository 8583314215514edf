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
    diff = SparseDiff.load(out)
    assert diff.nnz == 2000 and diff.method == "lt-sft" and diff.settings["world_size"] == 2
    assert set(diff.dense) == {
        "bert.pooler.dense.weight",
        "bert.pooler.dense.bias",
        "classifier.weight",
        "classifier.bias",
    }
