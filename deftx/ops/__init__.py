"""deftx.ops: the accelerated ops, one dispatch layer (Triton on CUDA, native C++ on CPU, torch).

Every op takes ``backend="auto" | "triton" | "native" | "torch"`` (or ``$DEFTX_BACKEND``);
see :mod:`deftx.ops.dispatch`.
"""

from deftx.ops.denoise import denoised_magnitudes, lowrank_denoise, lowrank_factors
from deftx.ops.dispatch import BackendUnavailableError, backend_report
from deftx.ops.masked_step import masked_adamw_step_
from deftx.ops.scatter import scatter_add_, scatter_restore_
from deftx.ops.topk import indices_to_mask, topk_mask

__all__ = [
    "BackendUnavailableError",
    "backend_report",
    "denoised_magnitudes",
    "indices_to_mask",
    "lowrank_denoise",
    "lowrank_factors",
    "masked_adamw_step_",
    "scatter_add_",
    "scatter_restore_",
    "topk_mask",
]
