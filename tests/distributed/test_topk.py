"""Sharded global top-k on 2 and 3 gloo ranks == single-process ``deftx.ops.topk_mask``, entry for entry.

Cases (see ``scenarios.py``): ragged and empty shards (17 rows over 2 ranks, 10 over 3,
2 rows over 3), ties across shard boundaries, mixed dtypes with ±0 and ±inf, a replicated
tensor between sharded ones, bf16-only and fp16-only lists, all-zero tensors, and k at
0 / 1 / total − 1 / total. The full masks are rebuilt from the ranks' local blocks.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from deftx.distributed.topk import HEADER_BYTES, RADIX, passes_needed
from deftx.ops import topk_mask
from tests.distributed.scenarios import BASE_CASES, TopkCase, reversed_mesh_rows, topk_bases, topk_cases
from tests.distributed.world import assemble_rows


def _full_masks(case: TopkCase, per_rank: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    out = []
    for i, replicated in enumerate(case.replicated):
        parts = [rank_masks[i] for rank_masks in per_rank]
        if replicated:
            for part in parts[1:]:
                assert torch.equal(part, parts[0]), f"replicated tensor {i}: ranks disagree"
            out.append(parts[0])
        else:
            out.append(assemble_rows(parts))
    return out


@pytest.mark.parametrize("case", topk_cases(), ids=lambda c: c.name)
def test_masks_equal_single_process(world, case):
    _, results = world
    for k in case.ks:
        got = _full_masks(case, [r["topk"]["masks"][case.name, k] for r in results])
        expected = topk_mask(list(case.tensors), k, backend="torch")
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            assert g.dtype == torch.bool and g.shape == e.shape
            mismatch = int((g != e).sum())
            assert mismatch == 0, f"{case.name} k={k} tensor {i}: {mismatch} entries differ from single-process"
        assert sum(int(g.sum()) for g in got) == k


def test_ties_go_to_the_first_rows_on_a_mesh_of_reversed_ranks(world):
    """The first rows are those of the mesh's first coordinate, here the last rank: ties split at the
    k-th value are taken there first, as one process takes them, not on rank 0's rows."""
    world_size, results = world
    case = topk_cases()[1]
    for k in case.ks:
        per_rank = [results[r]["reversed_mesh"]["masks"][k] for r in reversed_mesh_rows(world_size)]
        expected = topk_mask(list(case.tensors), k, backend="torch")
        for i, (g, e) in enumerate(zip(_full_masks(case, per_rank), expected, strict=True)):
            mismatch = int((g != e).sum())
            assert mismatch == 0, f"k={k} tensor {i}: {mismatch} entries differ from single-process"


@pytest.mark.parametrize("case", [c for c in topk_cases() if c.name in BASE_CASES], ids=lambda c: c.name)
def test_masks_with_bases_equal_single_process(world, case):
    """|θ1 − θ0| ranked from the two shards chunk by chunk == the single-process fused op."""
    _, results = world
    bases = list(topk_bases(case))
    for k in case.ks:
        got = _full_masks(case, [r["topk"]["masks"]["base", case.name, k] for r in results])
        expected = topk_mask(list(case.tensors), k, base=bases, backend="torch")
        for i, (g, e) in enumerate(zip(got, expected, strict=True)):
            mismatch = int((g != e).sum())
            assert mismatch == 0, f"{case.name} k={k} tensor {i}: {mismatch} entries differ from single-process"
    for k in case.indices_ks:
        expected = topk_mask(list(case.tensors), k, base=bases, output="indices", backend="torch")
        for i, replicated in enumerate(case.replicated):
            parts = [r["topk"]["indices"]["base", case.name, k][i] for r in results]
            got = parts[0] if replicated else torch.cat(parts)
            assert torch.equal(got, expected[i]), f"{case.name} k={k} tensor {i}"


@pytest.mark.parametrize("case", topk_cases(), ids=lambda c: c.name)
def test_indices_are_global_flat_and_sorted(world, case):
    _, results = world
    for k in case.indices_ks:
        expected = topk_mask(list(case.tensors), k, output="indices", backend="torch")
        for i, replicated in enumerate(case.replicated):
            parts = [r["topk"]["indices"][case.name, k][i] for r in results]
            got = parts[0] if replicated else torch.cat(parts)
            assert got.dtype == torch.int64 and torch.equal(got, expected[i]), f"{case.name} k={k} tensor {i}"


def test_communication_is_a_few_kib_independent_of_size(world):
    world_size, results = world
    traffic = results[0]["topk"]["traffic"]
    for case in topk_cases():
        passes = passes_needed([t.dtype for t in case.tensors])
        bound = passes * RADIX * 8 + HEADER_BYTES + 8 * len(case.tensors) + 8 * world_size
        for k in case.ks:
            calls, nbytes = traffic[case.name, k]
            assert nbytes <= bound, f"{case.name} k={k}: {nbytes} bytes > {bound}"
            assert calls <= passes + 2
            assert all(r["topk"]["traffic"][case.name, k] == (calls, nbytes) for r in results)
    # all ties: 4 histogram passes (the first carries the NaN count and the agreement terms), tie totals, tie prefix
    assert HEADER_BYTES == 8 * (1 + 6 * 4)
    assert traffic["all_zero", 5] == (6, 4 * RADIX * 8 + HEADER_BYTES + 2 * 8 + world_size * 8)
    assert traffic["all_zero", 0] == (1, RADIX * 8 + HEADER_BYTES), "k = 0 costs one first pass, its histogram empty"
    assert traffic["bf16_only", 40][0] <= 2 + 2, "bf16 keys resolve in two histogram passes"


@pytest.mark.parametrize(
    ("call", "error", "words"),
    [
        ("nan_on_one_rank", "ValueError", "NaN"),
        ("nan_k0", "ValueError", "NaN"),
        ("plain_mixed", "TypeError", "plain"),
        ("shard_dim1", "ValueError", "Shard(0)"),
        ("k_too_large", "ValueError", "out of range"),
        ("int_dtype", "TypeError", "dtype"),
        ("bad_output", "ValueError", "output"),
        ("plain_base", "TypeError", "plain"),
        ("base_placement", "ValueError", "placement"),
    ],
)
def test_bad_input_raises_on_every_rank(world, call, error, words):
    _, results = world
    for rank, r in enumerate(results):
        kind, message = r["topk"]["errors"][call]
        assert kind == error and words in message, f"rank {rank}: {kind}: {message}"


def test_deftx_ops_topk_mask_dispatches_dtensors(world):
    _, results = world
    via_ops = results[0]["topk"]["via_ops"]
    if isinstance(via_ops, str):
        pytest.skip(f"deftx.ops.topk_mask does not dispatch DTensors yet ({via_ops[:100]})")
    case = topk_cases()[1]
    expected = topk_mask(list(case.tensors), 47, backend="torch")
    for g, e in zip(_full_masks(case, [r["topk"]["via_ops"] for r in results]), expected, strict=True):
        assert torch.equal(g, e)


def test_deftx_ops_topk_mask_dispatches_dtensors_with_bases(world):
    _, results = world
    case = topk_cases()[1]
    expected = topk_mask(list(case.tensors), 47, base=list(topk_bases(case)), backend="torch")
    for g, e in zip(_full_masks(case, [r["topk"]["via_ops_base"] for r in results]), expected, strict=True):
        assert torch.equal(g, e)


def test_a_dtensor_call_works_without_importing_deftx_distributed():
    """``deftx.ops`` does not import ``deftx.distributed``: the first DTensor call loads the handler."""
    code = textwrap.dedent(
        """
        import os, socket, sys
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1")
        import torch
        import torch.distributed as dist
        from torch.distributed.tensor import DTensor, Shard, distribute_tensor, init_device_mesh
        from deftx.ops import topk_mask
        assert "deftx.distributed" not in sys.modules
        dist.init_process_group("gloo")
        x = torch.randn(8, 4, generator=torch.Generator().manual_seed(0))
        (mask,) = topk_mask([distribute_tensor(x, init_device_mesh("cpu", (1,)), [Shard(0)])], 5)
        assert isinstance(mask, DTensor) and torch.equal(mask.to_local(), topk_mask([x], 5)[0])
        dist.destroy_process_group()
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def _disagreeing_call(rank: int, world: int, case: str) -> tuple[str, str]:
    """One sharded top-k whose k, or whose tensors, differ between rank 0 and the others: the error this
    rank raised."""
    from torch.distributed.tensor import Shard, distribute_tensor, init_device_mesh

    from deftx.distributed.topk import topk_mask_dtensor

    mesh = init_device_mesh("cpu", (world,))

    def shard(t: torch.Tensor):
        return distribute_tensor(t, mesh, [Shard(0)], src_data_rank=None)

    x = torch.arange(1.0, 21.0).view(10, 2)
    first = rank == 0
    calls = {
        "k 5 / 6": lambda: topk_mask_dtensor([shard(x)], 5 if first else 6),
        "k 0 / 6": lambda: topk_mask_dtensor([shard(x)], 0 if first else 6),
        "k 20 / 6": lambda: topk_mask_dtensor([shard(x)], 20 if first else 6),
        "1 / 2 tensors": lambda: topk_mask_dtensor([shard(x)] if first else [shard(x), shard(torch.ones(4))], 6),
        "fp32 / bf16": lambda: topk_mask_dtensor([shard(x if first else x.bfloat16())], 6),
    }
    try:
        calls[case]()
    except Exception as err:  # recorded; the test asserts on type and message
        return (type(err).__name__, str(err))
    return ("no error", "")


@pytest.mark.parametrize("case", ["k 5 / 6", "k 0 / 6", "k 20 / 6", "1 / 2 tensors", "fp32 / bf16"])
def test_ranks_that_disagree_on_k_or_the_tensors_all_raise(tmp_path, case):
    """A rank that asks for another k (or holds another list) must not silently take its share of another
    top-k: every rank raises, naming the disagreement, instead of masks whose union has neither k entries."""
    from tests.distributed.world import run_world

    for rank, (kind, message) in enumerate(run_world(_disagreeing_call, 2, tmp_path, case, timeout_s=30)):
        assert kind == "ValueError" and "disagree" in message, f"rank {rank}: {kind}: {message}"
