"""The torch.library registrations: fake implementations, a torch.compile run, and eager
calls that bypass the registered op (no torch._dynamo import)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from deftx.ops import library, scatter_add_, topk_mask

ROOT = Path(__file__).resolve().parents[2]


def test_ops_are_registered():
    for name in ("topk_indices", "scatter_add_", "scatter_restore_", "masked_adamw_step_"):
        assert hasattr(torch.ops.deftx, name)


def test_scatter_under_torch_compile_matches_eager():
    idx = torch.tensor([1, 4, 6])
    val = torch.tensor([0.5, -1.0, 2.0])

    def update(w):
        w = w * 2
        scatter_add_([w], [[idx]], [[val]], [1.0], backend="torch")
        return w + 1

    x = torch.arange(8, dtype=torch.float32)
    compiled = torch.compile(update, backend="aot_eager")
    assert torch.equal(compiled(x.clone()), update(x.clone()))


def test_scatter_with_saved_originals_under_torch_compile_matches_eager():
    idx = torch.tensor([0, 3, 5])
    val = torch.tensor([0.25, -2.0, 1.5])

    def apply(w):
        w = w + 1
        (saved,) = scatter_add_([w], [[idx]], [[val]], [0.5], save=True, backend="torch")
        return w, saved[0]

    x = torch.linspace(-1.0, 1.0, 7)
    (got_w, got_saved), (want_w, want_saved) = torch.compile(apply, backend="aot_eager")(x.clone()), apply(x.clone())
    assert torch.equal(got_w, want_w) and torch.equal(got_saved, want_saved)
    assert torch.equal(want_saved, (x + 1)[idx])


def test_topk_fake_implementation_gives_output_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        flat, stats = torch.ops.deftx.topk_indices([torch.empty(5), torch.empty(3)], [None, torch.empty(3)], 2,
                                                   False, "torch")
    assert flat.shape == (2,) and flat.dtype == torch.int64
    assert stats.shape == (3,) and stats.dtype == torch.int64  # counts per tensor, then NaNs


def test_topk_under_torch_compile():
    def select(a, b):
        return topk_mask([a, b], 3, backend="torch")

    a, b = torch.tensor([1.0, -4.0, 2.0]), torch.tensor([3.0, 0.5])
    assert [m.tolist() for m in torch.compile(select, backend="aot_eager")(a, b)] == [
        [False, True, True],
        [True, False],
    ]


def test_topk_with_base_under_torch_compile():
    def select(a, b, a0):
        return topk_mask([a, b], 3, base=[a0, None], output="indices", backend="torch")

    a, b, a0 = torch.tensor([1.0, -4.0, 2.0]), torch.tensor([3.0, 0.5]), torch.tensor([0.0, -4.5, -1.5])
    got = torch.compile(select, backend="aot_eager")(a, b, a0)
    assert [g.tolist() for g in got] == [[0, 2], [0]] == [e.tolist() for e in select(a, b, a0)]


def test_eager_calls_run_the_implementation_and_traced_calls_the_op(monkeypatch):
    """Plain tensors outside any mode: the implementation; a fake-tensor mode or a subclass
    that dispatches itself (FakeTensor): the registered op, whose fake kernel gives shapes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    ran = []
    monkeypatch.setattr(library, "_topk_indices", lambda *args: ran.append(args) or (torch.zeros(1), torch.zeros(2)))
    library.topk_indices([torch.ones(3)], [None], 1, False, "torch")
    assert len(ran) == 1 and not library.is_traced([torch.ones(3), None, torch.nn.Parameter(torch.ones(2))])
    with FakeTensorMode() as mode:
        fake = mode.from_tensor(torch.ones(3))
        assert library.is_traced([fake])
        flat, stats = library.topk_indices([fake], [None], 2, False, "torch")
    assert len(ran) == 1 and flat.shape == (2,) and stats.shape == (2,)


@pytest.mark.parametrize("statement", [
    "topk_mask([torch.randn(100)], 5, output='indices')",
    "topk_mask([torch.randn(100)], 5, base=[torch.randn(100)])",
    "denoised_magnitudes(torch.randn(8, 6), torch.randn(8, 6), rank=2)",
])
def test_an_eager_call_does_not_import_dynamo(statement):
    """Measured in a fresh process: the first custom-op call would import torch._dynamo
    (1.1-1.6 s on 2 cores); an eager deftx call does not."""
    code = (f"import sys, torch\nfrom deftx.ops import denoised_magnitudes, topk_mask\n{statement}\n"
            "print('torch._dynamo' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False", result.stderr
