"""The in-place ops (scatter, masked step) write raw memory and have no derivative: with grad mode
on they raise for a written tensor with autograd history (gradients would flow through the
overwritten entries) and for a read tensor that requires grad (it would get no gradient), rather
than give silently wrong gradients. Leaf parameters are written as plain tensors, and under
``torch.no_grad()`` everything runs."""

from __future__ import annotations

import pytest
import torch

from deftx.ops import masked_adamw_step_, prepare_masked_step, prepare_scatter, scatter_add_, scatter_restore_
from deftx.ops.settings import AdamWSettings
from tests.ops.conftest import cpu_backends

INDICES = torch.tensor([1, 3])


def reference_restore_gradient() -> list[float]:
    """d sum(w) / dx for ``w = 2x`` with the entries INDICES overwritten by constants, as torch's own
    in-place ``index_copy_`` records it: 2 where w is kept, 0 where it is overwritten."""
    x = torch.ones(6, requires_grad=True)
    w = x * 2
    w.index_copy_(0, INDICES, torch.zeros(2))
    w.sum().backward()
    return x.grad.tolist()


def test_the_reference_gradient_is_zero_at_the_overwritten_entries():
    assert reference_restore_gradient() == [2.0, 0.0, 2.0, 0.0, 2.0, 2.0]


@pytest.mark.parametrize("backend", cpu_backends("scatter"))
def test_scatter_restore_of_a_tensor_with_history_raises_in_grad_mode(backend):
    # unrecorded, the overwrite left x.grad at 2 on the restored entries, where the gradient is 0
    x = torch.ones(6, requires_grad=True)
    w = x * 2
    with pytest.raises(RuntimeError, match=r"scatter_restore_: dense tensor 0 has autograd history.*torch\.no_grad"):
        scatter_restore_([w], [[INDICES]], [[torch.zeros(2)]], backend=backend)
    assert torch.equal(w, torch.full((6,), 2.0))


@pytest.mark.parametrize("backend", cpu_backends("scatter"))
def test_scatter_add_of_values_that_require_grad_raises_in_grad_mode(backend):
    # unrecorded, the values got no gradient at all (None), where d sum(w) / dv is the scale
    values = torch.ones(2, requires_grad=True)
    w = torch.zeros(6)
    with pytest.raises(RuntimeError, match=r"scatter_add_: diff 0, tensor 0 values requires grad"):
        scatter_add_([w], [[INDICES]], [[values]], [3.0], backend=backend)
    with pytest.raises(RuntimeError, match=r"prepare_scatter: diff 0, tensor 0 values requires grad"):
        prepare_scatter([w], [[INDICES]], [[values]], [3.0], backend=backend)
    assert torch.equal(w, torch.zeros(6))


@pytest.mark.parametrize("backend", cpu_backends("masked_step"))
def test_masked_step_on_a_param_with_history_raises_in_grad_mode(backend):
    # unrecorded, the step's writes left x.grad at 2 on the stepped entries, where the gradient is 0
    x = torch.ones(6, requires_grad=True)
    p = x * 2
    state = [[torch.zeros(2)], [torch.zeros(2)], [torch.zeros(2)]]
    with pytest.raises(RuntimeError, match=r"masked_adamw_step_: param 0 has autograd history.*torch\.no_grad"):
        masked_adamw_step_([p], [torch.ones(6)], [INDICES], *state, step=1, lr=0.1, backend=backend)
    prepared = prepare_masked_step([p.detach()], [INDICES], *state, backend=backend)
    with pytest.raises(RuntimeError, match=r"PreparedMaskedStep.step: grad 0 requires grad"):
        prepared.step([torch.ones(6, requires_grad=True)], AdamWSettings(1, 0.1))
    assert torch.equal(p, torch.full((6,), 2.0)) and all(torch.equal(s[0], torch.zeros(2)) for s in state)


@pytest.mark.parametrize("backend", cpu_backends("masked_step"))
def test_the_masked_step_writes_a_leaf_parameter_in_grad_mode(backend):
    p = torch.nn.Parameter(torch.zeros(6))
    masked_adamw_step_([p], [torch.ones(6)], [INDICES], [torch.zeros(2)], [torch.zeros(2)], [torch.zeros(2)],
                       step=1, lr=0.1, backend=backend)
    assert p.tolist() == pytest.approx([0.0, -0.1, 0.0, -0.1, 0.0, 0.0]) and p.grad_fn is None


@pytest.mark.parametrize("backend", cpu_backends("scatter"))
def test_the_in_place_ops_run_on_tensors_that_require_grad_under_no_grad(backend):
    w = torch.nn.Parameter(torch.zeros(6))
    with torch.no_grad():
        saved = scatter_add_([w], [[INDICES]], [[torch.ones(2, requires_grad=True)]], [3.0], save=True,
                             backend=backend)
        assert w.tolist() == [0.0, 3.0, 0.0, 3.0, 0.0, 0.0]
        scatter_restore_([w], [[INDICES]], saved, backend=backend)
        masked_adamw_step_([w], [torch.ones(6)], [INDICES], [torch.zeros(2)], [torch.zeros(2)], [torch.zeros(2)],
                           step=1, lr=0.1, backend=backend)
    assert w.tolist() == pytest.approx([0.0, -0.1, 0.0, -0.1, 0.0, 0.0])
