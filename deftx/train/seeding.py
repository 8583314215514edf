"""Each training phase draws from its own seeded global RNG, so a phase's result never depends
on what ran before it in the process.

Dropout and other draws from the global generators (Python ``random``, NumPy, torch CPU
and CUDA) would otherwise continue from wherever earlier work left them: a run resumed in
a new process (or after other runs in the same one) would start a phase from another
state than an uninterrupted run and train a different SFT. :func:`seeded_rng` seeds
every global generator with :func:`phase_seed` for the duration of a phase and restores
the caller's states afterwards. A phase resumed from a Trainer checkpoint then gets the
RNG state saved in that checkpoint (the Trainer restores it), one started from scratch
gets the phase's seed: the same in both cases as in an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import hashlib
import random
from collections.abc import Iterator

import numpy as np
import torch
from transformers import set_seed


def phase_seed(run_seed: int, phase: str) -> int:
    """A 32-bit seed for ``phase`` (e.g. ``"full"``, ``"sparse"``) of a run seeded with ``run_seed``."""
    digest = hashlib.sha256(f"deftx:{int(run_seed)}:{phase}".encode()).digest()
    return int.from_bytes(digest[:4], "little")


@contextlib.contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed Python, NumPy, torch CPU and CUDA global generators with ``seed``; restore them on exit."""
    python_state = random.getstate()
    numpy_state = np.random.get_state()
    torch_state = torch.random.get_rng_state()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None
    set_seed(seed)
    try:
        yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)
        torch.random.set_rng_state(torch_state)
        if cuda_states is not None:
            torch.cuda.set_rng_state_all(cuda_states)
