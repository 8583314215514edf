"""``exit_distributed``: a rank ends with its own status, nothing it wrote is lost, no interpreter teardown;
``init_distributed`` outside torchrun says how to start it."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from deftx.distributed.train import exit_distributed

REPO = Path(__file__).resolve().parents[2]


def test_without_a_process_group_it_is_sys_exit():
    with pytest.raises(SystemExit) as raised:
        exit_distributed(3)
    assert raised.value.code == 3


def test_a_rank_leaves_its_group_flushes_and_ends_with_its_status(tmp_path):
    log = tmp_path / "rank.log"
    code = textwrap.dedent(
        f"""
        import atexit, logging, logging.handlers, sys
        import torch.distributed as dist
        from deftx.distributed.train import exit_distributed

        dist.init_process_group("gloo", init_method="file://{tmp_path}/store", rank=0, world_size=1)
        buffered = logging.handlers.MemoryHandler(capacity=100, target=logging.FileHandler({str(log)!r}))
        logging.getLogger("rank").addHandler(buffered)
        logging.getLogger("rank").warning("logged before the exit")
        atexit.register(lambda: print("atexit ran"))
        print("printed without a newline", end="")
        print("to stderr", end="", file=sys.stderr)
        exit_distributed(7)
        """
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}   # buffered streams, as usual
    run = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert run.returncode == 7, run.stderr[-2000:]
    assert run.stdout == "printed without a newline"
    assert run.stderr.endswith("to stderr")
    assert log.read_text() == "logged before the exit\n"


def test_outside_torchrun_the_error_says_how_to_start_it(monkeypatch):
    import torch.distributed as dist

    from deftx.distributed.train import init_distributed

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(RuntimeError, match=r"not started by torchrun .*torchrun --nproc-per-node N <script>"):
        init_distributed()
