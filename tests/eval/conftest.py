"""Fixtures of the evaluation tests: one torch thread, and the commands' tiny e5-vocabulary BERT."""

from __future__ import annotations

import pytest
import torch

from tests.commands.conftest import e5_dir, tiny_model_dir  # noqa: F401  (fixtures, reused)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: on the shared 2-core CPU two spinning threads ran the tiny models
    ~10x slower. Module-scoped, so it is in force before the module-scoped fixtures run too."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
