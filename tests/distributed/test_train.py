"""Two-phase sparse fine-tuning of a tiny BERT on 2 gloo ranks, with DDP and with FSDP2.

Checks, per strategy and method: the sharded selection equals the single-process
selection on the same θ1 (LT-SFT: exactly; DeFT-X: the sharded scores are within the
rSVD tolerance of the single-process scores, the selection is exactly the top-k of those
scores and overlaps the single-process one almost entirely); phase 3 moves only the
selected entries; the saved SparseDiff equals ``SparseDiff.from_states`` on the gathered
states. On 3 ranks, a mesh listing its ranks out of order (``DeviceMesh("cpu", [2, 0, 1])``) gives
DDP's run the ordered mesh's selection and SparseDiff, and FSDP2 refuses it on every rank; a mesh
over 2 of the 3 ranks gives both strategies the 2-rank world's SparseDiff.
"""

from __future__ import annotations

import pytest
import torch
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor, init_device_mesh
from transformers import BertForSequenceClassification

from deftx.distributed.compose import apply_diffs_sharded, load_diff_for_shards
from deftx.distributed.train import (
    SFTSettings,
    as_row_shards,
    full_selection,
    full_state,
    refuse_diverged,
    run_sparse_finetuning,
    snapshot,
    unwrap,
)
from deftx.distributed.train import selection_scores as sharded_scores
from deftx.ops import topk_mask
from deftx.sft import SparseDiff
from deftx.train.config import DenoiseConfig, PhaseConfig
from deftx.train.denoise import selection_scores
from deftx.train.params import parameter_groups
from deftx.train.select import Difference, select_top_k
from tests.distributed.world import run_world
from tests.helpers import assert_same_entries
from tests.sft.helpers import tiny_config

RUNS = [("ddp", "lt-sft"), ("fsdp", "lt-sft"), ("ddp", "deft-x"), ("fsdp", "deft-x")]
K = 300
DENOISE = DenoiseConfig(rank=2, oversample=4)


def tiny_bert() -> BertForSequenceClassification:
    torch.manual_seed(0)
    return BertForSequenceClassification(tiny_config(max_position_embeddings=16))


def batch_for(rank: int, world: int):
    def batch(step: int) -> dict[str, torch.Tensor]:
        gen = torch.Generator().manual_seed(1000 + step)
        ids = torch.randint(1, 64, (4 * world, 8), generator=gen)
        return {"input_ids": ids[rank::world], "labels": (ids[:, 0] % 3)[rank::world]}

    return batch


def train_worker(rank: int, world: int) -> dict:
    from torch.distributed.tensor import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    out = {}
    for strategy, method in RUNS:
        settings = SFTSettings(
            k=K,
            full=PhaseConfig(steps=3, learning_rate=1e-2),
            sparse=PhaseConfig(steps=3, learning_rate=1e-2),
            denoise=DENOISE if method == "deft-x" else None,
        )
        model, result = run_sparse_finetuning(
            tiny_bert(), strategy, settings, batch_for(rank, world), mesh, base_model="tiny-bert"
        )
        with torch.no_grad():  # an evaluation forward leaves FSDP2's root unit unsharded
            model(**batch_for(rank, world)(0))
        resharded = snapshot(model, list(result.theta0))
        params = dict(unwrap(model).named_parameters())
        out[strategy, method] = {
            "selection": full_selection(result, mesh.get_group()),
            "theta0": full_state(result.theta0),
            "theta1": full_state(result.theta1),
            "final": full_state({n: p.detach() for n, p in params.items() if n in result.theta0}),
            "diff": result.diff,
            "losses": result.losses,
            "select_bytes": result.communication["select"].bytes,
            "placements": {n: getattr(p, "placements", None) for n, p in params.items()},
            "snapshot_placements": {n: getattr(v, "placements", None) for n, v in resharded.items()},
        }
        if method == "deft-x":
            eligible = list(result.selection)
            scores = sharded_scores(
                {n: result.theta1[n] for n in eligible},
                {n: result.theta0[n] for n in eligible},
                parameter_groups(unwrap(model)),
                DENOISE,
                mesh,
            )
            out[strategy, method]["scores"] = materialised(full_state(scores))
    return out


def materialised(scores: dict) -> dict[str, torch.Tensor]:
    """Score tensors, with LT-SFT's (θ1, θ0) pairs computed as the selection ranks them."""
    def full(t):
        return t.full_tensor() if isinstance(t, DTensor) else t

    return {n: (full(s.theta1).float() - full(s.theta0).float()).abs() if isinstance(s, Difference) else full(s)
            for n, s in scores.items()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return run_world(train_worker, 2, tmp_path_factory.mktemp("train"), timeout_s=120)


def _single_process_selection(run: dict, denoise) -> dict[str, torch.Tensor]:
    groups = parameter_groups(tiny_bert())
    names = list(run["selection"])
    scores, _ = selection_scores(
        {n: run["theta1"][n] for n in names}, {n: run["theta0"][n] for n in names}, groups, denoise, progress=False
    )
    return select_top_k(scores, K), materialised(scores)


@pytest.mark.parametrize(("strategy", "method"), RUNS)
def test_selection_matches_single_process(trained, strategy, method):
    run = trained[0][strategy, method]
    for other in trained[1:]:
        for name, idx in other[strategy, method]["selection"].items():
            assert torch.equal(idx, run["selection"][name]), "ranks disagree on the selection"
    expected, _ = _single_process_selection(run, DENOISE if method == "deft-x" else None)
    got = run["selection"]
    assert sum(int(i.numel()) for i in got.values()) == K
    if method == "lt-sft":
        for name in expected:
            assert torch.equal(got[name], expected[name]), f"{strategy} {name}: selection differs"
        return
    shared = sum(int(torch.isin(got[n], expected[n]).sum()) for n in expected)
    assert shared >= 0.97 * K, f"DeFT-X selection shares only {shared} of {K} entries with single-process"


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_fsdp_shards_and_ddp_replicates(trained, strategy):
    for key in ("placements", "snapshot_placements"):
        placements = trained[0][strategy, "lt-sft"][key]
        if strategy == "fsdp":
            assert all(p is not None and p[0].is_shard(0) for p in placements.values()), key
        else:
            assert all(p is None for p in placements.values()), key


@pytest.mark.parametrize(("strategy", "method"), RUNS)
def test_phase3_moves_only_selected_entries(trained, strategy, method):
    run = trained[0][strategy, method]
    for name, idx in run["selection"].items():
        moved = (run["final"][name] != run["theta0"][name]).reshape(-1).nonzero().flatten()
        assert bool(torch.isin(moved, idx).all()), f"{name}: an unselected entry moved"
    assert all(torch.isfinite(torch.tensor(v)).all() for v in run["losses"].values())
    assert len(run["losses"]["full"]) == 3 and len(run["losses"]["sparse"]) == 3


@pytest.mark.parametrize(("strategy", "method"), RUNS)
def test_saved_diff_is_the_ordinary_sparse_diff(trained, strategy, method):
    run = trained[0][strategy, method]
    assert all(r[strategy, method]["diff"] is None for r in trained[1:])
    diff = run["diff"]
    head = [n for n in run["theta0"] if n not in run["selection"]]
    expected = SparseDiff.from_states(
        run["theta0"], run["final"], run["selection"], head, base_model="tiny-bert", method=method, k=K
    )
    assert diff.method == method
    assert_same_entries(diff, expected)


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_deft_x_selection_is_exact_top_k_of_scores_close_to_single_process(trained, strategy):
    """The only DeFT-X difference from one process is rSVD rounding, never the selection step."""
    run = trained[0][strategy, "deft-x"]
    names = list(run["selection"])
    sharded = run["scores"]
    exact = topk_mask([sharded[n] for n in names], K, output="indices")
    for name, idx in zip(names, exact, strict=True):
        assert torch.equal(idx, run["selection"][name]), f"{name}: not the top-k of the sharded scores"
    _, single = _single_process_selection(run, DENOISE)
    for name in names:
        delta = torch.linalg.vector_norm(run["theta1"][name].float() - run["theta0"][name].float())
        error = torch.linalg.vector_norm(sharded[name] - single[name])
        assert float(error) <= 1e-4 * max(float(delta), 1e-30), f"{name}: scores differ by {float(error):.3e}"


def diverged_worker(rank: int, world: int) -> dict[str, str | None]:
    """:func:`refuse_diverged` of a clean θ1, and of one whose Inf lies in the last rank's row block of
    a Shard(0) DTensor only: what each rank raised."""
    from torch.distributed.tensor import init_device_mesh

    mesh = init_device_mesh("cpu", (world,))
    weight = torch.zeros(2 * world, 3)
    bias = torch.zeros(3)
    out: dict[str, str | None] = {}
    for case in ("clean", "inf"):
        if case == "inf":
            weight[-1, 2] = float("inf")
        theta1 = {"encoder.bias": bias, "encoder.weight": as_row_shards(weight, mesh)}
        try:
            refuse_diverged(theta1, mesh.get_group())
            out[case] = None
        except ValueError as err:
            out[case] = str(err)
    return out


def test_a_diverged_phase_one_is_refused_on_every_rank(tmp_path):
    """An Inf in θ1 held by one rank's shard stops every rank, naming the parameter, where the sharded
    selection ranked the Inf difference first and the run went on."""
    results = run_world(diverged_worker, 2, tmp_path)
    for result in results:
        assert result["clean"] is None
        assert result["inf"] is not None and "phase 1 diverged: parameter 'encoder.weight'" in result["inf"]


PERMUTED_RANKS = [2, 0, 1]
SUBMESH_RANKS = [1, 2]


def mesh_worker(rank: int, world: int) -> dict:
    """LT-SFT with DDP on the ordered mesh and on ``PERMUTED_RANKS``, FSDP2 on the latter (its error),
    then both strategies on ``SUBMESH_RANKS`` as ``train_worker`` runs them (rank 0 stays out)."""
    settings = SFTSettings(k=K, full=PhaseConfig(steps=3, learning_rate=1e-2),
                           sparse=PhaseConfig(steps=3, learning_rate=1e-2))
    meshes = {"ordered": init_device_mesh("cpu", (world,)), "permuted": DeviceMesh("cpu", PERMUTED_RANKS)}
    out = {}
    for key, mesh in meshes.items():
        _, result = run_sparse_finetuning(tiny_bert(), "ddp", settings, batch_for(rank, world), mesh)
        out[key] = {"selection": result.selection, "diff": result.diff}
    try:
        run_sparse_finetuning(tiny_bert(), "fsdp", settings, batch_for(rank, world), meshes["permuted"])
        out["fsdp_error"] = None
    except ValueError as err:
        out["fsdp_error"] = str(err)
    sharded = fully_shard(tiny_bert(), mesh=meshes["permuted"])
    for what, call in (("apply", lambda: apply_diffs_sharded(sharded, [])),
                       ("load", lambda: load_diff_for_shards("absent.safetensors", sharded))):
        try:
            call()
            out["user_fsdp", what] = None
        except ValueError as err:
            out["user_fsdp", what] = str(err)
    submesh = DeviceMesh("cpu", SUBMESH_RANKS)
    if rank in SUBMESH_RANKS:
        batch = batch_for(SUBMESH_RANKS.index(rank), len(SUBMESH_RANKS))
        for strategy in ("ddp", "fsdp"):
            _, result = run_sparse_finetuning(tiny_bert(), strategy, settings, batch, submesh, base_model="tiny-bert")
            out["submesh", strategy] = result.diff
    return out


@pytest.fixture(scope="module")
def permuted(tmp_path_factory):
    return run_world(mesh_worker, len(PERMUTED_RANKS), tmp_path_factory.mktemp("permuted"), timeout_s=30)


def test_a_users_fsdp_model_on_a_mesh_out_of_rank_order_is_refused_by_the_sharded_apply_and_load(permuted):
    """FSDP2 mislabels the rows of each shard on such a mesh: the sharded apply and load would write and read
    another shard's entries, so both refuse the model on every rank before anything else."""
    for run in permuted:
        for what in ("apply", "load"):
            error = run["user_fsdp", what]
            assert error is not None and f"lists ranks {PERMUTED_RANKS} out of ascending order" in error, what


def test_ddp_on_a_mesh_out_of_rank_order_equals_the_ordered_mesh(permuted):
    for run in permuted:
        for name, idx in run["ordered"]["selection"].items():
            assert torch.equal(run["permuted"]["selection"][name], idx), f"{name}: selection differs"
    assert_same_entries(permuted[0]["permuted"]["diff"], permuted[0]["ordered"]["diff"])


def test_fsdp_refuses_a_mesh_out_of_rank_order_on_every_rank(permuted):
    """FSDP2 stores shard i on group rank i, its DTensors say mesh coordinate i: the rows would be mislabelled."""
    for run in permuted:
        assert run["fsdp_error"] is not None, "FSDP2 ran on a mesh out of rank order"
        assert str(PERMUTED_RANKS) in run["fsdp_error"] and "ddp" in run["fsdp_error"]


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_a_mesh_over_part_of_the_world_trains_on_its_ranks_alone(permuted, trained, strategy):
    """DDP and the diff's gather talk over the mesh's group: the world's rank 0 takes no part, and the
    mesh's first rank gets the 2-rank world's SparseDiff."""
    assert ("submesh", strategy) not in permuted[0]
    assert permuted[SUBMESH_RANKS[1]]["submesh", strategy] is None
    assert_same_entries(permuted[SUBMESH_RANKS[0]]["submesh", strategy], trained[0][strategy, "lt-sft"]["diff"])
