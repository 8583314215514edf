"""deftx.sft: the SparseDiff format (safetensors), apply / revert / compose, prepared compositions."""

from deftx.sft.apply import (
    AppliedDiffs,
    BaseModelMismatchError,
    ClassifierMismatchError,
    InexactRevertWarning,
    OverwrittenByDenseWarning,
    PreparedComposition,
    RevertReport,
    RoundingLossError,
    RoundingLossWarning,
    applied,
    apply_diffs,
    base_model_id,
    count_rounding_loss,
    prepare_composition,
)
from deftx.sft.compose import compose
from deftx.sft.diff import ParamInfo, SparseDiff
from deftx.sft.format import ForeignFormatError, SparseDiffFormatError

__all__ = [
    "AppliedDiffs",
    "BaseModelMismatchError",
    "ClassifierMismatchError",
    "ForeignFormatError",
    "InexactRevertWarning",
    "OverwrittenByDenseWarning",
    "ParamInfo",
    "PreparedComposition",
    "RevertReport",
    "RoundingLossError",
    "RoundingLossWarning",
    "SparseDiff",
    "SparseDiffFormatError",
    "applied",
    "apply_diffs",
    "base_model_id",
    "compose",
    "count_rounding_loss",
    "prepare_composition",
]
