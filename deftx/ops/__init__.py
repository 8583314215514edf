"""deftx.ops: the accelerated ops, one dispatch layer (Triton on CUDA, native C++ on CPU, torch).

Every op takes ``backend="auto" | "triton" | "native" | "torch"`` (or ``$DEFTX_BACKEND``);
see :mod:`deftx.ops.dispatch`.
"""

from deftx.ops.denoise import (
    LowRankFactors,
    denoised_magnitudes,
    denoised_magnitudes_batched,
    lowrank_denoise,
    lowrank_factors,
    lowrank_factors_batched,
    reconstruct_magnitudes,
)
from deftx.ops.dispatch import BackendUnavailableError, backend_report
from deftx.ops.masked_step import PreparedMaskedStep, masked_adamw_step_, prepare_masked_step
from deftx.ops.scatter import PreparedScatter, prepare_scatter, scatter_add_, scatter_restore_
from deftx.ops.topk import indices_to_mask, topk_mask

__all__ = [
    "BackendUnavailableError",
    "LowRankFactors",
    "PreparedMaskedStep",
    "PreparedScatter",
    "backend_report",
    "denoised_magnitudes",
    "denoised_magnitudes_batched",
    "indices_to_mask",
    "lowrank_denoise",
    "lowrank_factors",
    "lowrank_factors_batched",
    "masked_adamw_step_",
    "prepare_masked_step",
    "prepare_scatter",
    "reconstruct_magnitudes",
    "scatter_add_",
    "scatter_restore_",
    "topk_mask",
]
