"""kernels/masked_step.py, interpreted on CPU and compiled on CUDA, against an explicit fp32 loop.

The reference below applies the contract's formula op by op in fp32 with IEEE division and
a correctly rounded square root (computed in float64 and rounded once: exact for fp32
inputs). torch's own fp32 ``sqrt`` on CPU is not correctly rounded, so it is not used.
"""

from __future__ import annotations

import pytest
import torch

from deftx.kernels import kernel_module
from deftx.ops.settings import AdamWSettings, MaskedStepTensors
from tests.helpers import assert_bitwise_equal
from tests.kernels.devices import kernels_for

DTYPES = [torch.float32, torch.bfloat16, torch.float16]
DTYPE_IDS = ["fp32", "bf16", "fp16"]
MAX_ULPS = 2
"""Contract: masters / moments within a few fp32 ulps of the reference."""

# (shape, K): ragged sizes, a single entry, no entry, and K > BLOCK with a ragged tail.
TENSORS = [((37, 53), 300), ((1, 5), 1), ((4, 4), 0), ((64, 96), 2100)]


@pytest.fixture(name="masked_step")
def masked_step_on_device(device):
    return kernels_for("masked_step", device)


def f32(x: float) -> torch.Tensor:
    return torch.tensor(x, dtype=torch.float32)


def sqrt_rn(x: torch.Tensor) -> torch.Tensor:
    """Correctly rounded fp32 square root."""
    return x.double().sqrt().float()


def reference_step(param, grad, idx, master, m, v, base, hp, step):
    """One step on one tensor, entry-wise fp32 ops in the contract's order (updates in place)."""
    g = grad.reshape(-1)[idx].float()
    if hp["l1"] != 0.0:
        g = g + f32(hp["l1"]) * torch.sign(master - base)
    m.copy_(f32(hp["beta1"]) * m + f32(1.0 - hp["beta1"]) * g)
    v.copy_(f32(hp["beta2"]) * v + f32(1.0 - hp["beta2"]) * g * g)
    bias1, bias2 = f32(1.0 - hp["beta1"] ** step), f32(1.0 - hp["beta2"] ** step)
    w = master * f32(1.0 - hp["lr"] * hp["weight_decay"])
    w = w - (f32(hp["lr"]) * (m / bias1)) / (sqrt_rn(v / bias2) + f32(hp["eps"]))
    master.copy_(w)
    param.view(-1)[idx] = w.to(param.dtype)


def ulp_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a − b| in fp32 ulps (sign-magnitude bit patterns mapped to a monotone integer line)."""

    def line(x):
        bits = x.contiguous().view(torch.int32).long()
        return torch.where(bits < 0, -(bits & 0x7FFFFFFF), bits)

    return (line(a) - line(b)).abs()


def assert_within_ulps(actual, expected, what):
    distance = ulp_distance(actual.cpu(), expected.cpu())
    assert distance.numel() == 0 or int(distance.max()) <= MAX_ULPS, (
        f"{what}: {int((distance > MAX_ULPS).sum())} entries beyond {MAX_ULPS} ulps "
        f"(max {int(distance.max())})"
    )


def make_state(shapes_and_k, dtypes, gen, device, *, unaligned=False):
    """Parameters, grads, sorted indices and fp32 K-space state for each tensor, on ``device``
    (drawn on the CPU from ``gen``).

    With ``unaligned`` the K-space tensors are views starting one element into a buffer,
    so their addresses are not 16-byte aligned.
    """

    def k_space(values):
        if not unaligned:
            return values.to(device, copy=True)
        buffer = torch.empty(values.numel() + 1, dtype=values.dtype, device=device)
        buffer[1:] = values
        return buffer[1:]

    state = {k: [] for k in ("params", "grads", "indices", "masters", "exp_avgs", "exp_avg_sqs", "bases")}
    for (shape, k), dtype in zip(shapes_and_k, dtypes, strict=True):
        numel = torch.Size(shape).numel()
        param = torch.randn(shape, generator=gen).to(dtype)
        idx = torch.randperm(numel, generator=gen)[:k].sort().values
        base = param.reshape(-1)[idx].float()
        master = base + 0.01 * torch.randn(k, generator=gen)
        master[: k // 4] = base[: k // 4]  # some entries sit exactly on θ0: sign(0) = 0
        state["params"].append(param.to(device))
        state["grads"].append(torch.randn(shape, generator=gen).to(dtype).to(device))
        state["indices"].append(k_space(idx))
        state["masters"].append(k_space(master))
        state["exp_avgs"].append(k_space(0.01 * torch.randn(k, generator=gen)))
        state["exp_avg_sqs"].append(k_space(1e-4 * torch.rand(k, generator=gen)))
        state["bases"].append(k_space(base))
    return state


def cpu_copy(state):
    return {name: [t.cpu().clone() for t in tensors] for name, tensors in state.items()}


def run_and_compare(masked_step, state, hp, steps, gen):
    """``steps`` kernel steps on the state's device against the fp32 loop on CPU copies."""
    device = state["params"][0].device
    expected = cpu_copy(state)
    originals = [p.clone() for p in state["params"]]
    for step in range(1, steps + 1):
        grads = [torch.randn(p.shape, generator=gen).to(p.dtype) for p in state["params"]]
        grads_on_device = [g.to(device, copy=True) for g in grads]
        masked_step.masked_adamw_step_(MaskedStepTensors(
            state["params"], grads_on_device, state["indices"], state["masters"], state["exp_avgs"],
            state["exp_avg_sqs"], state["bases"] if hp["l1"] != 0.0 else None), AdamWSettings(step, **hp),
        )  # fmt: skip
        for t in range(len(grads)):
            assert_bitwise_equal(grads_on_device[t], grads[t], what=f"grad {t} is read-only")
            reference_step(
                expected["params"][t], grads[t], expected["indices"][t], expected["masters"][t],
                expected["exp_avgs"][t], expected["exp_avg_sqs"][t], expected["bases"][t], hp, step,
            )  # fmt: skip

    for t, param in enumerate(state["params"]):
        idx = state["indices"][t]
        assert_within_ulps(state["masters"][t], expected["masters"][t], f"master {t}")
        assert_within_ulps(state["exp_avgs"][t], expected["exp_avgs"][t], f"exp_avg {t}")
        assert_within_ulps(state["exp_avg_sqs"][t], expected["exp_avg_sqs"][t], f"exp_avg_sq {t}")
        flat = param.reshape(-1)
        assert_bitwise_equal(flat[idx], state["masters"][t].to(param.dtype), what=f"param {t} at indices")
        outside = torch.ones(flat.numel(), dtype=torch.bool, device=device)
        outside[idx] = False
        assert_bitwise_equal(flat[outside], originals[t].reshape(-1)[outside], what=f"param {t} outside")


HYPERPARAMETERS = {
    "plain": dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, l1=0.0),
    "weight_decay": dict(lr=3e-3, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=0.1, l1=0.0),
    "l1": dict(lr=1e-2, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0, l1=0.1),
    "l1_weight_decay": dict(lr=5e-3, beta1=0.9, beta2=0.98, eps=1e-8, weight_decay=0.01, l1=0.05),
}


@pytest.mark.parametrize("hp_name", list(HYPERPARAMETERS))
@pytest.mark.parametrize("dtype", DTYPES, ids=DTYPE_IDS)
def test_steps_match_the_fp32_loop(masked_step, dtype, hp_name, monkeypatch, device):
    gen = torch.Generator().manual_seed(DTYPES.index(dtype) * 10 + list(HYPERPARAMETERS).index(hp_name))
    state = make_state(TENSORS, [dtype] * len(TENSORS), gen, device)
    launches = record_launches(masked_step, monkeypatch)
    run_and_compare(masked_step, state, HYPERPARAMETERS[hp_name], steps=3, gen=gen)
    assert len(launches) == 3  # one launch per step covers every tensor
    assert all(launch["ALIGNED"] for launch in launches)


def test_unaligned_state_and_mixed_dtypes(masked_step, monkeypatch, device):
    gen = torch.Generator().manual_seed(99)
    shapes = [((37, 53), 300), ((1, 5), 1), ((40, 30), 1100), ((4, 4), 0)]
    state = make_state(shapes, [*DTYPES, torch.bfloat16], gen, device, unaligned=True)
    launches = record_launches(masked_step, monkeypatch)
    run_and_compare(masked_step, state, HYPERPARAMETERS["l1_weight_decay"], steps=2, gen=gen)
    assert len(launches) == 2 * 3  # one launch per parameter dtype per step
    assert not any(launch["ALIGNED"] for launch in launches)


def test_no_selected_entries_launches_nothing(masked_step, monkeypatch, device):
    launches = record_launches(masked_step, monkeypatch)
    param = torch.randn(3, 3, device=device)
    before = param.clone()
    empty = torch.empty(0, device=device)
    masked_step.masked_adamw_step_(MaskedStepTensors(
        [param], [torch.randn(3, 3, device=device)], [torch.empty(0, dtype=torch.int64, device=device)], [empty],
        [empty.clone()], [empty.clone()]), AdamWSettings(1, **HYPERPARAMETERS["plain"]),
    )  # fmt: skip
    assert launches == []
    assert_bitwise_equal(param, before)


def test_rounding_to_bf16_is_nearest_even(masked_step, device):
    """The interpreter path rounds by hand: check ties and carries on chosen values."""
    values = torch.tensor(
        [1.0 + 2**-8, 1.0 + 3 * 2**-8, 1.0 + 2**-8 + 2**-20, 2.0 - 2**-9, -(1.0 + 2**-8), 3.0e38, 1e-40],
        dtype=torch.float32,
    )
    k = values.numel()
    param = torch.zeros(k, dtype=torch.bfloat16, device=device)
    # lr = 0 and no decay: the step writes the masters unchanged, rounded to bf16.
    masters = values.to(device, copy=True)
    masked_step.masked_adamw_step_(MaskedStepTensors(
        [param], [torch.zeros(k, dtype=torch.bfloat16, device=device)], [torch.arange(k, device=device)], [masters],
        [torch.zeros(k, device=device)], [torch.zeros(k, device=device)]), AdamWSettings(1, lr=0.0),
    )  # fmt: skip
    assert_bitwise_equal(masters, values)
    assert_bitwise_equal(param, values.to(torch.bfloat16))


def test_nan_masters_stay_nan_in_bf16(masked_step, device):
    """NaNs of every payload width and sign, the high payloads included that the hand rounding
    would carry into the sign bit (0x7FFFFFFF -> -0.0 before its NaN guard), give NaN params."""
    bits = torch.tensor([0x7FC00000, 0x7FFF8001, 0x7FFFFFFF, -0x00400000, -0x00007FFF, -1], dtype=torch.int32)
    values = bits.view(torch.float32)
    k = values.numel()
    param = torch.zeros(k, dtype=torch.bfloat16, device=device)
    masked_step.masked_adamw_step_(MaskedStepTensors(
        [param], [torch.zeros(k, dtype=torch.bfloat16, device=device)], [torch.arange(k, device=device)],
        [values.to(device, copy=True)], [torch.zeros(k, device=device)], [torch.zeros(k, device=device)]),
        AdamWSettings(1, lr=0.0),
    )  # fmt: skip
    written = param.cpu()
    assert bool(written.isnan().all()), f"non-NaN params {written.view(torch.int16).tolist()} from NaN masters"


def record_launches(masked_step, monkeypatch) -> list[dict]:
    """Record the named arguments of every kernel launch; each must match a declared spec."""
    kernel = masked_step._masked_adamw_kernel
    specs = [s for s in masked_step.SPECIALIZATIONS if s.kernel is kernel]
    launches: list[dict] = []

    class Recorder:
        def __getitem__(self, grid):
            launch = kernel[grid]

            def run(*args, **kwargs):
                named = {**dict(zip(kernel.arg_names, args, strict=False)), **kwargs}
                assert any(
                    all(named[k] == v for k, v in s.constexprs.items()) and named["num_warps"] == s.num_warps
                    for s in specs
                ), f"undeclared launch: { {k: named[k] for k in specs[0].constexprs} }"
                launches.append(named)
                return launch(*args, **kwargs)

            return run

    monkeypatch.setattr(masked_step, "_masked_adamw_kernel", Recorder())
    return launches


def test_specializations():
    masked_step = kernel_module("masked_step", interpret=False)
    names = [s.name for s in masked_step.SPECIALIZATIONS]
    assert len(names) == len(set(names)) == len(DTYPES) * 2 * 2
    for spec in masked_step.SPECIALIZATIONS:
        assert set(spec.constexprs) == {k for k, v in spec.signature.items() if v == "constexpr"}
        assert ("vectorized_loads" in spec.promises) == spec.constexprs["ALIGNED"]
