"""Run a function on a small gloo world of CPU processes and collect what each rank returns.

Ranks are forked from the test process, so they start with torch, deftx and the DTensor
machinery already imported (a spawned rank spends ~5 s importing them on 2 cores); each
rank runs single-threaded (``torch.set_num_threads(1)`` first, so no OpenMP team crosses
the fork). A FileStore under the test's tmp folder does the rendezvous (no ports to race
for), and a collective that waits longer than ``timeout_s`` fails the test instead of
hanging it.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _bootstrap(rank: int, world: int, folder: str, timeout_s: float, worker: Callable, args: tuple) -> None:
    torch.set_num_threads(1)
    os.environ.setdefault("DEFTX_BACKEND", "auto")
    dist.init_process_group(
        "gloo",
        init_method=f"file://{folder}/store",
        rank=rank,
        world_size=world,
        timeout=datetime.timedelta(seconds=timeout_s),
    )
    try:
        result = worker(rank, world, *args)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    torch.save(result, Path(folder) / f"rank{rank}.pt")


def run_world(worker: Callable[..., Any], world: int, folder: Path, *args: Any, timeout_s: float = 60.0) -> list[Any]:
    """Run ``worker(rank, world, *args)`` on ``world`` forked gloo ranks; return their results in rank order.

    A rank that raises fails the call with that rank's traceback.
    """
    import torch._dynamo  # DTensor imports it lazily: pay once here, not once per rank

    folder.mkdir(parents=True, exist_ok=True)
    mp.start_processes(
        _bootstrap, args=(world, str(folder), timeout_s, worker, args), nprocs=world, start_method="fork"
    )
    return [torch.load(folder / f"rank{r}.pt", weights_only=False) for r in range(world)]


def assemble_rows(parts: list[torch.Tensor]) -> torch.Tensor:
    """The full tensor from the ranks' Shard(0) local blocks (rank order is row order)."""
    return torch.cat(parts, dim=0)
