"""deftx: denoised sparse fine-tuning (DeFT-X) and LT-SFT, with Triton kernels.

The public API, importable from here (each name is imported from its subpackage on first
use, so ``import deftx`` itself loads neither torch nor transformers)::

    from deftx import SparseFineTuner, task_sft_config, SparseDiff, apply_diffs, topk_mask

Pipeline, one subpackage per step: ``deftx.train`` (full fine-tuning, denoise,
select, sparse retraining) -> ``deftx.sft`` (the SparseDiff format, compose) ->
``deftx.eval`` (zero-shot evaluation). ``deftx.ops`` holds the accelerated ops
(Triton on CUDA, native C++ on CPU, PyTorch everywhere).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS: dict[str, str] = {
    # deftx.sft: the SparseDiff format, apply / revert / compose
    "SparseDiff": "deftx.sft",
    "apply_diffs": "deftx.sft",
    "applied": "deftx.sft",
    "compose": "deftx.sft",
    "count_rounding_loss": "deftx.sft",
    "prepare_composition": "deftx.sft",
    "PreparedComposition": "deftx.sft",
    "AppliedDiffs": "deftx.sft",
    "RevertReport": "deftx.sft",
    "InexactRevertWarning": "deftx.sft",
    "OverwrittenByDenseWarning": "deftx.sft",
    "RoundingLossWarning": "deftx.sft",
    "RoundingLossError": "deftx.sft",
    "SparseDiffFormatError": "deftx.sft",
    "ForeignFormatError": "deftx.sft",
    "BaseModelMismatchError": "deftx.sft",
    "ClassifierMismatchError": "deftx.sft",
    "ParamInfo": "deftx.sft",
    "base_model_id": "deftx.sft",
    # deftx.train: the two phases inside your transformers.Trainer
    "SparseFineTuner": "deftx.train",
    "SparseFineTuningConfig": "deftx.train",
    "SparseFineTuningResult": "deftx.train",
    "PhaseConfig": "deftx.train",
    "DenoiseConfig": "deftx.train",
    "MaskedAdamW": "deftx.train",
    "language_sft_config": "deftx.train",
    "task_sft_config": "deftx.train",
    "IdentityMismatchError": "deftx.train",
    "TrainerOverrideWarning": "deftx.train",
    # deftx.ops: the accelerated ops
    "topk_mask": "deftx.ops",
    "indices_to_mask": "deftx.ops",
    "lowrank_denoise": "deftx.ops",
    "denoised_magnitudes": "deftx.ops",
    "denoised_magnitudes_batched": "deftx.ops",
    "lowrank_factors": "deftx.ops",
    "lowrank_factors_batched": "deftx.ops",
    "LowRankFactors": "deftx.ops",
    "reconstruct_magnitudes": "deftx.ops",
    "scatter_add_": "deftx.ops",
    "scatter_restore_": "deftx.ops",
    "prepare_scatter": "deftx.ops",
    "PreparedScatter": "deftx.ops",
    "masked_adamw_step_": "deftx.ops",
    "prepare_masked_step": "deftx.ops",
    "PreparedMaskedStep": "deftx.ops",
    "BackendUnavailableError": "deftx.ops",
    "backend_report": "deftx.ops",
}

_SUBCLASS_PLUGINS: dict[str, str] = {"torch.distributed.tensor": "deftx.distributed"}
"""Module defining a tensor type -> the deftx module that registers the ops for it, imported by
:mod:`deftx.ops.extensions` when an op first meets such a tensor."""

__all__ = [
    "AppliedDiffs",
    "BackendUnavailableError",
    "BaseModelMismatchError",
    "ClassifierMismatchError",
    "DenoiseConfig",
    "ForeignFormatError",
    "IdentityMismatchError",
    "InexactRevertWarning",
    "LowRankFactors",
    "MaskedAdamW",
    "OverwrittenByDenseWarning",
    "ParamInfo",
    "PhaseConfig",
    "PreparedComposition",
    "PreparedMaskedStep",
    "PreparedScatter",
    "RevertReport",
    "RoundingLossError",
    "RoundingLossWarning",
    "SparseDiff",
    "SparseDiffFormatError",
    "SparseFineTuner",
    "SparseFineTuningConfig",
    "SparseFineTuningResult",
    "TrainerOverrideWarning",
    "__version__",
    "applied",
    "apply_diffs",
    "backend_report",
    "base_model_id",
    "compose",
    "count_rounding_loss",
    "denoised_magnitudes",
    "denoised_magnitudes_batched",
    "indices_to_mask",
    "language_sft_config",
    "lowrank_denoise",
    "lowrank_factors",
    "lowrank_factors_batched",
    "masked_adamw_step_",
    "prepare_composition",
    "prepare_masked_step",
    "prepare_scatter",
    "reconstruct_magnitudes",
    "scatter_add_",
    "scatter_restore_",
    "task_sft_config",
    "topk_mask",
]

if TYPE_CHECKING:
    from deftx.ops import (
        BackendUnavailableError,
        LowRankFactors,
        PreparedMaskedStep,
        PreparedScatter,
        backend_report,
        denoised_magnitudes,
        denoised_magnitudes_batched,
        indices_to_mask,
        lowrank_denoise,
        lowrank_factors,
        lowrank_factors_batched,
        masked_adamw_step_,
        prepare_masked_step,
        prepare_scatter,
        reconstruct_magnitudes,
        scatter_add_,
        scatter_restore_,
        topk_mask,
    )
    from deftx.sft import (
        AppliedDiffs,
        BaseModelMismatchError,
        ClassifierMismatchError,
        ForeignFormatError,
        InexactRevertWarning,
        OverwrittenByDenseWarning,
        ParamInfo,
        PreparedComposition,
        RevertReport,
        RoundingLossError,
        RoundingLossWarning,
        SparseDiff,
        SparseDiffFormatError,
        applied,
        apply_diffs,
        base_model_id,
        compose,
        count_rounding_loss,
        prepare_composition,
    )
    from deftx.train import (
        DenoiseConfig,
        IdentityMismatchError,
        MaskedAdamW,
        PhaseConfig,
        SparseFineTuner,
        SparseFineTuningConfig,
        SparseFineTuningResult,
        TrainerOverrideWarning,
        language_sft_config,
        task_sft_config,
    )


def __getattr__(name: str) -> Any:
    """Import a public name from its subpackage on first use (PEP 562)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'deftx' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
