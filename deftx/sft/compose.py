"""Compose several SparseDiffs into one (addition of sparse differences)."""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

import torch

from deftx.sft.apply import check_scales, prefix_forms
from deftx.sft.diff import SparseDiff


def shared_body_prefix(names: Collection[str]) -> str:
    """The body prefix ``names`` (every name of the diffs) use both with and without: the first component
    ``p`` of a name ``p.rest`` where ``rest`` is a name too ("" when no parameter is named both ways).

    Raises:
        ValueError: several such components (which one is the body's is unknown).
    """
    heads = sorted({name.split(".", 1)[0] for name in names if "." in name and name.split(".", 1)[1] in names})
    if len(heads) > 1:
        raise ValueError(f"compose: the diffs name parameters with and without several prefixes ({', '.join(heads)}); "
                         "which is the body's base_model_prefix is unknown: rename the diffs' parameters to one form")
    return heads[0] if heads else ""


def composed_names(diffs: Sequence[SparseDiff]) -> list[dict[str, str]]:
    """Per diff, each of its names -> the composition's name for that parameter: a name given with and
    without the body's prefix (:func:`shared_body_prefix`, :func:`~deftx.sft.apply.prefix_forms`) is one
    parameter, under its prefixed form; any other name is kept as given.

    Raises:
        ValueError: one diff names a parameter twice (with and without the prefix), or the prefix is ambiguous.
    """
    names = {name for diff in diffs for name in diff.names}
    prefix = shared_body_prefix(names)
    renamed = []
    for position, diff in enumerate(diffs):
        row: dict[str, str] = {}
        for name in diff.names:
            row[name] = next((form for form in prefix_forms(name, prefix)
                              if prefix and form.startswith(f"{prefix}.") and form in names), name)
        forms: dict[str, str] = {}
        for name, target in row.items():
            if forms.setdefault(target, name) != name:
                raise ValueError(f"compose: SparseDiff {position} names parameter {target!r} twice: as "
                                 f"{forms[target]!r} and as {name!r}")
        renamed.append(row)
    return renamed


def _renamed(tensors: Mapping[str, object], names: Mapping[str, str]) -> dict:
    return {names[name]: value for name, value in tensors.items()}


def compose(*diffs: SparseDiff, scales: Sequence[float] | None = None) -> SparseDiff:
    """One SparseDiff equal to ``sum(scale_i * diff_i)``: union of supports, values summed in fp32.

    Overlapping entries add (in the order given). A parameter named with the body's
    ``base_model_prefix`` in one diff and without it in another (``bert.encoder...`` and
    ``encoder...``) is one parameter, named with the prefix in the composition
    (:func:`composed_names`), as :func:`~deftx.sft.apply_diffs` matches names. All diffs must agree on the shape and
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
    renames = composed_names(diffs)
    sparse = [(_renamed(d.indices, row), _renamed(d.values, row)) for d, row in zip(diffs, renames, strict=True)]
    params, dense = {}, {}
    for diff, row in zip(diffs, renames, strict=True):
        for name, info in diff.params.items():
            name = row.get(name, name)
            if params.setdefault(name, info) != info:
                raise ValueError(f"compose: parameter {name!r} is {params[name]} in one diff and {info} in another")
        for name, tensor in _renamed(diff.dense, row).items():
            if name in dense:
                raise ValueError(f"compose: dense tensor {name!r} is shipped by more than one diff")
            dense[name] = tensor
    mixed = sorted(set(dense) & {n for idx, _ in sparse for n in idx})
    if mixed:
        raise ValueError(f"compose: {mixed[0]!r} is dense in one diff and sparse in another (apply them instead)")
    indices, values = {}, {}
    for name in sorted({n for idx, _ in sparse for n in idx}):
        parts = [(idx[name], val[name] * s) for (idx, val), s in zip(sparse, scales, strict=True) if name in idx]
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
