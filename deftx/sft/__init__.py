"""deftx.sft: the SparseDiff format (safetensors), apply / revert / compose."""

from deftx.sft.apply import AppliedDiffs, apply_diffs, base_model_id
from deftx.sft.compose import compose
from deftx.sft.diff import ParamInfo, SparseDiff
from deftx.sft.format import SparseDiffFormatError

__all__ = [
    "AppliedDiffs",
    "ParamInfo",
    "SparseDiff",
    "SparseDiffFormatError",
    "apply_diffs",
    "base_model_id",
    "compose",
]
