"""Native masked_adamw_step_ against the fp32 formula (bit for bit) and the torch reference.

The native library computes every operation as one IEEE-rounded fp32 operation, square root
included. torch's CPU ``sqrt`` on vectorised lengths is not correctly rounded (up to 1 ulp
off, measured on MKL builds), so against the torch reference the moments are compared bit
for bit and the master values and parameters within a tolerance derived from fp32 and the
parameter dtype; against :func:`formula_step` (the same operations with a correctly rounded
square root from numpy) everything is compared bit for bit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from deftx.ops import masked_adamw_step_, native
from deftx.ops.reference import masked_step as reference
from tests.helpers import UNIT_ROUNDOFF, assert_bitwise_equal, assert_close, tolerance
from tests.ops.conftest import DTYPE_SETS, one_param_step_tensors
from tests.ops.native.flushing import run_flushing_caller

if native.unavailable_reason() is not None:
    pytest.skip(native.unavailable_reason(), allow_module_level=True)

from deftx.ops.native.masked_step import masked_adamw_step_ as native_backend_step
from deftx.ops.settings import AdamWSettings, MaskedStepTensors

CHUNK = 1 << 14  # csrc/masked_step.cpp kChunkLength


def with_keywords(backend_step):
    """A backend's step called with the public op's keywords instead of :class:`AdamWSettings`."""

    def step(params, grads, indices, masters, exp_avgs, exp_avg_sqs, bases, **hyperparameters) -> None:
        tensors = MaskedStepTensors(params, grads, indices, masters, exp_avgs, exp_avg_sqs, bases)
        backend_step(tensors, AdamWSettings(**hyperparameters))

    return step


native_step = with_keywords(native_backend_step)
SHAPE_SETS = {
    "ragged": [(33, 17), (1,), (5, 7, 3), (130,)],
    "empty": [(0,), (0, 4), (6,)],
    "multi_chunk": [(4 * CHUNK + 3,), (3,)],  # over one chunk of entries at density 0.3
    "many_small": [(9,)] * 30,
}
DENSITIES = {"k0": 0.0, "k30pct": 0.3, "kall": 1.0}
OPTIONS = {
    "plain": {"weight_decay": 0.0, "l1": 0.0},
    "wd": {"weight_decay": 0.1, "l1": 0.0},
    "l1": {"weight_decay": 0.0, "l1": 0.05},
    "wd_l1": {"weight_decay": 0.1, "l1": 0.05},
}
HYPER = {"lr": 1e-2, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
STEPS = 3


@dataclass
class State:
    """One optimizer's view: dense params and the O(K) fp32 state at the indices."""

    params: list[torch.Tensor]
    masters: list[torch.Tensor]
    exp_avgs: list[torch.Tensor]
    exp_avg_sqs: list[torch.Tensor]

    def clone(self) -> State:
        parts = (self.params, self.masters, self.exp_avgs, self.exp_avg_sqs)
        return State(*([t.clone() for t in tensors] for tensors in parts))


@dataclass
class Problem:
    state: State
    indices: list[torch.Tensor]
    bases: list[torch.Tensor]
    grads: list[list[torch.Tensor]]  # one list per step


def random_indices(numel: int, density: float, generator: torch.Generator) -> torch.Tensor:
    """Sorted unique flat indices; density 1 takes every position, 0 none."""
    if density in (0.0, 1.0):
        return torch.arange(numel) if density else torch.empty(0, dtype=torch.int64)
    keep = torch.rand(numel, generator=generator) < density
    return torch.from_numpy(np.flatnonzero(keep.numpy()))


def make_problem(shapes, dtypes, density: float, seed: int = 0) -> Problem:
    """Params away from θ0 on odd entries, equal to it on even ones (sign(0) of the L1 pull)."""
    generator = torch.Generator().manual_seed(seed)
    params = [torch.randn(shape, generator=generator).to(dtypes[t % len(dtypes)]) for t, shape in enumerate(shapes)]
    indices = [random_indices(p.numel(), density, generator) for p in params]
    bases = [p.reshape(-1)[i].float() for p, i in zip(params, indices, strict=True)]
    masters = []
    for base in bases:
        master = base.clone()
        master[1::2] += 0.02 * torch.randn(master[1::2].shape, generator=generator)
        masters.append(master)
    zeros = [torch.zeros(i.numel()) for i in indices]
    grads = [[torch.randn(p.shape, generator=generator).to(p.dtype) for p in params] for _ in range(STEPS)]
    state = State(params, masters, zeros, [z.clone() for z in zeros])
    return Problem(state, indices, bases, grads)


def correctly_rounded_sqrt(x: torch.Tensor) -> torch.Tensor:
    """fp32 square root rounded to nearest even (numpy uses the hardware instruction)."""
    return torch.from_numpy(np.sqrt(x.numpy()))


def formula_step(state: State, grads, indices, bases, *, step: int, lr, beta1, beta2, eps, weight_decay, l1) -> None:
    """The contract's per-entry formula: each operation one rounded fp32 operation, in place.

    torch's fp32 multiply, add and divide are IEEE operations; only the square root is
    taken from numpy, whose fp32 sqrt is correctly rounded.
    """
    f32 = {
        name: torch.tensor(value, dtype=torch.float32)
        for name, value in {
            "beta1": beta1,
            "one_minus_beta1": 1.0 - beta1,
            "beta2": beta2,
            "one_minus_beta2": 1.0 - beta2,
            "decay": 1.0 - lr * weight_decay,
            "lr": lr,
            "bias1": 1.0 - beta1**step,
            "bias2": 1.0 - beta2**step,
            "eps": eps,
            "l1": l1,
        }.items()
    }
    for t, (param, grad, index) in enumerate(zip(state.params, grads, indices, strict=True)):
        g = grad.reshape(-1)[index].float()
        if l1 != 0.0:
            g = g + f32["l1"] * torch.sign(state.masters[t] - bases[t])
        m = state.exp_avgs[t] * f32["beta1"] + f32["one_minus_beta1"] * g
        v = state.exp_avg_sqs[t] * f32["beta2"] + (f32["one_minus_beta2"] * g) * g
        update = (f32["lr"] * (m / f32["bias1"])) / (correctly_rounded_sqrt(v / f32["bias2"]) + f32["eps"])
        w = state.masters[t] * f32["decay"] - update
        state.exp_avgs[t].copy_(m)
        state.exp_avg_sqs[t].copy_(v)
        state.masters[t].copy_(w)
        param.view(-1)[index] = w.to(param.dtype)


def run_steps(problem: Problem, state: State, step_fn, options: dict) -> None:
    bases = problem.bases if options["l1"] != 0.0 else None
    for step, grads in enumerate(problem.grads, start=1):
        step_fn(
            state.params,
            grads,
            problem.indices,
            state.masters,
            state.exp_avgs,
            state.exp_avg_sqs,
            bases,
            step=step,
            **HYPER,
            **options,
        )


def public_native_step(params, grads, indices, masters, exp_avgs, exp_avg_sqs, bases, **kwargs) -> None:
    masked_adamw_step_(params, grads, indices, masters, exp_avgs, exp_avg_sqs, bases, backend="native", **kwargs)


def formula_step_positional(params, grads, indices, masters, exp_avgs, exp_avg_sqs, bases, **kwargs) -> None:
    formula_step(State(params, masters, exp_avgs, exp_avg_sqs), grads, indices, bases, **kwargs)


def assert_untouched(after: list[torch.Tensor], before: list[torch.Tensor], indices: list[torch.Tensor]) -> None:
    for t, (a, b, index) in enumerate(zip(after, before, indices, strict=True)):
        outside = torch.ones(a.numel(), dtype=torch.bool)
        outside[index] = False
        assert_bitwise_equal(a.reshape(-1)[outside], b.reshape(-1)[outside], what=f"param {t} outside the indices")


def assert_states_bitwise_equal(actual: State, expected: State) -> None:
    for name in ("params", "masters", "exp_avgs", "exp_avg_sqs"):
        for t, (a, e) in enumerate(zip(getattr(actual, name), getattr(expected, name), strict=True)):
            assert_bitwise_equal(a, e, what=f"{name}[{t}]")


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
@pytest.mark.parametrize("density", DENSITIES.values(), ids=DENSITIES.keys())
@pytest.mark.parametrize("dtypes", DTYPE_SETS.values(), ids=DTYPE_SETS.keys())
@pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
def test_bitwise_equal_to_the_fp32_formula(shapes, dtypes, density, options):
    problem = make_problem(shapes, dtypes, density)
    before = [p.clone() for p in problem.state.params]
    native_state, formula_state = problem.state.clone(), problem.state.clone()
    run_steps(problem, native_state, public_native_step, options)
    run_steps(problem, formula_state, formula_step_positional, options)
    assert_states_bitwise_equal(native_state, formula_state)
    assert_untouched(native_state.params, before, problem.indices)


def master_tolerance(steps: int, lr: float, beta1: float, beta2: float) -> tuple[float, float]:
    """(rtol, atol) between masters whose square roots may differ by 1 ulp each step.

    Per step the update ``u`` changes by a few ulp of ``u`` and the subtraction may round the
    other way (1 ulp of the master); over ``steps`` steps the differences add up. The
    update is at most ``lr (1 - beta1) / sqrt(1 - beta2)`` in magnitude (Adam's bound).
    """
    rtol = tolerance(torch.float32, steps)
    max_update = lr * (1.0 - beta1) / (1.0 - beta2) ** 0.5
    return rtol, rtol * steps * max_update


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
@pytest.mark.parametrize("dtypes", DTYPE_SETS.values(), ids=DTYPE_SETS.keys())
@pytest.mark.parametrize("shapes", SHAPE_SETS.values(), ids=SHAPE_SETS.keys())
def test_matches_the_torch_reference(shapes, dtypes, options):
    problem = make_problem(shapes, dtypes, 0.3, seed=1)
    native_state, torch_state = problem.state.clone(), problem.state.clone()
    run_steps(problem, native_state, public_native_step, options)
    run_steps(problem, torch_state, with_keywords(reference.masked_adamw_step_), options)
    rtol, atol = master_tolerance(STEPS, HYPER["lr"], HYPER["beta1"], HYPER["beta2"])
    for t, index in enumerate(problem.indices):
        assert_bitwise_equal(native_state.exp_avgs[t], torch_state.exp_avgs[t], what=f"exp_avg {t}")
        assert_bitwise_equal(native_state.exp_avg_sqs[t], torch_state.exp_avg_sqs[t], what=f"exp_avg_sq {t}")
        assert_close(native_state.masters[t], torch_state.masters[t], rtol=rtol, atol=atol, what=f"master {t}")
        dtype = native_state.params[t].dtype
        # A master 1 ulp off may round to the neighbouring value of a 16-bit dtype.
        param_rtol = 2 * UNIT_ROUNDOFF[dtype] + rtol
        assert_close(
            native_state.params[t].view(-1)[index],
            torch_state.params[t].view(-1)[index],
            rtol=param_rtol,
            atol=atol + 2.0**-24,
            what=f"param {t}",
        )


def test_l1_pull_alone_moves_each_master_by_lr_toward_its_anchor():
    # Zero gradient, step 1: g = l1 * sign(master - base), so the Adam update is lr * sign
    # exactly (eps vanishes next to sqrt(v_hat) = 0.5); sign(0) = 0 leaves the master alone.
    params = [torch.tensor([1.0, 2.0, 3.0, 4.0])]
    grads = [torch.zeros(4)]
    indices = [torch.tensor([0, 2, 3])]
    bases = [torch.tensor([1.0, 3.0, 4.0])]
    masters = [torch.tensor([1.5, 3.0, 3.5])]
    m, v = [torch.zeros(3)], [torch.zeros(3)]
    native_step(params, grads, indices, masters, m, v, bases, step=1, lr=0.25, l1=0.5)
    assert_bitwise_equal(masters[0], torch.tensor([1.25, 3.0, 3.75]), what="masters")
    assert_bitwise_equal(params[0], torch.tensor([1.25, 2.0, 3.0, 3.75]), what="params")


def test_rounds_the_master_to_nearest_even_in_the_param_dtype():
    # 1 + 2^-8 lies halfway between two bf16 values: ties to even gives 1.0.
    params = [torch.zeros(2, dtype=torch.bfloat16)]
    masters = [torch.tensor([1.0 + 2.0**-8, 1.0 + 3 * 2.0**-8])]
    grads = [torch.zeros(2, dtype=torch.bfloat16)]
    indices = [torch.tensor([0, 1])]
    native_step(params, grads, indices, masters, [torch.zeros(2)], [torch.zeros(2)], None, step=1, lr=0.0)
    assert params[0].tolist() == [1.0, 1.015625]


BAD_INDEX_LISTS = {
    "last_out_of_range": [0, 2 * CHUNK + 5],
    "negative": [-1, 3],
    "unsorted": [5, 3],
    "duplicate": [3, 3],
    "unsorted_across_chunks": [*range(CHUNK), 0],
}


@pytest.mark.parametrize("bad", BAD_INDEX_LISTS.values(), ids=BAD_INDEX_LISTS.keys())
def test_bad_index_lists_raise_before_anything_is_written(bad):
    # The first tensor is valid and comes first: it must not be updated either.
    params = [torch.zeros(8), torch.zeros(2 * CHUNK + 5)]
    indices = [torch.tensor([1, 6]), torch.tensor(bad)]
    grads = [torch.ones_like(p) for p in params]
    masters = [torch.ones(i.numel()) for i in indices]
    with pytest.raises(ValueError, match="not sorted or has an entry out of range"):
        moments = [torch.zeros(i.numel()) for i in indices]
        native_step(params, grads, indices, masters, moments, [m.clone() for m in moments], None, step=1, lr=0.1)
    for t, (param, master) in enumerate(zip(params, masters, strict=True)):
        assert_bitwise_equal(param, torch.zeros_like(param), what=f"params[{t}]")
        assert_bitwise_equal(master, torch.ones_like(master), what=f"masters[{t}]")


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"masters": [torch.zeros(3, dtype=torch.float64)]}, "masters\\[0\\] must be a contiguous float32"),
        ({"exp_avgs": [torch.zeros(2)]}, "exp_avgs\\[0\\] must be a contiguous float32 tensor of shape \\(3,\\)"),
        ({"grads": [torch.zeros(5, dtype=torch.float16)]}, "grads\\[0\\] differs"),
        ({"indices": [torch.tensor([0, 2, 4], dtype=torch.int32)]}, "int64"),
        ({"l1": 0.1}, "needs bases"),
        ({"params": [torch.zeros(10)[::2]]}, "contiguous"),
    ],
)
def test_rejects_what_it_cannot_read_safely(change, match):
    args = {**one_param_step_tensors(), "bases": None}
    args.update({name: value for name, value in change.items() if name != "l1"})
    l1 = change.get("l1", 0.0)
    with pytest.raises(ValueError, match=match):
        native_step(**args, step=1, lr=0.1, l1=l1)


# A step on 64 chunks of subnormal state and gradients: a first step starts the OpenMP workers,
# then the calling thread flushes subnormals and the step is taken on fresh copies.
SUBNORMAL_HYPER = {"step": 1, "lr": 1e-3, "beta1": 0.9, "beta2": 0.999, "eps": 1e-8}
FLUSHING_STEP = """
import sys, torch
from deftx.ops.native.masked_step import masked_adamw_step_
from deftx.ops.settings import AdamWSettings, MaskedStepTensors
from tests.ops.native.test_masked_step import SUBNORMAL_HYPER, subnormal_problem

def step(problem):
    state, grads, indices = problem
    tensors = MaskedStepTensors(state.params, grads, indices, state.masters, state.exp_avgs, state.exp_avg_sqs)
    masked_adamw_step_(tensors, AdamWSettings(**SUBNORMAL_HYPER))
    return state

step(subnormal_problem())
problem = subnormal_problem()  # made before flushing, which would flush torch's own arithmetic
if not torch.set_flush_denormal(True):
    sys.exit(77)
state = step(problem)
torch.save([state.params, state.masters, state.exp_avgs, state.exp_avg_sqs], sys.argv[1])
"""


def subnormal_problem() -> tuple[State, list[torch.Tensor], list[torch.Tensor]]:
    """One fp32 parameter of 64 * CHUNK entries, all selected, whose masters and gradients are
    subnormals in [tiny / 4, tiny / 2]: the first moments are subnormals (flushed: zeros), the
    second moments underflow to 0 in both modes, so the square root is exact."""
    generator = torch.Generator().manual_seed(0)
    quarter = torch.finfo(torch.float32).tiny / 4
    n = 64 * CHUNK
    masters = (torch.rand(n, generator=generator) + 1.0) * quarter
    grads = [(torch.rand(n, generator=generator) + 1.0) * quarter]
    state = State([masters.clone()], [masters], [torch.zeros(n)], [torch.zeros(n)])
    return state, grads, [torch.arange(n)]


def test_subnormals_are_kept_whatever_the_callers_denormal_mode(tmp_path):
    """The step computes with subnormals on every thread, also when the calling thread flushes
    them (``torch.set_flush_denormal(True)`` sets it on that thread only): the state is the
    documented fp32 formula's, whichever thread takes which chunk."""
    expected, grads, indices = subnormal_problem()
    formula_step(expected, grads, indices, None, weight_decay=0.0, l1=0.0, **SUBNORMAL_HYPER)
    assert bool((expected.exp_avgs[0] != 0).all())  # a flushed first moment would be a zero
    run_flushing_caller(FLUSHING_STEP, str(tmp_path / "state.pt"))
    params, masters, exp_avgs, exp_avg_sqs = torch.load(tmp_path / "state.pt")
    assert_states_bitwise_equal(State(params, masters, exp_avgs, exp_avg_sqs), expected)
