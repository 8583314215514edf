"""Benchmark case: one optimizer step of sparse retraining.

* deftx: ``deftx.ops.masked_adamw_step_(...)`` on the K selected entries (fp32 master
  values and moments of length K_t per tensor, created by ``bind``): the public op, which
  checks its arguments on every call.
* ``deftx_prepared``: the same step as ``MaskedAdamW.step`` takes it in training: the
  tensors checked and the step planned once when bound (``deftx.ops.masked_step.
  prepare_masked_step``, auto backend), each step only the gradients and the settings (on
  Triton one launch per dtype, the address table uploaded again only when the gradients
  move). Listed with the baselines (the case table has no other place for a variant); its
  comparison row reads as the public op's time over this one's.
* ``adamw``: ``torch.optim.AdamW`` over the whole parameters (torch's default
  implementation for the device: foreach on CUDA, the for-loop on CPU).
* ``adamw_fused``: ``torch.optim.AdamW(fused=True)``.

The dense optimizer's state is created by its first step (the warm-up call), so timed
steps are steady-state, and the memory probe (``bind`` + one step) counts the state.
Settings: lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight decay 0.01, no L1.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from deftx.ops import masked_adamw_step_
from deftx.ops.masked_step import prepare_masked_step
from deftx.ops.registry import op_of_bench_case
from deftx.ops.settings import AdamWSettings
from deftx.perf import synthetic
from deftx.perf.cases.base import CaseSpec, SparseInputs, Traffic, backend_of, sparse_inputs

OP = "step"
PREPARED = "deftx_prepared"
BASELINES: dict[str, str] = {
    PREPARED: "deftx checked once (MaskedAdamW's step)",
    "adamw": "torch.optim.AdamW",
    "adamw_fused": "AdamW(fused=True)",
}
ROOFLINE = "memory"

LR = 1e-4
BETAS = (0.9, 0.999)
EPS = 1e-8
WEIGHT_DECAY = 0.01
ULPS = 4
"""The rounding a selected entry may differ by from torch.optim.AdamW's step: another order of the
same fp32 operations, or the other side of a 16-bit rounding."""
COST = op_of_bench_case(OP).cost_model()
"""The masked step's bytes / FLOP model (``deftx.ops.cost.masked_step``)."""


@dataclass
class StepInputs(SparseInputs):
    """Parameters, the selected indices, and the parameters' gradients per tensor."""

    grads: list[torch.Tensor]


def make_inputs(spec: CaseSpec) -> StepInputs:
    """Synthetic weights, ``1e-3 * N(0, 1)`` gradients, uniform indices (``sparse_indices``)."""
    base = sparse_inputs(spec)
    flat = spec.shapes.flat()
    grads = [synthetic.normal(t, spec.seed, spec.torch_device, spec.torch_dtype, 1e-3, salt="grad:") for t in flat]
    return StepInputs(base.weights, base.indices, grads)


def _masked_state(inputs: StepInputs) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    """fp32 masters (the selected weights) and zero moments, one of each per tensor."""
    masters = [p.view(-1)[idx].float() for p, idx in zip(inputs.weights, inputs.indices, strict=True)]
    return masters, [torch.zeros_like(m) for m in masters], [torch.zeros_like(m) for m in masters]


def _prepared_step(inputs: StepInputs) -> Callable[[], None]:
    """MaskedAdamW's step: the selections checked and the step planned here, once
    (``prepare_masked_step``); each step passes the gradients and its settings."""
    prepared = prepare_masked_step(inputs.weights, inputs.indices, *_masked_state(inputs))
    steps = itertools.count(1)

    def step() -> None:
        prepared.step(inputs.grads, AdamWSettings(next(steps), LR, BETAS[0], BETAS[1], EPS, WEIGHT_DECAY))

    return step


def _masked_step(inputs: StepInputs, backend: str) -> Callable[[], None]:
    masters, exp_avgs, exp_avg_sqs = _masked_state(inputs)
    steps = itertools.count(1)

    def step() -> None:
        masked_adamw_step_(
            inputs.weights,
            inputs.grads,
            inputs.indices,
            masters,
            exp_avgs,
            exp_avg_sqs,
            step=next(steps),
            lr=LR,
            beta1=BETAS[0],
            beta2=BETAS[1],
            eps=EPS,
            weight_decay=WEIGHT_DECAY,
            backend=backend,
        )

    return step


def _dense_step(inputs: StepInputs, fused: bool) -> Callable[[], None]:
    params = [torch.nn.Parameter(p, requires_grad=True) for p in inputs.weights]
    for p, g in zip(params, inputs.grads, strict=True):
        p.grad = g
    optimizer = torch.optim.AdamW(
        params, lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY, fused=True if fused else None
    )
    return optimizer.step


def bind(impl: str, inputs: StepInputs) -> Callable[[], object]:
    """Create the implementation's optimizer state and return its step."""
    backend = backend_of(impl)
    if backend is not None:
        return _masked_step(inputs, backend)
    if impl == PREPARED:
        return _prepared_step(inputs)
    if impl in ("adamw", "adamw_fused"):
        return _dense_step(inputs, fused=impl == "adamw_fused")
    raise KeyError(f"step: unknown implementation {impl!r}")


def traffic(impl: str, inputs: StepInputs) -> Traffic:
    """The op's cost model (:data:`COST`) per tensor, summed: ``bytes_moved`` / ``flops`` for
    deftx (either path), ``baseline_bytes_moved`` / ``baseline_flops`` (a dense AdamW step) for the baselines."""
    deftx = backend_of(impl) is not None or impl == PREPARED
    total_bytes, total_flops = 0.0, 0.0
    for p, idx in zip(inputs.weights, inputs.indices, strict=True):
        size, k = p.element_size(), idx.numel()
        if deftx:
            total_bytes += COST.bytes_moved(k, p.numel(), param_bytes=size)
            total_flops += COST.flops(k)
        else:
            total_bytes += COST.baseline_bytes_moved(p.numel(), param_bytes=size)
            total_flops += COST.baseline_flops(p.numel())
    which = "bytes_moved / flops" if deftx else "baseline_bytes_moved / baseline_flops"
    return Traffic(total_bytes, total_flops, f"{COST.__name__}.{which}")


def quality(impl: str, inputs: StepInputs, output: object) -> dict[str, float]:
    """Nothing to report (correctness is the op tests' job)."""
    return {}


def selected(inputs: StepInputs) -> int:
    return sum(i.numel() for i in inputs.indices)


def _reference_step(weight: torch.Tensor, grad: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """(k,) the selected entries of ``weight`` after one ``torch.optim.AdamW`` step (fp32 masters,
    fresh moments) on them alone, rounded to ``weight``'s dtype."""
    master = torch.nn.Parameter(weight.reshape(-1)[idx].float())
    master.grad = grad.reshape(-1)[idx].float()
    torch.optim.AdamW([master], lr=LR, betas=BETAS, eps=EPS, weight_decay=WEIGHT_DECAY).step()
    return master.detach().to(weight.dtype)


def mismatch(impl: str, inputs: StepInputs) -> str | None:
    """What is wrong with the first step of deftx's ``impl`` (a backend or the prepared step) on a
    copy of the weights, or None if it writes :func:`_reference_step` at the selected entries
    (within :data:`ULPS` units in the last place of the entry before and after the step) and leaves
    every other entry as it was."""
    copies = StepInputs([w.clone() for w in inputs.weights], inputs.indices, inputs.grads)
    bind(impl, copies)()
    for t, (before, after, grad, idx) in enumerate(
        zip(inputs.weights, copies.weights, inputs.grads, inputs.indices, strict=True)
    ):
        taken = torch.zeros(before.numel(), dtype=torch.bool, device=before.device)
        taken[idx] = True
        moved = int((after.reshape(-1)[~taken] != before.reshape(-1)[~taken]).sum())
        if moved:
            return f"tensor {t}: {moved} entries outside the selection changed"
        if idx.numel() == 0:
            continue
        expected = _reference_step(before, grad, idx).float()
        got = after.reshape(-1)[idx].float()
        finfo = torch.finfo(before.dtype)
        bound = ULPS * finfo.eps * (expected.abs() + before.reshape(-1)[idx].float().abs()) + finfo.eps * finfo.tiny
        wrong = int(((got - expected).abs() > bound).sum())
        if wrong:
            return f"tensor {t}: {wrong} of {idx.numel()} selected entries differ from torch.optim.AdamW's step"
    return None
