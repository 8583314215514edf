"""masked_adamw_step_ against torch.optim.AdamW on the selected entries and an explicit formula."""

from __future__ import annotations

import pytest
import torch

from deftx.ops import masked_adamw_step_
from deftx.ops.masked_step import prepare_masked_step
from deftx.ops.settings import AdamWSettings
from tests.helpers import assert_bitwise_equal, assert_close
from tests.ops.conftest import cpu_backends, one_param_step_tensors


def make_problem(dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    params = [torch.randn(6, 7, generator=gen).to(dtype), torch.randn(11, generator=gen).to(dtype), torch.zeros(0)]
    params[2] = params[2].to(dtype)
    indices = [torch.tensor([0, 5, 9, 41]), torch.tensor([3, 10]), torch.empty(0, dtype=torch.int64)]
    return params, indices, gen


@pytest.mark.parametrize("backend", cpu_backends("masked_step"))
def test_equals_adamw_restricted_to_the_entries(backend):
    params, indices, gen = make_problem(torch.float32)
    original = [p.clone() for p in params]
    subset = [torch.nn.Parameter(p.reshape(-1)[i].clone()) for p, i in zip(params, indices, strict=True)]
    opt = torch.optim.AdamW(subset, lr=1e-2, weight_decay=0.1, betas=(0.9, 0.99), eps=1e-8)
    masters = [p.reshape(-1)[i].float().clone() for p, i in zip(params, indices, strict=True)]
    m = [torch.zeros(i.numel()) for i in indices]
    v = [torch.zeros(i.numel()) for i in indices]
    for step in range(1, 4):
        grads = [torch.randn(p.shape, generator=gen) for p in params]
        for s, g, i in zip(subset, grads, indices, strict=True):
            s.grad = g.reshape(-1)[i].clone()
        opt.step()
        masked_adamw_step_(
            params,
            grads,
            indices,
            masters,
            m,
            v,
            step=step,
            lr=1e-2,
            beta1=0.9,
            beta2=0.99,
            eps=1e-8,
            weight_decay=0.1,
            backend=backend,
        )
    for t, (p, i, s) in enumerate(zip(params, indices, subset, strict=True)):
        assert_close(p.reshape(-1)[i], s.detach(), rtol=1e-5, atol=1e-7, what=f"param {t}")
        untouched = torch.ones(p.numel(), dtype=torch.bool)
        untouched[i] = False
        assert_bitwise_equal(p.reshape(-1)[untouched], original[t].reshape(-1)[untouched], what=f"untouched {t}")


@pytest.mark.parametrize("backend", cpu_backends("masked_step"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_l1_pull_and_fp32_masters(backend, dtype):
    params, indices, _gen = make_problem(dtype, seed=1)
    bases = [p.reshape(-1)[i].float().clone() for p, i in zip(params, indices, strict=True)]
    masters = [b.clone() + 0.01 for b in bases]
    m = [torch.zeros(i.numel()) for i in indices]
    v = [torch.zeros(i.numel()) for i in indices]
    grads = [torch.zeros(p.shape, dtype=dtype) for p in params]
    # zero task gradient: the only force is the L1 pull toward θ0, so every master moves down by lr (Adam step 1)
    masked_adamw_step_(params, grads, indices, masters, m, v, bases, step=1, lr=1e-3, l1=0.1, backend=backend)
    for t, (mast, b) in enumerate(zip(masters, bases, strict=True)):
        assert_close(mast, b + 0.01 - 1e-3, rtol=0, atol=1e-6, what=f"master {t}")
        assert_bitwise_equal(params[t].reshape(-1)[indices[t]], mast.to(dtype), what=f"param {t}")


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        ({"step": 0}, ValueError, "step"),
        ({"l1": 0.1}, ValueError, "bases"),
        ({"masters": [torch.zeros(3, dtype=torch.float16)]}, ValueError, "masters"),
        ({"grads": [torch.zeros(4)]}, ValueError, "grad 0"),
        ({"indices": [torch.tensor([0, 9, 2])]}, IndexError, "outside"),
        ({"indices": [torch.tensor([0, 9, 2, 9, 4, 9])[::2]]}, ValueError, "indices 0 are not contiguous"),
        ({"masters": [torch.zeros(3, device="meta")]}, ValueError, r"masters\[0\] is on meta, param 0 on cpu"),
        ({"exp_avg_sqs": [torch.zeros(3, device="meta")]}, ValueError, r"exp_avg_sqs\[0\] is on meta"),
        ({"grads": [torch.zeros(5, device="meta")]}, ValueError, r"grads\[0\] is on meta"),
        ({"l1": 0.1, "bases": [torch.zeros(3, device="meta")]}, ValueError, r"bases\[0\] is on meta"),
    ],
)
def test_bad_input(change, error, match):
    args = {**one_param_step_tensors(), "step": 1, "lr": 0.1}
    args.update(change)
    with pytest.raises(error, match=match):
        masked_adamw_step_(**args)


@pytest.mark.parametrize("backend", cpu_backends("masked_step"))
@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"beta1": 1.0}, r"beta1 must be in \[0, 1\), got 1.0"),  # bias correction 1 - beta1**step = 0
        ({"beta2": 1.0}, r"beta2 must be in \[0, 1\)"),
        ({"beta1": -0.1}, r"beta1 must be in \[0, 1\)"),
        ({"lr": float("nan")}, "lr must be finite and >= 0, got nan"),
        ({"eps": -1e-3}, "eps must be finite and >= 0"),
        ({"weight_decay": float("inf")}, "weight_decay must be finite and >= 0"),
        ({"l1": -0.1, "bases": [torch.zeros(3)]}, "l1 must be finite and >= 0"),
        ({"lr": 1e39}, "overflow the step's float32 scalars"),  # finite in float64, inf as the kernels' float32
        ({"lr": 1e20, "weight_decay": 1e20}, "overflow the step's float32 scalars"),  # 1 - lr * weight_decay
    ],
)
def test_hyperparameters_outside_adamws_ranges_are_refused_before_any_write(backend, change, match):
    """The ranges torch.optim.AdamW takes; beta1 = 1, for one, wrote NaN into the parameter."""
    args = {**one_param_step_tensors(), "step": 1, "lr": 0.1, "backend": backend}
    args["params"], args["grads"] = [torch.linspace(-1.0, 1.0, 5)], [torch.full((5,), 0.5)]
    before = {name: [t.clone() for t in args[name]] for name in ("params", "masters", "exp_avgs", "exp_avg_sqs")}
    args.update(change)
    with pytest.raises(ValueError, match=match):
        masked_adamw_step_(**args)
    for name, tensors in before.items():
        for t, (a, b) in enumerate(zip(args[name], tensors, strict=True)):
            assert_bitwise_equal(a, b, what=f"{name} {t}")


def _state(params, indices, offset=0.0):
    masters = [p.reshape(-1)[i].float() + offset for p, i in zip(params, indices, strict=True)]
    return masters, [torch.zeros_like(m) for m in masters], [torch.zeros_like(m) for m in masters]


@pytest.mark.parametrize("backend", cpu_backends("masked_step"))
@pytest.mark.parametrize("l1", [0.0, 0.05])
def test_prepared_step_writes_what_the_public_step_writes(backend, l1):
    """Mixed dtypes and an empty selection; gradients in new storage on odd steps, refilled in
    place on even ones (the prepared path reuses its address table then): every step, every
    written tensor equals the public op's, bit for bit."""
    gen = torch.Generator().manual_seed(3)
    params = [torch.randn(6, 7, generator=gen), torch.randn(11, generator=gen).bfloat16(),
              torch.randn(4, generator=gen).half(), torch.randn(3, generator=gen)]
    indices = [torch.tensor([0, 5, 9, 41]), torch.tensor([3, 10]), torch.tensor([0, 1, 2, 3]),
               torch.empty(0, dtype=torch.int64)]
    mine, theirs = [p.clone() for p in params], [p.clone() for p in params]
    bases = [p.reshape(-1)[i].float() for p, i in zip(params, indices, strict=True)]
    state_mine, state_theirs = _state(params, indices, 0.01), _state(params, indices, 0.01)
    prepared = prepare_masked_step(mine, indices, *state_mine, bases, backend=backend)
    grads = [torch.empty_like(p) for p in params]
    for step in range(1, 5):
        fresh = [torch.randn(p.shape, generator=gen).to(p.dtype) for p in params]
        if step % 2:
            grads = fresh
        else:
            for g, f in zip(grads, fresh, strict=True):
                g.copy_(f)
        settings = AdamWSettings(step, 1e-2, 0.9, 0.99, 1e-8, 0.1, l1)
        prepared.step(grads, settings)
        masked_adamw_step_(theirs, grads, indices, *state_theirs, bases, step=step, lr=1e-2, beta1=0.9, beta2=0.99,
                           eps=1e-8, weight_decay=0.1, l1=l1, backend=backend)
        for name, got, want in (("param", mine, theirs), ("master", state_mine[0], state_theirs[0]),
                                ("exp_avg", state_mine[1], state_theirs[1]),
                                ("exp_avg_sq", state_mine[2], state_theirs[2])):
            for t, (a, b) in enumerate(zip(got, want, strict=True)):
                assert_bitwise_equal(a, b, what=f"step {step} {name} {t}")
    assert not torch.equal(mine[0], params[0]), "the steps moved the parameters"


@pytest.mark.parametrize("backend", cpu_backends("masked_step"))
def test_parameters_that_require_grad_step_as_detached_ones(backend):
    """nn.Parameters are written in place outside autograd, as torch.optim steps write them:
    the public and the prepared step equal the step of detached copies, on every backend."""
    params, indices, gen = make_problem(torch.float32)
    grads = [torch.randn(p.shape, generator=gen) for p in params]
    detached = [p.clone() for p in params]
    state_detached = _state(params, indices, 0.0)
    masked_adamw_step_(detached, grads, indices, *state_detached, step=1, lr=1e-2, backend=backend)
    public, prepared = ([torch.nn.Parameter(p.clone()) for p in params] for _ in range(2))
    state_public, state_prepared = _state(params, indices, 0.0), _state(params, indices, 0.0)
    masked_adamw_step_(public, grads, indices, *state_public, step=1, lr=1e-2, backend=backend)
    prepare_masked_step(prepared, indices, *state_prepared, backend=backend).step(grads, AdamWSettings(1, 1e-2))
    for name, got in (("public", public), ("prepared", prepared)):
        for t, (a, b) in enumerate(zip(got, detached, strict=True)):
            assert_bitwise_equal(a.detach(), b, what=f"{name} param {t}")
        for a, b in zip(state_public if name == "public" else state_prepared, state_detached, strict=True):
            for t, (x, y) in enumerate(zip(a, b, strict=True)):
                assert_bitwise_equal(x, y, what=f"{name} state {t}")
