"""Compose / revert on sharded parameters and saving one ordinary SparseDiff, on 2 and 3 gloo ranks.

Parameters of mixed dtypes (fp32, bf16, fp16) are split 17 rows over 2 ranks, 10 over 3,
2 rows over 3 (an empty shard); two diffs with entries on shard boundaries, at the first
and last flat index, one tensor missing from a diff, a dense head, scales (1, −0.5).
"""

from __future__ import annotations

import pytest
import torch

from deftx.ops import topk_mask
from deftx.sft import OverwrittenByDenseWarning, SparseDiff, apply_diffs
from tests.distributed.scenarios import (
    MIXED_LAYOUTS,
    PARAM_SHAPES,
    SCALES,
    Params,
    base_params,
    diffs,
    save_into_a_folder,
    save_with_metadata_dst_refuses,
    topk_cases,
)
from tests.distributed.world import assemble_rows, run_world
from tests.helpers import assert_bitwise_equal

SPARSE = [n for n in PARAM_SHAPES if n != "head.weight"]


def _single_process_applied() -> dict[str, torch.Tensor]:
    model = Params(base_params())
    apply_diffs(model, diffs(), list(SCALES), check_base=False, on_rounding_loss="ignore")  # bf16 loses some
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_apply_equals_single_process_bit_for_bit(world):
    _, results = world
    expected = _single_process_applied()
    for name in PARAM_SHAPES:
        got = assemble_rows([r["compose"]["applied"][name] for r in results])
        assert_bitwise_equal(got, expected[name], what=name)
    assert all(r["compose"]["apply_calls"] == 0 for r in results), "apply must not communicate"


def test_revert_restores_every_shard_bit_for_bit(world):
    _, results = world
    for rank, r in enumerate(results):
        for name in PARAM_SHAPES:
            assert_bitwise_equal(
                r["compose"]["reverted"][name], r["compose"]["before"][name], what=f"rank {rank} {name}"
            )
            if r["compose"]["before"][name].numel():
                assert not torch.equal(r["compose"]["applied"][name], r["compose"]["before"][name]), "nothing applied"


def _expected_diff() -> SparseDiff:
    base = base_params()
    tuned = _single_process_applied()
    masks = topk_mask([(tuned[n].float() - base[n].float()).abs() for n in SPARSE], 60, backend="torch")
    return SparseDiff.from_states(
        base, tuned, dict(zip(SPARSE, masks, strict=True)), ["head.weight"], base_model="toy", method="lt-sft", k=60
    )


def test_saved_file_equals_single_process_sparse_diff(world):
    world_size, results = world
    assert [r["compose"]["saved_here"] for r in results] == [True] + [False] * (world_size - 1)
    loaded = SparseDiff.load(results[0]["compose"]["path"])
    expected = _expected_diff()
    assert loaded.names == expected.names and loaded.params == expected.params
    assert (loaded.method, loaded.k, loaded.base_model, loaded.settings) == ("lt-sft", 60, "toy", {"world": world_size})
    for name in SPARSE:
        assert_bitwise_equal(loaded.indices[name], expected.indices[name], what=f"indices {name}")
        assert_bitwise_equal(loaded.values[name], expected.values[name], what=f"values {name}")
    assert_bitwise_equal(loaded.dense["head.weight"], expected.dense["head.weight"], what="dense head")


def test_gather_from_index_form_on_another_rank(world):
    _, results = world
    assert all(r["compose"]["indices_diff"] is None for r in results[:-1])
    got = results[-1]["compose"]["indices_diff"]
    expected = _expected_diff()
    for name in SPARSE:
        assert_bitwise_equal(got.indices[name], expected.indices[name], what=f"indices {name}")
        assert_bitwise_equal(got.values[name], expected.values[name], what=f"values {name}")
    assert got.dense == {}


@pytest.mark.parametrize("case", MIXED_LAYOUTS)
def test_gather_reads_each_tensor_by_its_own_layout(world, case):
    """A full or replicated θ0 beside sharded θ, a full mask, a mask DTensor beside full states: the same diff."""
    _, results = world
    assert all(r["compose"]["mixed_layouts"][case] is None for r in results[1:])
    got = results[0]["compose"]["mixed_layouts"][case]
    assert isinstance(got, SparseDiff), got
    expected = _expected_diff()
    for name in SPARSE:
        assert_bitwise_equal(got.indices[name], expected.indices[name], what=f"{case}: indices {name}")
        assert_bitwise_equal(got.values[name], expected.values[name], what=f"{case}: values {name}")


def test_gather_refuses_states_of_other_shapes(world):
    _, results = world
    for r in results:
        kind, message = r["compose"]["mixed_layouts"]["shapes differ"]
        assert kind == "ValueError" and "shapes" in message, message


def test_gathered_dense_tensors_are_copies(world):
    """A plain head handed to gather_sparse_diff is copied: training on afterwards leaves the diff as it was."""
    _, results = world
    assert all(r["compose"]["dense_kept"] is None for r in results[1:])
    assert_bitwise_equal(results[0]["compose"]["dense_kept"], torch.ones(3, 5), what="dense head")


def test_save_moves_only_sparse_pieces(world):
    world_size, results = world
    for r in results:
        counts = r["compose"]["save_counts"]
        per_rank_max = 60  # at most k entries live on one rank
        assert counts["gather", "diff indices"].bytes <= 8 * (len(SPARSE) + per_rank_max)
        assert counts["gather", "diff values"].bytes <= 4 * per_rank_max
        head_rows = -(-PARAM_SHAPES["head.weight"][0][0] // world_size)
        assert counts["gather", "diff dense"].bytes == head_rows * 5 * 4


def test_each_rank_reads_only_its_entries_of_a_file(world):
    """load_diff_for_shards: the ranks' parts partition the file; applying them == applying the whole file."""
    _, results = world
    whole = SparseDiff.load(results[0]["compose"]["path"])
    for name in SPARSE:
        parts = [r["compose"]["part_indices"][name] for r in results]
        assert_bitwise_equal(torch.cat(parts), whole.indices[name], what=f"partition of {name}")
    model = Params(base_params())
    apply_diffs(model, [whole], [1.0], check_base=False)
    for name, param in model.named_parameters():
        got = assemble_rows([r["compose"]["part_applied"][name] for r in results])
        assert_bitwise_equal(got, param.detach(), what=name)
    for r in results:
        for name in PARAM_SHAPES:
            assert_bitwise_equal(r["compose"]["part_reverted"][name], r["compose"]["before"][name], what=name)


def test_sharded_apply_of_overlapping_dense_and_sparse_diffs_reverts_exactly():
    """Issue #24 in the sharded apply (here on plain, unsharded parameters): two diffs ship one head,
    one diff's dense tensor meets another's sparse entries; the result equals apply_diffs and revert is exact."""
    from transformers import BertForSequenceClassification

    from deftx.distributed.compose import apply_diffs_sharded
    from tests.sft.helpers import random_sft, snapshot, tiny_config

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config())
    reference = BertForSequenceClassification(tiny_config())
    reference.load_state_dict(model.state_dict())
    pooler = "bert.pooler.dense.weight"
    stack = [random_sft(model, 200, head=True), SparseDiff({}, {}, {}, dense={pooler: torch.ones(16, 16)}),
             random_sft(model, 200, seed=1, head=True)]
    original = snapshot(model)
    with pytest.warns(OverwrittenByDenseWarning, match="'classifier.weight': SparseDiff 2's dense tensor replaces"):
        handle = apply_diffs_sharded(model, stack, check_base=False)
    with pytest.warns(OverwrittenByDenseWarning):
        apply_diffs(reference, stack, check_base=False)
    for name, param in model.named_parameters():
        assert_bitwise_equal(param.detach(), reference.get_parameter(name).detach(), what=f"applied {name}")
    handle.revert()
    for name, param in model.named_parameters():
        assert_bitwise_equal(param.detach(), original[name], what=f"reverted {name}")


def test_sharded_applies_form_a_stack_reverted_latest_first():
    """Two overlapping applies: reverting the older first is refused (it would leave the newer one's
    entries in place); latest first restores θ0 bit for bit, and revert_diff finds a handle by content."""
    from transformers import BertForSequenceClassification

    from deftx.distributed.compose import apply_diffs_sharded
    from deftx.sft.apply import applied, revert_diff
    from tests.sft.helpers import random_sft, snapshot, tiny_config

    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config())
    original = snapshot(model)
    first, second = random_sft(model, 300), random_sft(model, 300, seed=1)
    older = apply_diffs_sharded(model, [first], check_base=False)
    newer = apply_diffs_sharded(model, [second], check_base=False)
    assert applied(model) == [older, newer]
    with pytest.raises(RuntimeError, match="reverse order"):
        older.revert()
    assert revert_diff(model, second).exact
    older.revert()
    assert applied(model) == [] and newer.reverted
    for name, param in model.named_parameters():
        assert_bitwise_equal(param.detach(), original[name], what=f"reverted {name}")


@pytest.mark.parametrize(
    ("mutate", "words"),
    [
        (lambda tensors, meta: tensors.pop("indices/bias"), "lacks its indices"),
        (lambda tensors, meta: tensors.update({"values/weight": tensors["values/weight"].half()}), "float32"),
        (lambda tensors, meta: tensors.update({"values/weight": torch.cat([tensors["values/weight"]] * 2)}), "shape"),
    ],
    ids=["values_without_indices", "float16_values", "more_values_than_indices"],
)
def test_reading_a_ranks_entries_refuses_what_load_refuses(tmp_path, mutate, words):
    """Files SparseDiff.load refuses (re-signed, so only these checks can catch them) are refused per rank too."""
    from deftx.distributed.compose import load_diff_for_shards
    from deftx.sft import ParamInfo, SparseDiffFormatError
    from tests.sft.helpers import rewrite

    model = torch.nn.Linear(3, 4)
    params = {"weight": ParamInfo((4, 3), torch.float32), "bias": ParamInfo((4,), torch.float32)}
    diff = SparseDiff({"weight": torch.tensor([1, 7]), "bias": torch.tensor([0, 3])},
                      {"weight": torch.ones(2), "bias": torch.ones(2)}, params)
    path = tmp_path / "sft.safetensors"
    diff.save(path)
    rewrite(path, mutate)
    with pytest.raises(SparseDiffFormatError):
        SparseDiff.load(path)
    with pytest.raises(SparseDiffFormatError, match=words):
        load_diff_for_shards(path, model)


def test_gathered_diff_is_in_row_order_on_a_mesh_of_reversed_ranks(world):
    """Rows are joined in the mesh's coordinate order, not the group's rank order: sorted indices with
    their own values, and the dense head's rows in place."""
    _, results = world
    diff = results[0]["reversed_mesh"]["diff"]
    assert isinstance(diff, SparseDiff), f"gather_sparse_diff raised {diff}"
    tensors = list(topk_cases()[1].tensors)
    masks = topk_mask(tensors, 47, backend="torch")
    names = [f"t{i}" for i in range(len(tensors))]
    expected = SparseDiff.from_states(dict(zip(names, tensors, strict=True)),
                                      {n: 2 * t + 1.0 for n, t in zip(names, tensors, strict=True)},
                                      dict(zip(names, masks, strict=True)))
    for name in names:
        assert_bitwise_equal(diff.indices[name], expected.indices[name], what=f"indices {name}")
        assert_bitwise_equal(diff.values[name], expected.values[name], what=f"values {name}")
    assert_bitwise_equal(diff.dense["head"], torch.arange(14.0).view(7, 2), what="dense head")


def test_gathered_selection_is_in_row_order_on_a_mesh_of_reversed_ranks(world):
    """The selection's row blocks (each rank's global indices) are joined in mesh order: sorted, as
    MaskedAdamW and a single process have them, where group-rank order left them unsorted."""
    world_size, results = world
    for r in results:
        gathered = r["reversed_mesh"]["gathered_selection"]
        assert gathered["w"].tolist() == [i for block in range(world_size) for i in (10 * block, 10 * block + 3)]
        assert gathered["b"].tolist() == list(range(world_size))


def test_a_save_that_fails_on_the_writing_rank_fails_on_every_rank(tmp_path):
    """Rank 0 cannot write the file: it raises what the save raised, the others raise naming it, where
    they went on as if the file were there (and met rank 0 at its next collective)."""
    results = run_world(save_into_a_folder, 2, tmp_path / "world", str(tmp_path), timeout_s=30)
    assert results[0][0] == "IsADirectoryError", results[0]
    kind, message = results[1]
    assert kind == "RuntimeError" and "rank 0 could not write" in message and "IsADirectoryError" in message, results[1]


def test_a_diff_only_the_destination_refuses_to_build_is_told_to_every_rank(tmp_path):
    """Rank 0 builds the SparseDiff after the collectives; when it refuses (here its metadata), the other rank
    waited in the broadcast until the process group's timeout instead of learning why."""
    results = run_world(save_with_metadata_dst_refuses, 2, tmp_path / "world", str(tmp_path), timeout_s=30)
    assert results[0][0] == "TypeError" and "key 1 is int" in results[0][1], results[0]
    kind, message = results[1]
    assert kind == "RuntimeError" and "rank 0 could not write" in message and "key 1 is int" in message, results[1]
    assert not (tmp_path / "sft.safetensors").exists()


def _gather_in_another_order(rank: int, world: int, what: str) -> object:
    """gather_sparse_diff of two sharded parameters (or two sharded dense tensors) of one shape, handed over
    in the other order on every rank but rank 0: what this rank returned or raised."""
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    from deftx.distributed.compose import gather_sparse_diff

    mesh = init_device_mesh("cpu", (world,))

    def shard(t: torch.Tensor):
        return distribute_tensor(t, mesh, [Shard(0)], src_data_rank=None)

    names = ["a", "b"] if rank == 0 else ["b", "a"]
    values = {"a": torch.arange(1.0, 9.0).view(4, 2), "b": -torch.arange(1.0, 9.0).view(4, 2)}
    sparse = names if what == "sparse" else ["w"]
    base = {n: shard(torch.zeros(4, 2)) for n in sparse}
    tuned = {n: shard(values.get(n, torch.ones(4, 2))) for n in sparse}
    selection = {n: shard(torch.ones(4, 2, dtype=torch.bool)) for n in sparse}
    dense = {n: shard(values[n]) for n in names} if what == "dense" else None
    try:
        diff = gather_sparse_diff(base, tuned, selection, dense)
    except Exception as err:  # recorded; the test asserts on type and message
        return (type(err).__name__, str(err))
    return None if diff is None else ({n: diff.values[n] for n in diff.values}, diff.dense)


@pytest.mark.parametrize("what", ["sparse", "dense"])
def test_ranks_that_list_the_parameters_in_another_order_all_raise(tmp_path, what):
    """Each rank's pieces are read in rank 0's name order: a rank listing them otherwise must make every rank
    raise, where rank 0 silently filed that rank's entries (or rows) of 'b' under 'a' and those of 'a' under 'b'."""
    for rank, result in enumerate(run_world(_gather_in_another_order, 2, tmp_path, what, timeout_s=30)):
        assert isinstance(result, tuple) and result[0] == "ValueError" and "disagree" in result[1], (rank, result)
