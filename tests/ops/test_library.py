"""The torch.library registrations: fake implementations and a torch.compile run."""

from __future__ import annotations

import torch

from deftx.ops import scatter_add_, topk_mask


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
        flat, stats = torch.ops.deftx.topk_indices([torch.empty(5), torch.empty(3)], 2, "torch")
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
