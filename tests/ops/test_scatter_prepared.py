"""prepare_scatter: a composition checked and planned once, applied and restored repeatedly,
bit-identical to scatter_add_ (save=True) / scatter_restore_ on every CPU backend."""

from __future__ import annotations

import pytest
import torch

from deftx.ops import prepare_scatter, scatter_add_
from tests.helpers import assert_bitwise_equal
from tests.ops.conftest import cpu_backends
from tests.ops.test_host_work import counted, ragged, scatter_problem

SCALES = [1.0, -0.5]


def assert_all_equal(got: list[torch.Tensor], want: list[torch.Tensor], what: str) -> None:
    for t, (g, w) in enumerate(zip(got, want, strict=True)):
        assert_bitwise_equal(g, w, what=f"{what} {t}")


def mixed_problem(seed: int = 3):
    """Ragged tensors of the three float dtypes, two diffs with fp32 / bf16 values."""
    dense = ragged(9, [torch.float32, torch.bfloat16, torch.float16], seed)
    gen = torch.Generator().manual_seed(seed + 1)
    indices = [[torch.randperm(w.numel(), generator=gen)[: w.numel() // 2].sort().values for w in dense]
               for _ in SCALES]
    values = [[torch.randn(i.numel(), generator=gen).to(dtype) for i in row]
              for row, dtype in zip(indices, (torch.float32, torch.bfloat16), strict=True)]
    return dense, indices, values


@pytest.mark.parametrize("backend", cpu_backends("scatter"))
def test_prepared_apply_and_restore_match_the_public_ops(backend):
    dense, indices, values = mixed_problem()
    original = [w.clone() for w in dense]
    reference = [w.clone() for w in dense]
    want_saved = scatter_add_(reference, indices, values, SCALES, save=True, backend="torch")
    prepared = prepare_scatter(dense, indices, values, SCALES, backend=backend)
    for _ in range(2):
        saved = prepared.apply()
        assert_all_equal(dense, reference, "applied")
        for got_row, want_row in zip(saved, want_saved, strict=True):
            assert_all_equal(got_row, want_row, "saved")
        prepared.restore()
        assert_all_equal(dense, original, "restored")


def test_prepared_apply_and_restore_alternate():
    dense, indices, values = scatter_problem(3, 1)
    prepared = prepare_scatter(dense, indices, values, backend="torch")
    with pytest.raises(RuntimeError, match="nothing applied"):
        prepared.restore()
    prepared.apply()
    with pytest.raises(RuntimeError, match="already applied"):
        prepared.apply()


def test_prepared_checks_once_when_built():
    dense, indices, values = scatter_problem(3, 1)
    with pytest.raises(ValueError, match="prepare_scatter: 2 scales for 1 diffs"):
        prepare_scatter(dense, indices, values, [1.0, 2.0], backend="torch")


def test_prepared_apply_is_one_launch_per_dtype_and_never_syncs():
    dense, indices, values = mixed_problem(seed=5)
    reference = [w.clone() for w in dense]
    scatter_add_(reference, indices, values, SCALES, backend="torch")
    original = [w.clone() for w in dense]
    prepared, built = counted(lambda: prepare_scatter(dense, indices, values, SCALES, backend="triton"))
    assert built.sync_count == 0, built.summary()  # the indices were checked by the reference call
    assert built.triton_launches == {"_segment_bounds_kernel": 3}, built.summary()
    for _ in range(2):
        _, applied = counted(prepared.apply)
        assert applied.sync_count == 0 and applied.torch_ops == {}, applied.summary()
        assert applied.triton_launches == {"_scatter_add_kernel": 3}, applied.summary()
        assert_all_equal(dense, reference, "applied")
        _, restored = counted(prepared.restore)
        assert restored.sync_count == 0 and restored.torch_ops == {}, restored.summary()
        assert restored.triton_launches == {"_scatter_restore_kernel": 3}, restored.summary()
        assert_all_equal(dense, original, "restored")


@pytest.mark.parametrize("backend", cpu_backends("scatter"))
def test_prepared_empty_compositions_do_nothing(backend):
    dense, indices, values = scatter_problem(3, 1)
    original = [w.clone() for w in dense]
    for args in (([], [[]], [[]]), (dense, [], []),
                 (dense, [[i[:0] for i in indices[0]]], [[v[:0] for v in values[0]]])):
        prepared = prepare_scatter(*args, backend=backend)
        prepared.apply()
        prepared.restore()
    assert_all_equal(dense, original, "dense")


def test_prepared_apply_and_restore_bump_version_counters():
    dense, indices, values = scatter_problem(2, 1)
    prepared = prepare_scatter(dense, indices, values, backend="triton")
    versions = [w._version for w in dense]
    prepared.apply()
    assert all(w._version > v for w, v in zip(dense, versions, strict=True))
    versions = [w._version for w in dense]
    prepared.restore()
    assert all(w._version > v for w, v in zip(dense, versions, strict=True))


@pytest.mark.parametrize("backend", cpu_backends("scatter"))
def test_prepared_on_parameters_that_require_grad(backend):
    """nn.Parameters are written in place outside autograd: applied and restored as plain tensors are."""
    dense, indices, values = mixed_problem()
    plain = [w.clone() for w in dense]
    parameters = [torch.nn.Parameter(w.clone()) for w in dense]
    prepared_plain = prepare_scatter(plain, indices, values, SCALES, backend=backend)
    prepared = prepare_scatter(parameters, indices, values, SCALES, backend=backend)
    prepared_plain.apply()
    assert_all_equal([s for row in prepared.apply() for s in row], [s for row in prepared_plain.saved for s in row],
                     "saved")
    assert_all_equal([p.detach() for p in parameters], plain, "applied")
    prepared.restore()
    assert_all_equal([p.detach() for p in parameters], dense, "restored")
