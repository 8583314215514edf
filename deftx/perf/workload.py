"""What the roofline prices and the runtime profile runs: a shape set in one dtype, with op settings.

A :class:`Workload` is a :class:`~deftx.perf.shapes.ShapeSet` (its frozen tensors, the norm
weights, are never eligible; every eligible 2-D tensor is denoised), the dtype of its
weights and the :class:`OpSettings` the ops run with. Built in (``deftx profile --shapes``):

* ``xlmr-base``: XLM-R base, fp32; ``mbert``: multilingual BERT base, fp32;
* ``llama-7b``: Llama 7B, bf16;
* ``tiny``: a 2-layer BERT of width 64 (vocabulary 1000, FFN 256, rank 8) for CPU traces.

The other built-in shape sets of :mod:`deftx.perf.shapes` (``e5-small``, ``xlmr-large``,
``tinyllama-1.1b``, ...) run in fp32 with the default settings. A JSON file gives a custom
workload, in either shape-file form of :mod:`deftx.perf.shapes` (the same reader as ``deftx
bench --model-shapes``), e.g.::

    {"name": "tiny", "dtype": "fp32",
     "parameters": {"emb": [1000, 64], "layer.0.w": [64, 64], "norm.weight": [64]},
     "frozen": ["norm.weight"],
     "settings": {"k_fraction": 0.05, "rank": 16}}

``settings`` overrides :class:`OpSettings` fields.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import torch

from deftx.perf.shapes import BUILTIN_SHAPE_SETS, TINY, ShapeSet, ShapeSpec, TensorShape, read_shape_spec

DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class OpSettings:
    """How the ops are run on a shape set.

    Attributes:
        k_fraction: K as a fraction of the eligible entries (task SFT default 5.1%).
        rank: uniform rank r of the low-rank denoising (the prediction needs a fixed rank;
            the energy policy picks it per matrix at run time).
        oversample, n_iter: randomized SVD sketch: q = rank + oversample columns, n_iter
            power iterations.
        num_diffs: SFTs composed by one scatter (language + task = 2).
        l1: sparse steps with the L1 pull toward θ0 (language SFTs).
    """

    k_fraction: float = 0.051
    rank: int = 64
    oversample: int = 8
    n_iter: int = 2
    num_diffs: int = 2
    l1: bool = False

    def __post_init__(self) -> None:
        fraction = self.k_fraction
        if isinstance(fraction, bool) or not isinstance(fraction, int | float) or not 0.0 < fraction <= 1.0:
            raise ValueError(f"k_fraction must be a number in (0, 1], got {fraction!r}")
        for name, low in (("rank", 1), ("num_diffs", 1), ("oversample", 0), ("n_iter", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
        if not isinstance(self.l1, bool):
            raise ValueError(f"l1 must be true or false, got {self.l1!r}")

    @property
    def sketch_columns(self) -> int:
        """q = rank + oversample."""
        return self.rank + self.oversample


@dataclass(frozen=True)
class Workload:
    """A shape set's parameters in one dtype (``fp32`` / ``bf16`` / ``fp16``), with the op settings."""

    shapes: ShapeSet
    dtype: str
    settings: OpSettings = field(default_factory=OpSettings)
    description: str = ""

    @property
    def name(self) -> str:
        return self.shapes.name

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def eligible(self) -> tuple[TensorShape, ...]:
        """The parameters sparse fine-tuning may select."""
        return self.shapes.eligible()

    @property
    def matrices(self) -> tuple[TensorShape, ...]:
        """The eligible 2-D parameters (the denoised matrices)."""
        return self.shapes.matrices()

    @property
    def k(self) -> int:
        """K: ``round(k_fraction * eligible entries)``, at least 1."""
        return max(1, round(self.settings.k_fraction * sum(p.numel for p in self.eligible)))

    def summary(self) -> dict[str, Any]:
        """JSON-ready description: counts and settings."""
        return {
            "name": self.name,
            "description": self.description,
            "dtype": self.dtype,
            "parameters": self.shapes.numel,
            "eligible": sum(p.numel for p in self.eligible),
            "matrices": len(self.matrices),
            "k": self.k,
            "settings": {f.name: getattr(self.settings, f.name) for f in fields(OpSettings)},
        }


BUILTIN_WORKLOADS: dict[str, Workload] = {
    "xlmr-base": Workload(BUILTIN_SHAPE_SETS["xlmr-base"], "fp32", description="XLM-R base, fp32"),
    "mbert": Workload(BUILTIN_SHAPE_SETS["mbert"], "fp32", description="multilingual BERT base, fp32"),
    "llama-7b": Workload(BUILTIN_SHAPE_SETS["llama-7b"], "bf16", description="Llama 7B, bf16"),
    "tiny": Workload(
        TINY, "fp32", OpSettings(rank=8), description="a 2-layer BERT of width 64 (CPU traces and tests), fp32"
    ),
}

ALL_SHAPE_SETS: dict[str, ShapeSet] = {**BUILTIN_SHAPE_SETS, "tiny": TINY}
"""Every set ``deftx profile --shapes`` knows by name (the built-in workloads' own dtypes aside: fp32)."""


def load_workload(name_or_path: str | Path, **settings: Any) -> Workload:
    """A built-in workload by name; else any shape set :func:`~deftx.perf.shapes.read_shape_spec`
    reads (a built-in set in fp32, or a JSON file of either form with its ``dtype`` and
    ``settings``).

    ``settings`` override the workload's :class:`OpSettings`.

    Raises:
        ValueError: an unknown name that is not a file, or a malformed file.
    """
    spec = str(name_or_path)
    workload = BUILTIN_WORKLOADS.get(spec) or workload_from_spec(read_shape_spec(spec, ALL_SHAPE_SETS))
    if settings:
        workload = replace(workload, settings=replace(workload.settings, **settings))
    return workload


def workload_from_spec(spec: ShapeSpec) -> Workload:
    """The workload of a shape set read by name or from a file: its ``dtype`` (default fp32) and
    ``settings`` (:class:`OpSettings` fields) checked; at least one tensor must be eligible.

    Raises:
        ValueError: naming the file and the bad key.
    """
    dtype = spec.run_keys.get("dtype", "fp32")
    if dtype not in DTYPES:
        raise ValueError(f"{spec.source}: dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    known = {f.name for f in fields(OpSettings)}
    settings = spec.run_keys.get("settings", {})
    if not isinstance(settings, dict) or set(settings) - known:
        raise ValueError(f"{spec.source}: 'settings' may set {sorted(known)}, got {settings!r}")
    if not spec.shapes.eligible():
        raise ValueError(f"{spec.source}: every parameter is frozen")
    try:
        op_settings = OpSettings(**settings)
    except ValueError as err:
        raise ValueError(f"{spec.source}: settings: {err}") from err
    description = spec.shapes.note or (f"from {Path(spec.source).name}" if Path(spec.source).suffix else spec.source)
    return Workload(spec.shapes, dtype, op_settings, description)
