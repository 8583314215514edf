"""The settings contract of each op that has one, declared once and taken by every backend.

Pure Python (no torch, no Triton): the public ops build a settings object from their keyword
arguments, the ``torch.library`` custom ops carry it as plain numbers
(:meth:`AdamWSettings.hyperparameters` / :meth:`AdamWSettings.from_op`), and the torch,
native and Triton backends all take the object itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    import torch


class MaskedStepTensors(NamedTuple):
    """The masked AdamW step's tensors: T of each (one per parameter), ``bases`` None or T.

    Attributes:
        params, grads: T tensors of one shape and float dtype pairwise; params are written only
            at their indices, grads read only there.
        indices: T int64 (K_t,) sorted unique flat indices.
        masters, exp_avgs, exp_avg_sqs: T fp32 (K_t,) tensors, updated in place.
        bases: T fp32 (K_t,) θ0 values for the L1 pull (needed when ``l1 != 0``), or None.
    """

    params: Sequence[torch.Tensor]
    grads: Sequence[torch.Tensor]
    indices: Sequence[torch.Tensor]
    masters: Sequence[torch.Tensor]
    exp_avgs: Sequence[torch.Tensor]
    exp_avg_sqs: Sequence[torch.Tensor]
    bases: Sequence[torch.Tensor] | None = None


FP32_MAX = 3.4028234663852886e38
"""The largest finite float32: the kernels take the step's scalars in float32."""


@dataclass(frozen=True)
class AdamWSettings:
    """One masked AdamW step's settings (``deftx.ops.masked_adamw_step_``).

    Attributes:
        step: the step number, an int >= 1 (already incremented), for the bias corrections.
        lr, beta1, beta2, eps, weight_decay: AdamW's (decoupled weight decay), in the ranges
            ``torch.optim.AdamW`` takes: betas in [0, 1), the others finite and >= 0 (a beta of
            1 would divide by a zero bias correction and write NaN into the parameters), and every
            scalar of :meth:`scalars` finite in float32.
        l1: strength of the L1 pull of each master value towards its base θ0 (0: none), >= 0.
    """

    step: int
    lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.0
    l1: float = 0.0

    def __post_init__(self) -> None:
        if isinstance(self.step, bool) or not isinstance(self.step, int) or self.step < 1:
            raise ValueError(f"masked_adamw_step_: step must be an int >= 1, got {self.step!r}")
        for f in fields(self)[1:]:
            object.__setattr__(self, f.name, float(getattr(self, f.name)))
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"masked_adamw_step_: {name} must be in [0, 1), got {getattr(self, name)}")
        for name in ("lr", "eps", "weight_decay", "l1"):
            if not 0.0 <= getattr(self, name) < math.inf:
                raise ValueError(f"masked_adamw_step_: {name} must be finite and >= 0, got {getattr(self, name)}")
        if not all(abs(value) <= FP32_MAX for value in self.scalars()):
            raise ValueError(f"masked_adamw_step_: lr {self.lr}, weight_decay {self.weight_decay}, eps {self.eps} or "
                             f"l1 {self.l1} overflow the step's float32 scalars (largest {FP32_MAX:.4g})")

    @property
    def has_l1(self) -> bool:
        """Whether the step pulls towards the bases (``l1 != 0``)."""
        return self.l1 != 0.0

    def scalars(self) -> tuple[float, ...]:
        """The step's derived scalars in float64, the fp32 scalar arguments of the kernel and of the
        C ABI in this order::

        beta1, 1 - beta1, beta2, 1 - beta2, 1 - lr * weight_decay, lr,
        1 - beta1 ** step, 1 - beta2 ** step, eps, l1
        """
        return (
            self.beta1,
            1.0 - self.beta1,
            self.beta2,
            1.0 - self.beta2,
            1.0 - self.lr * self.weight_decay,
            self.lr,
            1.0 - self.beta1**self.step,
            1.0 - self.beta2**self.step,
            self.eps,
            self.l1,
        )

    def hyperparameters(self) -> list[float]:
        """``[lr, beta1, beta2, eps, weight_decay, l1]``: the custom op's ``float[]`` argument."""
        return [getattr(self, f.name) for f in fields(self)[1:]]

    @classmethod
    def from_op(cls, step: int, hyperparameters: list[float]) -> AdamWSettings:
        """Inverse of (``step``, :meth:`hyperparameters`)."""
        return cls(step, *hyperparameters)



@dataclass(frozen=True)
class LowRankSettings:
    """How the low-rank denoising ops factorise each Δ = θ1 − θ0 (``deftx.ops.lowrank_*``,
    ``deftx.ops.denoised_magnitudes*``; ``deftx.train.DenoiseConfig.lowrank`` builds one).

    Attributes:
        rank: keep this many singular components (one uniform rank); or
        energy: keep, per matrix, the fewest components holding this fraction of ``||Δ||_F²``.
        method: ``"randomized"`` (sketched SVD) or ``"exact"`` (``torch.linalg.svd``).
        oversample, n_iter, seed: the randomized sketch: ``q = rank + oversample`` columns,
            ``n_iter`` power iterations, the seed of the Gaussian Ω.
        precision: the Triton products' precision: ``"fp32"``, ``"tf32x3"`` (fp32 weights only)
            or ``"bf16"``.

    Checked by the ops that take it (with the matrices: a single matrix bounds the rank).
    """

    rank: int | None = None
    energy: float | None = None
    method: str = "randomized"
    oversample: int = 8
    n_iter: int = 2
    seed: int = 0
    precision: str = "fp32"
