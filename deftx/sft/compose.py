"""Compose several SparseDiffs into one (addition of sparse differences)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from deftx.sft.apply import check_scales
from deftx.sft.diff import SparseDiff


def compose(*diffs: SparseDiff, scales: Sequence[float] | None = None) -> SparseDiff:
    """One SparseDiff equal to ``sum(scale_i * diff_i)``: union of supports, values summed in fp32.

    Overlapping entries add (in the order given). All diffs must agree on the shape and
    dtype of shared parameters and on the base model, and scales must be finite; a dense
    tensor may come from one diff only, and a parameter dense in one diff may not be sparse
    in another (:func:`~deftx.sft.apply_diffs` applies such diffs one after another). The
    composition's ``info`` (architecture, labels, ...) is that of the diff shipping the head
    (dense tensors), else of the first diff that has one. Applying the composition rounds
    once per entry, so it can differ in the last bit from applying the diffs one after
    another.
    """
    if not diffs:
        raise ValueError("compose: give at least one SparseDiff")
    for position, diff in enumerate(diffs):
        if not isinstance(diff, SparseDiff):
            hint = " (unpack a list: compose(*diffs))" if isinstance(diff, (list, tuple)) else ""
            raise TypeError(f"compose: argument {position} is a {type(diff).__name__}, not a SparseDiff{hint}")
    scales = check_scales(scales, diffs, "compose")
    bases = {d.base_model for d in diffs if d.base_model}
    if len(bases) > 1:
        raise ValueError(f"compose: diffs were made for different base models: {sorted(bases)}")
    params, dense = {}, {}
    for diff in diffs:
        for name, info in diff.params.items():
            if params.setdefault(name, info) != info:
                raise ValueError(f"compose: parameter {name!r} is {params[name]} in one diff and {info} in another")
        for name, tensor in diff.dense.items():
            if name in dense:
                raise ValueError(f"compose: dense tensor {name!r} is shipped by more than one diff")
            dense[name] = tensor
    mixed = sorted(set(dense) & {n for d in diffs for n in d.indices})
    if mixed:
        raise ValueError(f"compose: {mixed[0]!r} is dense in one diff and sparse in another (apply them instead)")
    indices, values = {}, {}
    for name in sorted({n for d in diffs for n in d.indices}):
        parts = [(d.indices[name], d.values[name] * s) for d, s in zip(diffs, scales, strict=True) if name in d.indices]
        union, inverse = torch.unique(torch.cat([idx for idx, _ in parts]), sorted=True, return_inverse=True)
        summed = torch.zeros(union.numel(), dtype=torch.float32)
        summed.index_add_(0, inverse, torch.cat([val for _, val in parts]))
        indices[name], values[name] = union, summed
    return SparseDiff(
        indices,
        values,
        params,
        dense,
        base_model=bases.pop() if bases else None,
        method="composed",
        settings={
            "components": [{"method": d.method, "k": d.k, "settings": d.settings} for d in diffs],
            "scales": scales,
        },
        info=next((d.info for d in diffs if d.dense and d.info), next((d.info for d in diffs if d.info), {})),
    )
