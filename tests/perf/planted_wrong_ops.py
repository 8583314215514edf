"""A pytest plugin that plants fast wrong deftx ops into the benchmark cases.

Loaded with ``-p tests.perf.planted_wrong_ops`` by ``test_bench_suite.py``: the
pytest-benchmark suite run with it must fail every deftx implementation it plants into.
"""

from __future__ import annotations

import torch

import deftx.perf.cases.scatter as scatter_case
import deftx.perf.cases.topk as topk_case


def first_k(tensors: list[torch.Tensor], k: int, **kwargs: object) -> list[torch.Tensor]:
    """k indices, but the first entries of the tensors, not the largest magnitudes."""
    out, left = [], k
    for t in tensors:
        n = min(left, t.numel())
        out.append(torch.arange(n, device=t.device))
        left -= n
    return out


def writes_nothing(*args: object, **kwargs: object) -> None:
    """A scatter-add that returns at once."""


topk_case.topk_mask = first_k
scatter_case.scatter_add_ = writes_nothing
