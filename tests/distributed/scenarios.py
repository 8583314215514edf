"""What every rank of a spawned test world runs, and the deterministic inputs both sides rebuild.

The main pytest process spawns one gloo world per world size (see ``conftest.py``); each
rank runs :func:`run_all` and returns its local results. The tests then rebuild the full
tensors from the inputs defined here and compare with the single-process ops.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import Replicate, Shard, distribute_tensor, init_device_mesh

from deftx.distributed import comm
from deftx.distributed.comm import count_communication
from deftx.distributed.compose import (
    apply_diffs_sharded,
    gather_sparse_diff,
    load_diff_for_shards,
    save_sharded_diff,
)
from deftx.distributed.rsvd import denoised_magnitudes_sharded, lowrank_factors_sharded, matrix_scores_sharded
from deftx.distributed.topk import topk_mask_dtensor
from deftx.distributed.train import all_gather_selection
from deftx.ops import topk_mask
from deftx.sft import ParamInfo, SparseDiff
from deftx.train.config import DenoiseConfig

# ---------------------------------------------------------------------------------------- top-k


@dataclass(frozen=True)
class TopkCase:
    name: str
    tensors: tuple[torch.Tensor, ...]
    replicated: tuple[bool, ...]
    ks: tuple[int, ...]
    indices_ks: tuple[int, ...]


def _levels(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator, step: float = 0.5) -> torch.Tensor:
    """Few distinct magnitudes (heavy ties, across shard boundaries), both signs, exact in every dtype."""
    return (torch.randint(-3, 4, shape, generator=gen).float() * step).to(dtype)


def _edges(total: int, *inner: int) -> tuple[int, ...]:
    return tuple(sorted({0, 1, total - 1, total, *inner}))


def topk_cases() -> list[TopkCase]:
    gen = torch.Generator().manual_seed(1234)

    def randn(*shape: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return torch.randn(*shape, generator=gen).to(dtype)

    ragged = (randn(17, 5), randn(10, 3), randn(7), randn(2, 4), randn(0, 5))
    ties = (
        _levels((17, 4), torch.float32, gen),
        _levels((10, 6), torch.float32, gen),
        _levels((13,), torch.float32, gen),
    )
    mixed = [
        _levels((17, 8), torch.bfloat16, gen, 0.25),
        _levels((10, 3), torch.float16, gen, 0.25),
        _levels((9,), torch.float32, gen, 0.25),
    ]
    mixed[0][3, 2], mixed[0][12, 7], mixed[1][4, 0] = float("inf"), -float("inf"), float("inf")
    mixed[1][9, 2], mixed[2][0], mixed[2][8] = -0.0, -0.0, 0.0
    replicated = (
        _levels((17, 3), torch.float32, gen),
        _levels((5, 3), torch.float32, gen),
        _levels((10, 2), torch.float32, gen),
    )
    return [
        TopkCase("ragged_fp32", ragged, (False,) * 5, _edges(130, 2, 37, 64), (37,)),
        TopkCase("ties_fp32", ties, (False,) * 3, _edges(141, 3, 20, 47, 70, 71, 90, 115, 128), (47, 90)),
        TopkCase("mixed_dtypes_specials", tuple(mixed), (False,) * 3, _edges(175, 2, 3, 30, 88, 120, 160), (88,)),
        TopkCase("replicated_middle", replicated, (False, True, False), _edges(86, 10, 33, 52, 60, 75), (33, 60)),
        TopkCase(
            "bf16_only",
            (randn(17, 6, dtype=torch.bfloat16), _levels((10, 5), torch.bfloat16, gen)),
            (False, False),
            _edges(152, 40, 77, 140),
            (77,),
        ),
        TopkCase("fp16_only", (randn(33, 4, dtype=torch.float16),), (False,), _edges(132, 16, 66), (66,)),
        TopkCase("all_zero", (torch.zeros(17, 3), -torch.zeros(10)), (False, False), (0, 1, 5, 30, 51, 60, 61), (30,)),
        TopkCase("empty_shards", (randn(2, 3), randn(1, 4), randn(3)), (False,) * 3, tuple(range(14)), (5,)),
    ]


BASE_CASES = ("ragged_fp32", "ties_fp32", "mixed_dtypes_specials", "replicated_middle", "bf16_only", "empty_shards")
"""Cases also run with a θ0 per tensor (``base=``)."""


def topk_bases(case: TopkCase) -> tuple[torch.Tensor | None, ...]:
    """θ0 for a case's tensors: few levels, so the differences still tie, except for bf16
    tensors (random: their fp32 differences use low mantissa bits no bf16 value has); the last
    tensor has no base."""
    gen = torch.Generator().manual_seed(99)
    bases = [torch.randn(t.shape, generator=gen).to(t.dtype) if t.dtype == torch.bfloat16
             else _levels(tuple(t.shape), t.dtype, gen, 0.125) for t in case.tensors]
    return (*bases[:-1], None)


def _distribute(tensors, replicated, mesh) -> list:
    return [
        None if t is None else distribute_tensor(t, mesh, [Replicate() if rep else Shard(0)], src_data_rank=None)
        for t, rep in zip(tensors, replicated, strict=True)
    ]


def _capture(call) -> tuple[str, str]:
    try:
        call()
        return ("no error", "")
    except Exception as err:  # recorded; the test asserts on type and message
        return (type(err).__name__, str(err))


def _topk_errors(mesh) -> dict[str, tuple[str, str]]:
    nan = torch.zeros(9, 2)
    nan[8, 1] = float("nan")  # only the last rank holds it

    def shard(t: torch.Tensor, placement=None):
        return distribute_tensor(t, mesh, [placement or Shard(0)], src_data_rank=None)

    return {
        "nan_on_one_rank": _capture(lambda: topk_mask_dtensor([shard(nan)], 3)),
        "nan_k0": _capture(lambda: topk_mask_dtensor([shard(nan)], 0)),
        "plain_mixed": _capture(lambda: topk_mask_dtensor([shard(torch.ones(4, 2)), torch.ones(3)], 1)),
        "shard_dim1": _capture(lambda: topk_mask_dtensor([shard(torch.ones(4, 6), Shard(1))], 1)),
        "k_too_large": _capture(lambda: topk_mask_dtensor([shard(torch.ones(4, 2))], 9)),
        "int_dtype": _capture(lambda: topk_mask_dtensor([shard(torch.ones(4, 2, dtype=torch.int32))], 1)),
        "bad_output": _capture(lambda: topk_mask_dtensor([shard(torch.ones(4, 2))], 1, output="values")),
        "plain_base": _capture(lambda: topk_mask_dtensor([shard(torch.ones(4, 2))], 1, base=[torch.ones(4, 2)])),
        "base_placement": _capture(lambda: topk_mask_dtensor([shard(torch.ones(4, 2))], 1,
                                                             base=[shard(torch.ones(4, 2), Replicate())])),
    }


def run_topk(mesh) -> dict:
    masks, indices, traffic = {}, {}, {}
    for case in topk_cases():
        dts = _distribute(case.tensors, case.replicated, mesh)
        for k in case.ks:
            with count_communication() as ledger:
                result = topk_mask_dtensor(dts, k)
            assert all(m.placements == t.placements and m.shape == t.shape for m, t in zip(result, dts, strict=True))
            masks[case.name, k] = [m.to_local().clone() for m in result]
            traffic[case.name, k] = (ledger.calls, ledger.bytes)
        for k in case.indices_ks:
            indices[case.name, k] = topk_mask_dtensor(dts, k, output="indices")
        if case.name in BASE_CASES:
            bases = _distribute(topk_bases(case), case.replicated, mesh)
            for k in case.ks:
                result = topk_mask_dtensor(dts, k, base=bases)
                masks["base", case.name, k] = [m.to_local().clone() for m in result]
            for k in case.indices_ks:
                indices["base", case.name, k] = topk_mask_dtensor(dts, k, output="indices", base=bases)
    ties = topk_cases()[1]
    try:
        via_ops = [m.to_local() for m in topk_mask(_distribute(ties.tensors, ties.replicated, mesh), 47)]
    except Exception as err:  # the dispatch hook in deftx.ops may be missing
        via_ops = f"{type(err).__name__}: {err}"
    via_ops_base = [m.to_local() for m in topk_mask(_distribute(ties.tensors, ties.replicated, mesh), 47,
                                                    base=_distribute(topk_bases(ties), ties.replicated, mesh))]
    return {"masks": masks, "indices": indices, "traffic": traffic, "errors": _topk_errors(mesh), "via_ops": via_ops,
            "via_ops_base": via_ops_base}


# ----------------------------------------------------------------------------------------- rSVD


@dataclass(frozen=True)
class SvdCase:
    name: str
    w1: torch.Tensor
    w0: torch.Tensor | None
    rank: int | None
    energy: float | None
    oversample: int


def _with_spectrum(m: int, n: int, singular_values: list[float], gen: torch.Generator) -> torch.Tensor:
    u = torch.linalg.qr(torch.randn(m, len(singular_values), generator=gen, dtype=torch.float64)).Q
    v = torch.linalg.qr(torch.randn(n, len(singular_values), generator=gen, dtype=torch.float64)).Q
    return (u * torch.tensor(singular_values, dtype=torch.float64)) @ v.T


def svd_cases() -> list[SvdCase]:
    gen = torch.Generator().manual_seed(7)
    out = []
    w0 = torch.randn(17, 12, generator=gen)
    gap = _with_spectrum(17, 12, [10, 6, 3, 2] + [1e-3] * 8, gen)
    out.append(SvdCase("gap_rank4", (w0.double() + gap).float(), w0, 4, None, 4))
    w0 = torch.randn(40, 24, generator=gen)
    decay = _with_spectrum(40, 24, [2.0**-i for i in range(24)], gen)
    out.append(SvdCase("decay_energy90", (w0.double() + decay).float(), w0, None, 0.9, 8))
    w0 = torch.randn(10, 9, generator=gen).bfloat16()
    bf = _with_spectrum(10, 9, [4, 2] + [1e-2] * 7, gen)
    out.append(SvdCase("bf16_rank2", (w0.double() + bf).bfloat16(), w0, 2, None, 3))
    w0 = torch.randn(11, 7, generator=gen)
    out.append(SvdCase("zero_delta", w0.clone(), w0, 3, None, 2))
    w0 = torch.randn(13, 8, generator=gen)
    one = _with_spectrum(13, 8, [5.0], gen)
    out.append(SvdCase("rank1_delta_rank3", (w0.double() + one).float(), w0, 3, None, 4))
    out.append(SvdCase("no_base_rank2", _with_spectrum(9, 6, [3, 1, 1e-3, 1e-3], gen).float(), None, 2, None, 2))
    out.append(SvdCase("two_rows_rank1", _with_spectrum(2, 6, [3, 1e-2], gen).float(), None, 1, None, 1))
    w0 = torch.randn(12, 7, generator=gen).half()
    half = _with_spectrum(12, 7, [3, 2] + [1e-2] * 5, gen)
    out.append(SvdCase("fp16_rank2", (w0.double() + half).half(), w0, 2, None, 3))
    out.append(SvdCase("empty_rows", torch.zeros(0, 4), torch.zeros(0, 4), 0, None, 2))
    return out


UNIFORM_RANK = DenoiseConfig(rank=4, oversample=2, seed=3)
"""DeFT-X's uniform-rank policy with a rank above the smaller side of two of :func:`uniform_rank_pairs`."""


def uniform_rank_pairs() -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(θ1, θ0) of a (2, 16) matrix (BERT's token-type embeddings are (2, hidden)), a (9, 3) one and a
    (17, 12) one with a spectral gap after rank 4."""
    gen = torch.Generator().manual_seed(11)
    pairs = []
    for m, n, spectrum in ((2, 16, [3, 1]), (9, 3, [4, 2, 1]), (17, 12, [10, 6, 3, 2] + [1e-3] * 8)):
        w0 = torch.randn(m, n, generator=gen)
        pairs.append(((w0.double() + _with_spectrum(m, n, spectrum, gen)).float(), w0))
    return pairs


def _uniform_rank_scores(mesh) -> list[tuple[torch.Tensor, int]]:
    """This rank's rows of each pair's DeFT-X score under :data:`UNIFORM_RANK`, and the rank kept."""
    pairs = [[distribute_tensor(t, mesh, [Shard(0)], src_data_rank=None) for t in pair]
             for pair in uniform_rank_pairs()]
    scored = matrix_scores_sharded([w1 for w1, _ in pairs], [w0 for _, w0 in pairs], UNIFORM_RANK)
    return [(score.to_local(), rank) for score, rank, _ in scored]


def _non_finite_scores(mesh) -> dict[str, object]:
    """DeFT-X scores (fixed rank, energy policy) of a Δ with a NaN or an Inf in its last row only (the
    last rank's shard): the error each rank raised, or what it returned."""
    out = {}
    for bad in ("nan", "inf"):
        w0 = torch.zeros(9, 4)
        w1 = w0 + 0.5
        w1[8, 1] = float(bad)
        pair = [distribute_tensor(t, mesh, [Shard(0)], src_data_rank=None) for t in (w1, w0)]
        for policy in ("rank", "energy"):
            call = partial(lowrank_factors_sharded, pair[0], base=pair[1], **{policy: 2 if policy == "rank" else 0.9})
            out[bad, policy] = _capture_result(call)
    return out


def _rsvd_errors(mesh) -> dict[str, tuple[str, str]]:
    """What lowrank_factors_sharded raises for options the single-process op refuses."""
    w1, w0 = (distribute_tensor(t, mesh, [Shard(0)], src_data_rank=None) for t in (torch.ones(7, 4), torch.zeros(7, 4)))
    bf16 = distribute_tensor(torch.zeros(7, 4, dtype=torch.bfloat16), mesh, [Shard(0)], src_data_rank=None)
    return {
        "rank_float": _capture(lambda: lowrank_factors_sharded(w1, 2.0)),
        "rank_bool": _capture(lambda: lowrank_factors_sharded(w1, True)),
        "oversample_negative": _capture(lambda: lowrank_factors_sharded(w1, 2, oversample=-5)),
        "n_iter_negative": _capture(lambda: lowrank_factors_sharded(w1, 2, n_iter=-1)),
        "base_dtype": _capture(lambda: lowrank_factors_sharded(w1, 2, base=bf16)),
        "fine": _capture(lambda: lowrank_factors_sharded(w1, 2, base=w0)),
    }


def run_rsvd(mesh) -> dict:
    out = {"uniform_rank": _capture_result(lambda: _uniform_rank_scores(mesh)), "non_finite": _non_finite_scores(mesh),
           "errors": _rsvd_errors(mesh)}
    for case in svd_cases():
        w1 = distribute_tensor(case.w1, mesh, [Shard(0)], src_data_rank=None)
        w0 = None if case.w0 is None else distribute_tensor(case.w0, mesh, [Shard(0)], src_data_rank=None)
        with count_communication() as ledger:
            u, s, vh = lowrank_factors_sharded(
                w1, case.rank, energy=case.energy, base=w0, oversample=case.oversample, n_iter=2, seed=3
            )
        scores = denoised_magnitudes_sharded(
            w1, w0, rank=case.rank, energy=case.energy, oversample=case.oversample, n_iter=2, seed=3
        )
        out[case.name] = {
            "u": u,
            "s": s,
            "vh": vh,
            "scores": scores.to_local(),
            "scores_spec": scores.placements,
            "calls": ledger.calls,
            "bytes": ledger.bytes,
            "counts": dict(ledger.counts),
        }
    return out


# -------------------------------------------------------------------------------------- compose

PARAM_SHAPES: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
    "enc.weight": ((17, 5), torch.float32),
    "enc.bias": ((10, 3), torch.bfloat16),
    "norm.scale": ((7,), torch.float16),
    "tiny.weight": ((2, 4), torch.float32),
    "empty.weight": ((0, 3), torch.float32),
    "head.weight": ((3, 5), torch.float32),
}
SCALES = (1.0, -0.5)


class Params(nn.Module):
    """A module holding the parameters of :data:`PARAM_SHAPES` (dotted names as nested modules)."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        for name, tensor in tensors.items():
            owner, leaf = name.split(".")
            if not hasattr(self, owner):
                self.add_module(owner, nn.Module())
            getattr(self, owner).register_parameter(leaf, nn.Parameter(tensor, requires_grad=False))


def base_params() -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(99)
    return {n: torch.randn(shape, generator=gen).to(dtype) for n, (shape, dtype) in PARAM_SHAPES.items()}


def diffs() -> list[SparseDiff]:
    """Two diffs with entries on shard boundaries, first and last entries, and an empty tensor."""
    gen = torch.Generator().manual_seed(5)
    params = {n: ParamInfo(shape, dtype) for n, (shape, dtype) in PARAM_SHAPES.items() if n != "head.weight"}
    out = []
    for d in range(2):
        indices, values = {}, {}
        for name, info in params.items():
            if d == 1 and name == "norm.scale":
                continue
            chosen = torch.randperm(info.numel, generator=gen)[: info.numel // 2]
            edges = torch.tensor([0, info.numel - 1, 45, 40, 44, 15, 16, 4, 3], dtype=torch.int64)
            idx = torch.unique(torch.cat([chosen, edges[(edges >= 0) & (edges < info.numel)]]))
            indices[name], values[name] = idx, torch.randn(idx.numel(), generator=gen) * 0.1
        dense = {"head.weight": torch.randn(3, 5, generator=gen)} if d == 0 else {}
        out.append(SparseDiff(indices, values, {n: params[n] for n in indices}, dense, method=f"d{d}", k=5))
    return out


def _sharded_model(mesh) -> Params:
    return Params({n: distribute_tensor(t, mesh, [Shard(0)], src_data_rank=None) for n, t in base_params().items()})


def _locals(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.to_local().detach().clone() for n, p in model.named_parameters()}


MIXED_LAYOUTS = ("full base", "replicated base", "full mask", "sharded mask, full states")
"""gather_sparse_diff inputs whose base, tuned and selection are laid out differently."""


def _full(states: dict) -> dict[str, torch.Tensor]:
    return {n: t.full_tensor() for n, t in states.items()}


def _mixed_layouts(base: dict, tuned: dict, selection: dict) -> dict[str, object]:
    """Per :data:`MIXED_LAYOUTS` case, what gather_sparse_diff returns on this rank (or the error it raised)."""
    replicated = {n: t.redistribute(placements=[Replicate()]) for n, t in base.items()}
    names = list(selection)
    cases = {
        "full base": (_full(base), tuned, selection),
        "replicated base": (replicated, tuned, selection),
        "full mask": (base, tuned, _full(selection)),
        "sharded mask, full states": (_full(base), _full(tuned), selection),
        "shapes differ": ({n: base[names[0]] for n in names[:2]}, tuned, {n: selection[n] for n in names[:2]}),
    }
    return {case: _capture_result(lambda args=args: gather_sparse_diff(*args)) for case, args in cases.items()}


def _dense_kept_after_the_model_moves(base: dict, tuned: dict, selection: dict) -> torch.Tensor | None:
    """The dense head of a gathered diff (rank 0) after the plain head it was given moved on."""
    head = torch.ones(3, 5)
    diff = gather_sparse_diff(base, tuned, selection, {"head.weight": head})
    head.add_(1.0)
    return None if diff is None else diff.dense["head.weight"]


def _capture_result(call) -> object:
    try:
        return call()
    except Exception as err:  # recorded; the test asserts on type and message
        return (type(err).__name__, str(err))


def run_compose(mesh, folder: Path) -> dict:
    model = _sharded_model(mesh)
    before = _locals(model)
    with count_communication() as ledger:
        handle = apply_diffs_sharded(model, diffs(), SCALES)
    applied = _locals(model)
    apply_calls = ledger.calls
    tuned = {n: p.detach().clone() for n, p in model.named_parameters()}
    handle.revert()
    reverted = _locals(model)
    base = dict(model.named_parameters())
    sparse = [n for n in PARAM_SHAPES if n != "head.weight"]
    scores = [(tuned[n].to_local().float() - base[n].to_local().float()).abs() for n in sparse]
    score_dts = [distribute_tensor(torch.zeros(tuned[n].shape), mesh, [Shard(0)], src_data_rank=None) for n in sparse]
    for dt, local in zip(score_dts, scores, strict=True):
        dt.to_local().copy_(local)
    masks = topk_mask_dtensor(score_dts, 60)
    selection = dict(zip(sparse, masks, strict=True))
    with count_communication() as save_ledger:
        saved = save_sharded_diff(
            folder / "sharded.safetensors",
            base,
            tuned,
            selection,
            {"head.weight": tuned["head.weight"]},
            base_model="toy",
            method="lt-sft",
            k=60,
            settings={"world": mesh.size()},
        )
    part = load_diff_for_shards(folder / "sharded.safetensors", model)
    part_handle = apply_diffs_sharded(model, [part], [1.0])  # it ships the head: scale 1
    part_applied = _locals(model)
    part_handle.revert()
    as_indices = gather_sparse_diff(
        base,
        tuned,
        dict(zip(sparse, topk_mask_dtensor(score_dts, 60, output="indices"), strict=True)),
        dst=mesh.size() - 1,
    )
    return {
        "mixed_layouts": _mixed_layouts(base, tuned, selection),
        "dense_kept": _dense_kept_after_the_model_moves(base, tuned, selection),
        "before": before,
        "applied": applied,
        "reverted": reverted,
        "apply_calls": apply_calls,
        "masks": [m.to_local() for m in masks],
        "saved_here": saved is not None,
        "save_counts": dict(save_ledger.counts),
        "indices_diff": as_indices,
        "path": str(folder / "sharded.safetensors"),
        "part_indices": part.indices,
        "part_applied": part_applied,
        "part_reverted": _locals(model),
    }


def save_into_a_folder(rank: int, world: int, folder: str) -> tuple[str, str]:
    """save_sharded_diff of a small diff to a path that is a folder (rank 0 cannot write it): the error
    this rank raised."""
    mesh = init_device_mesh("cpu", (world,))
    target = Path(folder) / "a-folder"
    target.mkdir(exist_ok=True)

    def shard(t: torch.Tensor):
        return distribute_tensor(t, mesh, [Shard(0)], src_data_rank=None)

    return _capture(lambda: save_sharded_diff(target, {"w": shard(torch.zeros(5, 2))}, {"w": shard(torch.ones(5, 2))},
                                              {"w": shard(torch.ones(5, 2, dtype=torch.bool))}))


def save_with_metadata_dst_refuses(rank: int, world: int, folder: str) -> tuple[str, str]:
    """save_sharded_diff whose SparseDiff, built on rank 0 only after the collectives, refuses its ``settings``
    (an int key JSON would turn into a string): the error this rank raised."""
    mesh = init_device_mesh("cpu", (world,))

    def shard(t: torch.Tensor):
        return distribute_tensor(t, mesh, [Shard(0)], src_data_rank=None)

    return _capture(lambda: save_sharded_diff(Path(folder) / "sft.safetensors", {"w": shard(torch.zeros(5, 2))},
                                              {"w": shard(torch.ones(5, 2))},
                                              {"w": shard(torch.ones(5, 2, dtype=torch.bool))}, settings={1: "a"}))


# ------------------------------------------------------------------------- mesh of reversed ranks


def reversed_mesh_rows(world: int) -> list[int]:
    """Which rank holds each row block on :func:`run_reversed_mesh`'s mesh: block b on rank world − 1 − b."""
    return list(reversed(range(world)))


def run_reversed_mesh(world: int) -> dict:
    """Top-k of the tied case and a gathered diff with a sharded dense head, on a mesh listing the ranks in
    reverse (rank world − 1 holds the first rows): this rank's masks, and the diff on rank 0."""
    mesh = DeviceMesh("cpu", reversed_mesh_rows(world))
    ties = topk_cases()[1]
    dts = _distribute(ties.tensors, ties.replicated, mesh)
    masks = {k: [m.to_local().clone() for m in topk_mask_dtensor(dts, k)] for k in ties.ks}
    base, tuned = _distribute(ties.tensors, ties.replicated, mesh), _distribute(
        [2 * t + 1.0 for t in ties.tensors], ties.replicated, mesh)
    names = [f"t{i}" for i in range(len(dts))]
    head = distribute_tensor(torch.arange(14.0).view(7, 2), mesh, [Shard(0)], src_data_rank=None)
    selection = dict(zip(names, topk_mask_dtensor(dts, 47), strict=True))
    diff = _capture_result(lambda: gather_sparse_diff(dict(zip(names, base, strict=True)),
                                                      dict(zip(names, tuned, strict=True)), selection, {"head": head}))
    block = mesh.get_coordinate()[0]
    own = {"w": torch.tensor([10 * block, 10 * block + 3]), "b": torch.tensor([block])}
    gathered = all_gather_selection(own, mesh.get_group(), comm.mesh_order(mesh.mesh, mesh.get_group()))
    return {"masks": masks, "diff": diff, "gathered_selection": gathered}


# ------------------------------------------------------------------------------------------ all


def run_all(rank: int, world: int, folder: str) -> dict:
    """Every scenario on this rank (one spawned world serves all the tests of a world size)."""
    mesh = init_device_mesh("cpu", (world,))
    return {"topk": run_topk(mesh), "rsvd": run_rsvd(mesh), "compose": run_compose(mesh, Path(folder)),
            "reversed_mesh": run_reversed_mesh(world)}
