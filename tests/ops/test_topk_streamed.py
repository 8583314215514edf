"""select_streamed: the global top-k of |θ1 − θ0| read chunk by chunk from safetensors checkpoints
on disk equals topk_mask on the materialised differences, entry for entry and tie for tie."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from safetensors.torch import save_file

from deftx.ops import topk_mask
from deftx.ops.topk_streamed import (
    bin_of_rank,
    checkpoint_files,
    checkpoint_tensors,
    join_per_tensor,
    select_streamed,
)

SHAPES = {"b.weight": (37, 11), "a.bias": (13,), "c.empty": (0,), "d.big": (5, 200), "e.odd": (3, 7, 9)}


def make_pair(dtype: torch.dtype, seed: int = 0, ties: bool = False) -> tuple[dict, dict]:
    """θ1, θ0: name -> tensor; with ``ties`` the differences are small integers (crowded ties)."""
    gen = torch.Generator().manual_seed(seed)
    theta0 = {n: torch.randn(s, generator=gen).to(dtype) for n, s in SHAPES.items()}
    if ties:
        return {n: (t.float() + torch.randint(-3, 4, t.shape, generator=gen)).to(dtype)
                for n, t in theta0.items()}, theta0
    return {n: (t.float() + 0.01 * torch.randn(t.shape, generator=gen)).to(dtype) for n, t in theta0.items()}, theta0


def write_sharded(tensors: dict, folder, shards: int) -> None:
    """``tensors`` split over ``shards`` files with an HF-style index."""
    folder.mkdir()
    names = list(tensors)
    weight_map = {}
    for s in range(shards):
        part = names[s::shards]
        file = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n].contiguous() for n in part}, str(folder / file))
        weight_map |= dict.fromkeys(part, file)
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def expected(theta1: dict, theta0: dict, names: list[str], k: int) -> dict[str, list[int]]:
    diffs = [theta1[n].float() - theta0[n].float() for n in names]
    return {n: idx.tolist() for n, idx in zip(names, topk_mask(diffs, k, output="indices"), strict=True)}


def got(selection) -> dict[str, list[int]]:
    return {n: idx.tolist() for n, idx in selection.indices.items()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("ties", [False, True], ids=["spread", "ties"])
def test_matches_topk_mask_on_the_differences(tmp_path, dtype, ties):
    theta1, theta0 = make_pair(dtype, ties=ties)
    write_sharded(theta1, tmp_path / "t1", 2)
    write_sharded(theta0, tmp_path / "t0", 3)
    names = sorted(SHAPES)
    total = sum(t.numel() for t in theta1.values())
    for k in sorted({0, 1, 97, total // 3, total - 1, total}):
        # chunks of 64 entries: "d.big" (1000) and "b.weight" (407) span several
        selection = select_streamed(tmp_path / "t1", tmp_path / "t0", k, chunk_elements=64)
        assert got(selection) == expected(theta1, theta0, names, k), f"k={k}"
        assert sum(len(i) for i in got(selection).values()) == k
        assert selection.numel == total and selection.full_passes == (1 if k == 0 else 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_crowded_threshold_bin_takes_a_third_pass_and_the_same_entries(tmp_path, dtype):
    theta1, theta0 = make_pair(dtype, seed=3, ties=True)
    save_file(theta1, str(tmp_path / "t1.safetensors"))
    save_file(theta0, str(tmp_path / "t0.safetensors"))
    names = sorted(SHAPES)
    for k in (1, 500, 1608, 1609):
        selection = select_streamed(tmp_path / "t1.safetensors", tmp_path / "t0.safetensors", k,
                                    chunk_elements=100, candidate_capacity=0)
        assert selection.full_passes == 3 and selection.candidates > 0
        assert got(selection) == expected(theta1, theta0, names, k), f"k={k}"


def test_names_set_the_order_and_the_tensors_ranked(tmp_path):
    # equal differences everywhere: the tie rule alone decides, by position in `names`
    theta0 = {n: torch.zeros(s) for n, s in SHAPES.items()}
    theta1 = {n: torch.ones(s) for n, s in SHAPES.items()}
    save_file(theta1, str(tmp_path / "t1.safetensors"))
    save_file(theta0, str(tmp_path / "t0.safetensors"))
    names = ["e.odd", "a.bias"]
    selection = select_streamed(tmp_path / "t1.safetensors", tmp_path / "t0.safetensors", 190, names=names)
    assert list(selection.indices) == names
    assert got(selection) == {"e.odd": list(range(189)), "a.bias": [0]}
    assert selection.bytes_read == 2 * 2 * 4 * (189 + 13)


def test_bytes_read_count_every_pass_and_memory_stays_in_chunks(tmp_path):
    theta1, theta0 = make_pair(torch.bfloat16)
    save_file(theta1, str(tmp_path / "t1.safetensors"))
    save_file(theta0, str(tmp_path / "t0.safetensors"))
    total = sum(t.numel() for t in theta1.values())
    selection = select_streamed(tmp_path / "t1.safetensors", tmp_path / "t0.safetensors", 50, chunk_elements=7)
    assert selection.full_passes == 2 and selection.bytes_read == 2 * total * 2 * 2


def test_inf_ranks_first_and_nan_is_refused(tmp_path):
    theta0 = {"x": torch.zeros(4), "y": torch.zeros(3)}
    save_file(theta0, str(tmp_path / "t0.safetensors"))
    save_file({"x": torch.tensor([1.0, float("-inf"), 2.0, 0.0]), "y": torch.tensor([3.0, 0.0, 0.0])},
              str(tmp_path / "t1.safetensors"))
    selection = select_streamed(tmp_path / "t1.safetensors", tmp_path / "t0.safetensors", 2)
    assert got(selection) == {"x": [1], "y": [0]}
    save_file({"x": torch.zeros(4), "y": torch.tensor([0.0, -float("nan"), 1.0])}, str(tmp_path / "t1.safetensors"))
    for k in (0, 3):
        with pytest.raises(ValueError, match="'y' minus its base contains NaN"):
            select_streamed(tmp_path / "t1.safetensors", tmp_path / "t0.safetensors", k)


def test_mismatches_and_bad_arguments_are_refused(tmp_path):
    save_file({"x": torch.zeros(4), "n": torch.zeros(2, dtype=torch.int64)}, str(tmp_path / "t1.safetensors"))
    save_file({"x": torch.zeros(2, 2)}, str(tmp_path / "t0.safetensors"))
    t1, t0 = tmp_path / "t1.safetensors", tmp_path / "t0.safetensors"
    with pytest.raises(ValueError, match=r"'x' is F32 \(4,\) in θ1, F32 \(2, 2\) in θ0"):
        select_streamed(t1, t0, 1)
    with pytest.raises(TypeError, match="'n' has dtype I64"):
        select_streamed(t1, t0, 1, names=["n"])
    with pytest.raises(KeyError, match="'y' is missing from θ1"):
        select_streamed(t1, t0, 1, names=["y"])
    save_file({"x": torch.zeros(4)}, str(tmp_path / "t0.safetensors"))
    with pytest.raises(ValueError, match="k"):
        select_streamed(t1, t0, 5)
    with pytest.raises(ValueError, match="chunk_elements"):
        select_streamed(t1, t0, 1, chunk_elements=0)
    with pytest.raises(FileNotFoundError):
        select_streamed(tmp_path / "missing", t0, 1)


def test_a_name_given_twice_is_refused(tmp_path):
    # ranked twice, its two lists of indices would share one key of the result: part of k lost
    save_file({"x": torch.arange(4.0), "y": torch.ones(3)}, str(tmp_path / "t1.safetensors"))
    save_file({"x": torch.zeros(4), "y": torch.zeros(3)}, str(tmp_path / "t0.safetensors"))
    with pytest.raises(ValueError, match="names lists 'x' more than once"):
        select_streamed(tmp_path / "t1.safetensors", tmp_path / "t0.safetensors", 6, names=["x", "y", "x"])


def test_names_as_one_string_is_refused(tmp_path):
    # iterated, "ba" would rank the tensors "b" then "a", and "a.weight" would ask for a tensor "a"
    save_file({"a": torch.arange(4.0), "b": torch.ones(3), "a.weight": torch.ones(2)}, str(tmp_path / "t1.safetensors"))
    save_file({"a": torch.zeros(4), "b": torch.zeros(3), "a.weight": torch.zeros(2)}, str(tmp_path / "t0.safetensors"))
    for names in ("ba", "a.weight"):
        with pytest.raises(TypeError, match=r"names is one string .*wrap it in \[\.\.\.\]"):
            select_streamed(tmp_path / "t1.safetensors", tmp_path / "t0.safetensors", 1, names=names)


def test_a_chunk_whose_offsets_overflow_int32_is_refused(tmp_path):
    save_file({"x": torch.ones(4)}, str(tmp_path / "t1.safetensors"))
    save_file({"x": torch.zeros(4)}, str(tmp_path / "t0.safetensors"))
    # past 2^31 entries a chunk's offsets would wrap in int32 (checked before any buffer is made)
    with pytest.raises(ValueError, match=r"chunk_elements must be in \[1, 2\^31\]"):
        select_streamed(tmp_path / "t1.safetensors", tmp_path / "t0.safetensors", 2, chunk_elements=2**31 + 1)


def test_checkpoint_files_from_a_file_an_index_or_a_folder(tmp_path):
    tensors = {n: torch.zeros(s) for n, s in SHAPES.items()}
    write_sharded(tensors, tmp_path / "sharded", 2)
    index = tmp_path / "sharded" / "model.safetensors.index.json"
    assert checkpoint_files(tmp_path / "sharded") == checkpoint_files(index)
    assert [f.name for f in checkpoint_files(index)] == ["model-00001-of-00002.safetensors",
                                                         "model-00002-of-00002.safetensors"]
    assert set(checkpoint_tensors(index)) == set(SHAPES)
    (tmp_path / "plain").mkdir()
    save_file({"a": torch.ones(2)}, str(tmp_path / "plain" / "b.safetensors"))
    save_file({"c": torch.ones(2)}, str(tmp_path / "plain" / "a.safetensors"))
    assert [f.name for f in checkpoint_files(tmp_path / "plain")] == ["a.safetensors", "b.safetensors"]
    stored = checkpoint_tensors(tmp_path / "plain")["a"]
    assert (stored.kind, stored.shape, stored.numel) == ("F32", (2,), 2)


def test_bin_of_rank_counts_from_the_top():
    hist = torch.tensor([5, 0, 2, 3], dtype=torch.int64)
    assert bin_of_rank(hist, 1) == (3, 0)
    assert bin_of_rank(hist, 3) == (3, 0)
    assert bin_of_rank(hist, 4) == (2, 3)
    assert bin_of_rank(hist, 6) == (0, 5)
    assert bin_of_rank(hist, 10) == (0, 5)


def test_join_per_tensor_fills_tensors_without_parts():
    parts = [(1, torch.tensor([2, 5])), (1, torch.tensor([9])), (3, torch.tensor([0]))]
    assert [t.tolist() for t in join_per_tensor(5, parts)] == [[], [2, 5, 9], [], [0], []]
    assert [t.dtype for t in join_per_tensor(2, [])] == [torch.int64, torch.int64]


def test_a_header_whose_data_span_is_not_the_shapes_bytes_is_refused(tmp_path):
    """A damaged header giving a tensor a larger shape than its data span: its last entries were read from the
    next tensor's bytes (here "a" of 6 entries would end with "b"'s first 2)."""
    file = tmp_path / "theta.safetensors"
    save_file({"a": torch.arange(4.0), "b": torch.arange(10.0, 14.0)}, str(file))
    raw = file.read_bytes()
    (length,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + length])
    header["a"]["shape"] = [6]
    text = json.dumps(header, separators=(",", ":")).encode().ljust(length)
    assert len(text) == length
    file.write_bytes(raw[:8] + text + raw[8 + length:])
    with pytest.raises(ValueError, match=r"tensor 'a' of shape \[6\] \(F32\) holds 24 bytes, but its data_offsets "
                                         r"span 16: the file's header is damaged"):
        checkpoint_tensors(file)
