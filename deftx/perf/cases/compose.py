"""Benchmark case: compose two SFTs onto a model's dense weights in place, originals saved.

What applying a language SFT and a task SFT costs (``deftx.sft.apply_diffs``): two sparse
diffs of K entries each (uniform positions, drawn independently), scales 1.0 and 0.5.

* deftx: ``deftx.ops.scatter_add_(dense, [idx1, idx2], [val1, val2], [1.0, 0.5],
  save=True, backend=...)``: both diffs in one pass, the overwritten originals returned
  (what makes the revert exact).
* ``deftx_prepared``: the same two diffs as SparseDiffs on a module holding the dense
  weights, prepared once (:func:`deftx.sft.prepare_composition`, auto backend, at bind
  time) and timed as one ``apply()`` + ``revert()``: what repeated composition costs
  once the checks, the plan and the copies are paid for. Listed with the baselines (the
  case table has no other place for a variant); its comparison row reads as the public
  path's time over the prepared path's.
* ``dense_compose``: per tensor and diff, densify the diff (``zeros`` + ``index_copy_``),
  scale it and ``w.add_`` it. It saves no originals, so it does less than deftx and the
  speedup is conservative.

Byte model: ``deftx.ops.cost.scatter.bytes_moved(num_diffs=2, save=True)`` for deftx, plus
the restore (``bytes_moved(num_diffs=2, value_dtype=dense dtype)``: the saved originals as
the values) for ``deftx_prepared``, and ``baseline_bytes_moved(num_diffs=2, method="dense")``
for the baseline, the same models as
``deftx profile --static``'s scatter prediction.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from deftx.ops import scatter_add_
from deftx.perf import synthetic
from deftx.perf.cases.base import CaseSpec, Traffic, backend_of
from deftx.perf.cases.scatter import COST, by_dtype
from deftx.sft import ParamInfo, PreparedComposition, SparseDiff, prepare_composition

OP = "compose"
PREPARED = "deftx_prepared"
BASELINES: dict[str, str] = {
    PREPARED: "deftx prepared apply + revert (auto backend)",
    "dense_compose": "densify + add_ (2 diffs)",
}
ROOFLINE = "memory"

SCALES: tuple[float, ...] = (1.0, 0.5)
"""The scales of the two diffs (a task SFT at 1, a language SFT at 0.5)."""


@dataclass
class ComposeInputs:
    """Dense weights and, per diff, sorted unique indices and fp32 values per tensor."""

    dense: list[torch.Tensor]
    indices: list[list[torch.Tensor]]
    values: list[list[torch.Tensor]]


def make_inputs(spec: CaseSpec) -> ComposeInputs:
    """Synthetic weights and two independent uniform diffs (``sparse_indices``) with ``1e-3 * N(0, 1)`` values."""
    flat = spec.shapes.flat()
    dense = [synthetic.weights(t, spec.seed, spec.torch_device, spec.torch_dtype) for t in flat]
    indices, values = [], []
    for d in range(len(SCALES)):
        seed = spec.seed + 1000 * (d + 1)
        idx = [synthetic.sparse_indices(t, spec.k_fraction, seed, spec.torch_device) for t in flat]
        val = [
            torch.randn(i.numel(), generator=synthetic.generator(t.name, seed, spec.torch_device, "values:"),
                        device=spec.torch_device).mul_(1e-3)
            for t, i in zip(flat, idx, strict=True)
        ]
        indices.append(idx)
        values.append(val)
    return ComposeInputs(dense, indices, values)


def _dense_compose(inputs: ComposeInputs) -> None:
    for t, w in enumerate(inputs.dense):
        for idx, val, scale in zip(inputs.indices, inputs.values, SCALES, strict=True):
            delta = torch.zeros(w.numel(), dtype=torch.float32, device=w.device).index_copy_(0, idx[t], val[t])
            w.view(-1).add_(delta.mul_(scale))


def prepared_composition(inputs: ComposeInputs) -> tuple[torch.nn.Module, PreparedComposition]:
    """A module whose parameters are the dense weights (shared), and the two diffs as SparseDiffs
    prepared on it; the composition holds the module weakly, so the caller keeps it."""
    model = torch.nn.ParameterList([torch.nn.Parameter(w, requires_grad=False) for w in inputs.dense])
    params = {str(t): ParamInfo(tuple(w.shape), w.dtype) for t, w in enumerate(inputs.dense)}
    diffs = [
        SparseDiff({str(t): i for t, i in enumerate(idx)}, {str(t): v for t, v in enumerate(val)}, params)
        for idx, val in zip(inputs.indices, inputs.values, strict=True)
    ]
    return model, prepare_composition(model, diffs, list(SCALES), on_rounding_loss="ignore")


def _apply_and_revert(prepared: PreparedComposition, model: torch.nn.Module) -> None:
    """One prepared apply + revert (``model`` is passed to keep it alive while timed)."""
    prepared.apply().revert()


def bind(impl: str, inputs: ComposeInputs) -> Callable[[], object]:
    """The thunk timed for ``impl`` (in place; deftx returns the saved originals, the prepared
    composition applies and reverts)."""
    backend = backend_of(impl)
    if backend is not None:
        return lambda: scatter_add_(inputs.dense, inputs.indices, inputs.values, list(SCALES), save=True,
                                    backend=backend)
    if impl == PREPARED:
        model, prepared = prepared_composition(inputs)
        return functools.partial(_apply_and_revert, prepared, model)
    if impl == "dense_compose":
        return lambda: _dense_compose(inputs)
    raise KeyError(f"compose: unknown implementation {impl!r}")


def traffic(impl: str, inputs: ComposeInputs) -> Traffic:
    """The scatter cost model with two diffs (deftx saving originals, the baseline dense)."""
    entries = [round(sum(idx[t].numel() for idx in inputs.indices) / len(SCALES)) for t in range(len(inputs.dense))]
    groups = by_dtype(inputs.dense, entries)
    diffs = len(SCALES)
    if backend_of(impl) is not None:
        total = sum(COST.bytes_moved(s, n, dtype, num_diffs=diffs, save=True) for dtype, (s, n) in groups.items())
        return Traffic(total, 0.0, f"{COST.__name__}.bytes_moved(num_diffs=2, save=True)")
    if impl == PREPARED:
        total = sum(COST.bytes_moved(s, n, dtype, num_diffs=diffs, save=True)
                    + COST.bytes_moved(s, n, dtype, value_dtype=dtype, num_diffs=diffs)
                    for dtype, (s, n) in groups.items())
        return Traffic(total, 0.0, f"{COST.__name__}.bytes_moved(num_diffs=2, save=True) + restore")
    total = sum(
        COST.baseline_bytes_moved(s, n, dtype, num_diffs=diffs, method="dense") for dtype, (s, n) in groups.items()
    )
    return Traffic(total, 0.0, f"{COST.__name__}.baseline_bytes_moved(num_diffs=2, method='dense')")


def quality(impl: str, inputs: ComposeInputs, output: object) -> dict[str, float]:
    """Composition is exact; nothing to report."""
    return {}


def selected(inputs: ComposeInputs) -> int:
    """Entries per diff (the K of one SFT), averaged over the two diffs."""
    return round(sum(i.numel() for idx in inputs.indices for i in idx) / len(SCALES))


def _composed_reference(inputs: ComposeInputs, t: int) -> torch.Tensor:
    """(numel,) tensor ``t`` of ``inputs`` flattened after the diffs, one after another: each entry
    ``(w.float() + scale * v).to(w.dtype)``, rounded after every diff (scatter_add_'s contract)."""
    flat = inputs.dense[t].reshape(-1).clone()
    for idx, val, scale in zip(inputs.indices, inputs.values, SCALES, strict=True):
        flat[idx[t]] = (flat[idx[t]].float() + scale * val[t].float()).to(flat.dtype)
    return flat


def _differing(tensors: list[torch.Tensor], expected: Callable[[int], torch.Tensor], what: str) -> str | None:
    """The first tensor ``t`` of ``tensors`` that differs from ``expected(t)`` bit for bit, as a
    sentence (one expected tensor made at a time: a 7B set's weights are not copied twice)."""
    for t, got in enumerate(tensors):
        want = expected(t)
        wrong = int((got.reshape(-1) != want.reshape(-1)).sum())
        if wrong:
            return f"tensor {t}: {wrong} of {want.numel()} entries differ from {what}"
    return None


def mismatch(impl: str, inputs: ComposeInputs) -> str | None:
    """What is wrong with one call of deftx's ``impl`` on a copy of the weights, or None.

    A backend must write :func:`_composed_reference` bit for bit and return, per diff and tensor,
    the original entries at the diff's indices; the prepared composition must write the same on
    ``apply()`` and give the original weights back, bit for bit, on ``revert()``.
    """
    copies = ComposeInputs([w.clone() for w in inputs.dense], inputs.indices, inputs.values)
    composed = functools.partial(_composed_reference, inputs)
    in_order = "the two diffs added one after another in fp32"
    if impl == PREPARED:
        model, prepared = prepared_composition(copies)
        prepared.apply()
        problem = _differing(copies.dense, composed, in_order)
        prepared.revert()
        del model
        return problem or _differing(copies.dense, inputs.dense.__getitem__, "the original weights after revert()")
    saved = bind(impl, copies)()
    problem = _differing(copies.dense, composed, in_order)
    if problem is not None:
        return problem
    for d, (idx, got) in enumerate(zip(inputs.indices, saved, strict=True)):
        originals = [w.reshape(-1)[i] for w, i in zip(inputs.dense, idx, strict=True)]
        problem = _differing(got, originals.__getitem__, f"the original entries at diff {d}'s indices")
        if problem is not None:
            return f"saved originals: {problem}"
    return None
