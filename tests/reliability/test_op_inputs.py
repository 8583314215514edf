"""Bad input to every public op: an error of the right kind naming the op, the tensor and the problem
(NaN/Inf where they make the result meaningless, meta tensors before any ``.item()``, wrong dtypes,
one tensor passed twice), on every CPU backend."""

from __future__ import annotations

import math

import pytest
import torch

from deftx.ops import (
    denoised_magnitudes,
    denoised_magnitudes_batched,
    lowrank_denoise,
    lowrank_factors,
    masked_adamw_step_,
    scatter_add_,
    scatter_restore_,
    topk_mask,
)

BACKENDS = ["torch", "native"]


def matrix(bad: float | None = None, device: str = "cpu") -> torch.Tensor:
    m = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    if bad is not None:
        m[2, 3] = bad
    return m.to(device)


def step_args(device="cpu", dtype=torch.float32, twice=False):
    p = torch.zeros(8, dtype=dtype, device=device)
    idx = torch.tensor([1, 5], device=device if device != "meta" else "meta")
    state = [torch.zeros(2, device=device) for _ in range(3)]
    params = [p, p] if twice else [p]
    count = len(params)
    return (params, [torch.ones_like(p)] * count, [idx] * count, [state[0]] * count, [state[1]] * count,
            [state[2]] * count)


def scatter_twice(backend):
    w = torch.zeros(8)
    idx, val = torch.tensor([1]), torch.ones(1)
    scatter_add_([w, w], [[idx, idx]], [[val, val]], backend=backend)


CASES = [
    ("topk_mask NaN", lambda b: topk_mask([torch.ones(3), torch.tensor([1.0, math.nan])], 2, backend=b),
     ValueError, r"topk_mask: tensor 1 .* NaN"),
    ("topk_mask meta", lambda b: topk_mask([torch.ones(3, device="meta")], 1, backend=b),
     ValueError, r"topk_mask: tensor 0 is a meta tensor"),
    ("topk_mask int", lambda b: topk_mask([torch.ones(3, dtype=torch.int32)], 1, backend=b),
     TypeError, r"topk_mask: tensor 0 has dtype torch.int32"),
    ("scatter_add_ meta values onto cpu", lambda b: scatter_add_([torch.zeros(4)], [[torch.tensor([0])]],
                                                                [[torch.ones(1, device="meta")]], backend=b),
     ValueError, r"scatter_add_: diff 0, tensor 0: indices/values must be on cpu"),
    ("scatter_add_ one tensor twice", scatter_twice, ValueError, r"scatter_add_: dense: tensors 0 and 1 overlap"),
    ("masked step one param twice", lambda b: masked_adamw_step_(*step_args(twice=True), step=1, lr=0.1, backend=b),
     ValueError, r"masked_adamw_step_: params: tensors 0 and 1 overlap"),
    ("scatter_restore_ one tensor twice", lambda b: scatter_restore_(
        [torch.zeros(8)] * 2, [[torch.tensor([1])] * 2], [[torch.zeros(1)] * 2], backend=b),
     ValueError, r"scatter_restore_: dense: tensors 0 and 1 overlap"),
]

DENOISE_CASES = [
    ("lowrank_denoise NaN matrix", lambda: lowrank_denoise(matrix(math.nan), 2),
     r"lowrank_denoise: matrix .* 1 NaN/Inf"),
    ("lowrank_denoise Inf base", lambda: lowrank_denoise(matrix(), 2, base=matrix(math.inf)),
     r"lowrank_denoise: base .* 1 NaN/Inf"),
    ("lowrank exact -Inf", lambda: lowrank_denoise(matrix(-math.inf), 2, method="exact"), r"matrix .* NaN/Inf"),
    ("lowrank energy NaN", lambda: lowrank_factors(matrix(math.nan), energy=0.9), r"matrix .* NaN/Inf"),
    ("denoised_magnitudes NaN", lambda: denoised_magnitudes(matrix(math.nan), matrix(), rank=1),
     r"matrix 0 \(shape \(6, 5\)\) has a non-finite"),
    ("batched exact Inf base", lambda: denoised_magnitudes_batched([matrix()], [matrix(math.inf)], rank=1,
                                                                   method="exact"),
     r"matrix 0 \(shape \(6, 5\)\) has a non-finite"),
    ("lowrank meta", lambda: lowrank_denoise(matrix(device="meta"), 2), r"matrix is a meta tensor"),
    # lowrank_factors named lowrank_denoise, which the caller never called, in every error
    ("lowrank_factors meta", lambda: lowrank_factors(matrix(device="meta"), 2),
     r"^lowrank_factors: matrix is a meta tensor"),
    ("lowrank_factors NaN", lambda: lowrank_factors(matrix(math.nan), 2), r"^lowrank_factors: matrix .* NaN/Inf"),
]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(("call", "error", "match"), [pytest.param(c, e, m, id=i) for i, c, e, m in CASES])
def test_bad_op_input_is_refused_with_a_clear_message(call, error, match, backend):
    with pytest.raises(error, match=match):
        call(backend)


@pytest.mark.parametrize(("call", "match"), [pytest.param(c, m, id=i) for i, c, m in DENOISE_CASES])
def test_non_finite_or_meta_matrices_are_refused_by_the_denoiser(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_the_torch_backend_no_longer_adds_a_tensor_passed_twice():
    """Issue #24: native refused [w, w]; the torch backend added both diffs into w. Now both refuse, w untouched."""
    for backend in BACKENDS:
        w = torch.zeros(8)
        with pytest.raises(ValueError, match="overlap"):
            scatter_add_([w, w], [[torch.tensor([1]), torch.tensor([1])]], [[torch.ones(1), torch.ones(1)]],
                         backend=backend)
        assert torch.equal(w, torch.zeros(8))
