"""One spawned gloo world per world size runs every scenario once; all tests of that size share it."""

from __future__ import annotations

import pytest

from tests.distributed.scenarios import run_all
from tests.distributed.world import run_world

WORLD_SIZES = (2, 3)


@pytest.fixture(scope="session", params=WORLD_SIZES, ids=lambda w: f"{w}ranks")
def world(request, tmp_path_factory) -> tuple[int, list[dict]]:
    """(world size, per-rank results of :func:`tests.distributed.scenarios.run_all`)."""
    folder = tmp_path_factory.mktemp(f"world{request.param}")
    return request.param, run_world(run_all, request.param, folder, str(folder))
