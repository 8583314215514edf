"""SparseDiffs on sharded parameters: apply / revert per shard, and one ordinary file from a sharded run.

Apply
    A SparseDiff holds global flat row-major indices. A ``Shard(0)`` parameter's local
    block covers one contiguous global flat range ``[lo, hi)`` (its rows), so each rank
    takes the slice of every diff's sorted indices inside its range (two binary searches,
    no communication), shifts it to local indices and calls :func:`deftx.ops.scatter_add_`
    on its local tensors with ``save=True``: the same arithmetic, entry for entry, as the
    single-process apply, and revert writes the saved values back (bit-exact).
    Replicated DTensors and plain tensors (DDP) are applied in full on every rank. Dense
    tensors shipped with a diff replace the local rows.

Load
    :func:`load_diff_for_shards` reads from a SparseDiff file only the entries that fall in
    this rank's shards (a binary search on the stored sorted indices, then one slice read
    per parameter), so a rank reads O(k / ranks) of the file, not all of it.

Save
    :func:`gather_sparse_diff` builds, on one rank, the ordinary SparseDiff of ``tuned −
    base`` at the selected entries: each rank contributes the (global index, value) pairs of
    its shards, gathered as two padded buffers (int64 and fp32); nothing dense is gathered
    except the diff's dense tensors (e.g. a task head). The pieces are read by name position,
    so the all-reduce of the entry counts also checks that every rank lists the same sharded
    names in the same order (and names the same ``dst``).
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed.fsdp import FSDPModule
from torch.distributed.tensor import DTensor, Replicate

from deftx.distributed import comm
from deftx.distributed.topk import local_shard, mesh_of
from deftx.models.parameters import named_parameter_map
from deftx.sft import ParamInfo, SparseDiff
from deftx.sft.apply import (
    AppliedDiffs,
    check_compatible,
    check_scales,
    handle_rounding_loss,
    model_lock,
    plan_application,
    plan_writes,
    record_application,
    resolve_parameter,
    warn_overwritten,
    write_planned,
)
from deftx.sft.format import (
    DENSE_PREFIX,
    INDEX_PREFIX,
    VALUE_PREFIX,
    SparseDiffFormatError,
    parse_metadata,
)
from deftx.train.params import local_tensor


def flat_range(param: torch.Tensor) -> tuple[int, int]:
    """Global flat range ``[lo, hi)`` of the entries this rank stores (all of a plain tensor).

    Raises:
        ValueError: a DTensor not placed Shard(0) / Replicate on a 1-D mesh.
    """
    if isinstance(param, DTensor):
        mesh_of([param], "deftx.distributed")
        shard = local_shard(param)
        return shard.start, shard.start + shard.flat.numel()
    return 0, param.numel()


def is_sharded(param: torch.Tensor) -> bool:
    """True for a DTensor whose entries are split over ranks (Shard(0))."""
    return isinstance(param, DTensor) and not isinstance(param.placements[0], Replicate)


def slice_range(indices: torch.Tensor, values: torch.Tensor, lo: int, hi: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Entries of sorted global ``indices`` in ``[lo, hi)``, shifted to local indices, with their values."""
    bounds = torch.searchsorted(indices, torch.tensor([lo, hi], dtype=indices.dtype, device=indices.device))
    begin, end = int(bounds[0]), int(bounds[1])
    return indices[begin:end] - lo, values[begin:end]


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def check_fsdp_meshes(model: nn.Module) -> None:
    """Refuse an FSDP2 ``model`` sharded over a 1-D mesh out of rank order, whose DTensors mislabel the
    rows each rank holds (:func:`~deftx.distributed.comm.check_fsdp_mesh`): every shard would get another
    shard's entries. A model without FSDP2 units is not checked (DTensors made by ``distribute_tensor`` say
    their rows right on any mesh)."""
    if not any(isinstance(module, FSDPModule) for module in model.modules()):
        return
    meshes = {id(param.device_mesh): param.device_mesh for param in model.parameters() if isinstance(param, DTensor)}
    for mesh in meshes.values():
        comm.check_fsdp_mesh(mesh)


def reshard_fsdp(model: nn.Module) -> None:
    """Put every FSDP2 unit of ``model`` back in its sharded state.

    After a forward without backward (e.g. evaluation), FSDP2 keeps the root unit's
    parameters unsharded: ``named_parameters`` then yields plain full tensors that are
    discarded at the next reshard, so edits must go to the sharded DTensors instead.
    """
    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()


def _local_rows(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """The rows of a full tensor that this rank stores for ``param``."""
    if not is_sharded(param):
        return full
    lo, hi = flat_range(param)
    return full.reshape(-1)[lo:hi].view(local_tensor(param).shape)


class ShardedAppliedDiffs(AppliedDiffs):
    """Handle of diffs applied to sharded parameters; :meth:`revert` restores every local bit.

    It is on the model's stack like an :func:`deftx.sft.apply_diffs` handle (:func:`deftx.sft.apply.applied`):
    diffs applied after it are reverted first. ``rounding_loss``: per diff, model parameter ->
    entries of this rank's shard whose change rounded away in the parameter's dtype (see
    :mod:`deftx.sft.apply`).
    """


def apply_diffs_sharded(
    model: nn.Module,
    diffs: Sequence[SparseDiff],
    scales: Sequence[float] | None = None,
    *,
    strict_dtype: bool = True,
    check_base: bool = True,
    backend: str | None = None,
) -> ShardedAppliedDiffs:
    """Add ``diffs`` (times ``scales``) onto this rank's part of ``model``'s parameters, in one launch.

    ``model``: an FSDP2 module (DTensor parameters; its units are resharded first), a
    DDP-wrapped or a plain module. No communication; every rank calls it with the same
    diffs. Validated before anything is written; diffs are applied as by
    :func:`deftx.sft.apply_diffs` (one after another in effect), and entries of this rank
    lost to rounding are warned about with this rank's counts. Returns a handle whose
    ``revert()`` restores the exact original bits; reverts go in reverse order of the applies
    (as for :func:`deftx.sft.apply_diffs`, on the same stack).
    """
    model = _unwrap(model)
    check_fsdp_meshes(model)
    diffs = list(diffs)
    scales = check_scales(scales, diffs, "apply_diffs_sharded")
    with model_lock(model):
        handle = _write_local(model, diffs, scales, strict_dtype, check_base, backend)
        record_application(model, handle)
        return handle


def _write_local(model: nn.Module, diffs: list[SparseDiff], scales: list[float], strict_dtype: bool,
                 check_base: bool, backend: str | None) -> ShardedAppliedDiffs:
    """Check ``diffs`` against ``model`` (unwrapped) and write them onto this rank's shards."""
    reshard_fsdp(model)
    params = named_parameter_map(model)
    plan = plan_application(diffs, check_compatible(model, params, diffs, strict_dtype, check_base))
    targets = [local_tensor(params[n]) for n in plan.sparse]
    for name, target in zip(plan.sparse, targets, strict=True):
        if not target.is_contiguous():
            raise ValueError(f"apply_diffs_sharded: the local shard of {name!r} is not contiguous")
    ranges = [flat_range(params[n]) for n in plan.sparse]

    def rows(name: str, tensor: torch.Tensor) -> torch.Tensor:
        return _local_rows(tensor, params[name])

    def localize(slot: int, idx: torch.Tensor, val: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return slice_range(idx, val, *ranges[slot])

    writes = plan_writes(diffs, plan, targets, scales, localize, rows)
    handle_rounding_loss(writes.rounding_loss, diffs, {n: params[n].dtype for n in plan.sparse}, "warn", stacklevel=4)
    warn_overwritten(plan.overwritten, stacklevel=4)
    saved, dense_saved = write_planned(diffs, writes, {n: local_tensor(params[n]) for n in plan.dense}, scales,
                                       backend, rows)
    return ShardedAppliedDiffs(model, diffs, writes, saved, dense_saved)


def _first_at_least(stored, length: int, value: int) -> int:
    """Position of the first stored index >= ``value`` (binary search with one-element slice reads)."""
    low, high = 0, length
    while low < high:
        middle = (low + high) // 2
        if int(stored[middle : middle + 1][0]) < value:
            low = middle + 1
        else:
            high = middle
    return low


STORED_INDEX_DTYPES = ("I32", "I64")
"""safetensors dtypes of a SparseDiff file's indices (its values are F32)."""


def _stored_pair(handle: Any, name: str, source: str) -> tuple[Any, Any]:
    """The (indices, values) slices of sparse parameter ``name`` in an open SparseDiff file, checked as
    :meth:`SparseDiff.load` checks them: 1-D int32 / int64 indices, as many float32 values.

    Raises:
        SparseDiffFormatError: another dtype, rank or length.
    """
    stored, stored_values = handle.get_slice(INDEX_PREFIX + name), handle.get_slice(VALUE_PREFIX + name)
    if stored.get_dtype() not in STORED_INDEX_DTYPES or stored_values.get_dtype() != "F32":
        raise SparseDiffFormatError(f"{source}: indices / values of {name!r} are {stored.get_dtype()} / "
                                    f"{stored_values.get_dtype()}, expected int32 or int64 / float32")
    if len(stored.get_shape()) != 1 or stored_values.get_shape() != stored.get_shape():
        raise SparseDiffFormatError(f"{source}: {name!r} has indices of shape {stored.get_shape()} and values of "
                                    f"shape {stored_values.get_shape()}")
    return stored, stored_values


def load_diff_for_shards(path: str | Path, model: nn.Module) -> SparseDiff:
    """The entries of the SparseDiff file at ``path`` that fall in this rank's shards of ``model``.

    The result is an ordinary SparseDiff (global flat indices, the file's shapes and
    metadata) holding only this rank's entries, ready for :func:`apply_diffs_sharded`.
    Dense tensors (small task heads) are read whole. Reads O(entries in the shard) of the
    file plus ``log2(nnz)`` single-index reads per parameter, all through one open file.

    Validated as by ``SparseDiff.load`` except for the file's sha256 digest, which would
    take reading all of it: check a file of unknown provenance once with ``SparseDiff.load``.

    Raises:
        FileNotFoundError: no such file.
        SparseDiffFormatError: anything else wrong with the file.
        ValueError: an FSDP2 ``model`` on a mesh out of rank order (:func:`check_fsdp_meshes`).
    """
    from safetensors import SafetensorError, safe_open

    model = _unwrap(model)
    check_fsdp_meshes(model)
    reshard_fsdp(model)
    params = named_parameter_map(model)
    source = str(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"SparseDiff file not found: {source}")
    try:
        with safe_open(source, framework="pt") as handle:
            meta = parse_metadata(dict(handle.metadata() or {}), source)
            keys = set(handle.keys())
            indices, values, dense = {}, {}, {}
            for key in sorted(keys):
                prefix, slash, name = key.partition("/")
                if prefix + slash == DENSE_PREFIX and name:
                    dense[name] = handle.get_tensor(key)
                elif prefix + slash == INDEX_PREFIX and name:
                    if VALUE_PREFIX + name not in keys or name not in meta.params:
                        raise SparseDiffFormatError(
                            f"{source}: parameter {name!r} lacks its values or its shape record"
                        )
                    lo, hi = flat_range(params[resolve_parameter(model, params, name)])
                    stored, stored_values = _stored_pair(handle, name, source)
                    length = stored.get_shape()[0]
                    begin, end = _first_at_least(stored, length, lo), _first_at_least(stored, length, hi)
                    indices[name] = stored[begin:end]
                    values[name] = stored_values[begin:end]
                elif prefix + slash != VALUE_PREFIX or not name:
                    raise SparseDiffFormatError(f"{source}: unexpected tensor {key!r}")
                elif INDEX_PREFIX + name not in keys:
                    raise SparseDiffFormatError(f"{source}: parameter {name!r} lacks its indices")
        return SparseDiff(indices, values, {n: meta.params[n] for n in indices}, dense, **meta.keywords())
    except (SafetensorError, OSError, RuntimeError) as err:
        raise SparseDiffFormatError(f"{source}: corrupt or truncated SparseDiff file ({err})") from err
    except (ValueError, TypeError, IndexError) as err:
        if isinstance(err, SparseDiffFormatError):
            raise
        raise SparseDiffFormatError(f"{source}: {err}") from err


def local_selection(selection: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """Global flat indices (int64, sorted) of the selected entries this rank stores of ``param``.

    ``selection``: a bool mask shaped like ``param`` (a DTensor placed like it, or a full
    mask: a plain or replicated tensor, of which this rank's rows are read), or int64 global
    flat indices of this rank's entries (the ``output="indices"`` form of the sharded top-k).
    """
    lo, hi = flat_range(param)
    if selection.dtype == torch.bool:
        mask = local_tensor(selection) if is_sharded(selection) else _local_rows(local_tensor(selection), param)
        return mask.reshape(-1).nonzero().flatten() + lo
    idx = local_tensor(selection).to(torch.int64)
    if idx.numel() and (int(idx.min()) < lo or int(idx.max()) >= hi):
        raise IndexError(f"selected index outside this rank's range [{lo}, {hi})")
    return idx


def values_at(tensor: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """fp32 (n,) values of ``tensor`` at global flat ``indices`` (int64 (n,)), all entries this rank
    stores: rows of a Shard(0) DTensor, any entry of a replicated DTensor or a plain tensor (a θ0
    on the CPU, say), on the device of ``indices``."""
    lo, _ = flat_range(tensor)
    local = local_tensor(tensor).reshape(-1)
    return local[(indices - lo).to(local.device)].float().to(indices.device)


def layout_owner(name: str, base: torch.Tensor, tuned: torch.Tensor, selection: torch.Tensor) -> torch.Tensor:
    """The tensor whose rows decide which entries of ``name`` this rank contributes to a gathered
    diff: the first Shard(0) DTensor of ``tuned``, ``selection``, ``base`` (``tuned`` when none is).

    Raises:
        ValueError: ``base`` or a bool ``selection`` shaped unlike ``tuned``, or two of them
            sharded over different rows.
    """
    if base.shape != tuned.shape or (selection.dtype == torch.bool and selection.shape != tuned.shape):
        shapes = [tuple(t.shape) for t in (base, tuned, selection)]
        raise ValueError(f"gather_sparse_diff: {name!r} has base, tuned and selection shapes {shapes}")
    sharded = [t for t in (tuned, selection, base) if is_sharded(t)]
    if any(flat_range(t) != flat_range(sharded[0]) for t in sharded[1:]):
        raise ValueError(f"gather_sparse_diff: {name!r} is sharded differently in base, tuned and selection")
    return sharded[0] if sharded else tuned


def selected_entries(
    base: torch.Tensor, tuned: torch.Tensor, selection: torch.Tensor, owner: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's part of one parameter's diff: int64 (n,) sorted global flat indices of the entries
    of ``owner`` that ``selection`` selects, and fp32 (n,) ``f32(tuned) − f32(base)`` there."""
    idx = local_selection(selection, owner)
    return idx, values_at(tuned, idx) - values_at(base, idx)


def row_block_order(tensor: DTensor, group: dist.ProcessGroup) -> list[int]:
    """The ranks of ``group`` holding the row blocks of the Shard(0) ``tensor``, in row order: its mesh's
    coordinate order, which need not be the group's rank order (a mesh may list its ranks in any order)."""
    return comm.mesh_order(tensor.device_mesh.mesh, group)


def _gather_rows(tensor: DTensor, dst: int, group: dist.ProcessGroup, what: str) -> torch.Tensor | None:
    """The full tensor from the row blocks of the Shard(0) ``tensor`` (joined in row order) on ``dst``;
    None elsewhere."""
    local = local_tensor(tensor)
    rows = comm.per_rank_values(local.shape[0], group, f"{what} rows", local.device)
    padded = local.new_zeros((int(rows.max()), *local.shape[1:]))
    padded[: local.shape[0]] = local
    parts = comm.gather_to(padded, dst, group, what)
    if parts is None:
        return None
    return torch.cat([parts[r][: int(rows[r])] for r in row_block_order(tensor, group)])


def names_fingerprint(sparse: Sequence[str], dense: Sequence[str]) -> int:
    """A CRC-32 of the names, in order, of the sharded sparse and dense tensors a rank gathers (the same in
    every process: Python's ``hash`` of a str is not)."""
    return zlib.crc32("\0".join(["sparse", *sparse, "dense", *dense]).encode())


def agreed_entry_counts(
    entries: int, agreed: Mapping[str, int], group: dist.ProcessGroup, device: torch.device
) -> torch.Tensor:
    """int64 (world,) every rank's count of diff ``entries``, in one all-reduce that also checks that every
    rank gave the same ``agreed`` values (:func:`~deftx.distributed.comm.agreement_terms`).

    Raises:
        ValueError: on every rank, when they differ: the pieces of one rank would be read as another's names.
    """
    world = dist.get_world_size(group)
    buffer = torch.tensor([0] * world + comm.agreement_terms(agreed.values()), dtype=torch.int64, device=device)
    buffer[dist.get_rank(group)] = entries
    comm.all_reduce_sum(buffer, group, "diff entry counts")
    comm.raise_unless_agreed(
        buffer[world:].tolist(), world, agreed,
        "gather_sparse_diff: the ranks disagree on the sharded tensors, their order or dst",
        "pass the same names, in the same order, and the same dst on every rank",
    )
    return buffer[:world]


def _gather_entries(
    pieces: list[tuple[torch.Tensor, torch.Tensor]],
    orders: list[list[int]],
    sizes: torch.Tensor,
    dst: int,
    group: dist.ProcessGroup,
    device: torch.device,
) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
    """Per tensor, the ranks' (sorted global indices, values) joined in the order of its row blocks
    (``orders``: per tensor, the group ranks in row order, :func:`row_block_order`), on ``dst``;
    ``sizes``: every rank's entry count (:func:`agreed_entry_counts`)."""
    counts = torch.tensor([idx.numel() for idx, _ in pieces], dtype=torch.int64, device=device)
    width = int(sizes.max())
    index_buffer = torch.zeros(len(pieces) + width, dtype=torch.int64, device=device)
    value_buffer = torch.zeros(width, dtype=torch.float32, device=device)
    index_buffer[: len(pieces)] = counts
    if pieces:
        index_buffer[len(pieces) : len(pieces) + int(counts.sum())] = torch.cat([idx for idx, _ in pieces])
        value_buffer[: int(counts.sum())] = torch.cat([val for _, val in pieces])
    all_indices = comm.gather_to(index_buffer, dst, group, "diff indices")
    all_values = comm.gather_to(value_buffer, dst, group, "diff values")
    if all_indices is None or all_values is None:
        return None
    by_rank: list[list[tuple[torch.Tensor, torch.Tensor]]] = []
    for idx_buf, val_buf in zip(all_indices, all_values, strict=True):
        offset, parts, indices = 0, [], idx_buf[len(pieces) :]
        for count in idx_buf[: len(pieces)].tolist():
            parts.append((indices[offset : offset + count], val_buf[offset : offset + count]))
            offset += count
        by_rank.append(parts)
    return [
        (torch.cat([by_rank[r][t][0] for r in order]).cpu(), torch.cat([by_rank[r][t][1] for r in order]).cpu())
        for t, order in enumerate(orders)
    ]


def gather_sparse_diff(
    base: Mapping[str, torch.Tensor],
    tuned: Mapping[str, torch.Tensor],
    selection: Mapping[str, torch.Tensor],
    dense: Mapping[str, torch.Tensor] | None = None,
    *,
    dst: int = 0,
    group: dist.ProcessGroup | None = None,
    base_model: str | None = None,
    method: str = "sparse",
    k: int | None = None,
    settings: Mapping[str, Any] | None = None,
) -> SparseDiff | None:
    """The ordinary SparseDiff of ``tuned − base`` at ``selection``, built on group rank ``dst``.

    Collective over ``group`` (default: the world). Tensors may be Shard(0) DTensors (only
    the sparse (index, value) pieces travel), replicated DTensors or plain tensors, each
    read by its own layout: a parameter with any of base, tuned and selection sharded is
    gathered from the rows each rank holds (:func:`layout_owner`), one with none sharded is
    taken from ``dst`` itself. A bool selection may be a mask DTensor or a full mask; int64
    indices are those of this rank's rows (all of them when nothing is sharded). Values are
    ``f32(tuned) − f32(base)`` as in :meth:`SparseDiff.from_states`, so the file equals the
    single-process one. Dense tensors are copied, as by :meth:`SparseDiff.from_states`.

    Returns:
        The SparseDiff on ``dst``, None on every other rank.

    Raises:
        KeyError: a selected name missing from base or tuned.
        ValueError: shapes that differ, or tensors of one name sharded over different rows; on every
            rank, ranks that list the sharded names in another order or name another ``dst``.
    """
    group = group or dist.group.WORLD
    names = list(selection)
    missing = [n for n in names if n not in base or n not in tuned]
    if missing:
        raise KeyError(f"gather_sparse_diff: {missing[0]!r} missing from base or tuned")
    owners = {n: layout_owner(n, base[n], tuned[n], selection[n]) for n in names}
    sharded = [n for n in names if is_sharded(owners[n])]
    sharded_dense = [n for n, t in (dense or {}).items() if is_sharded(t)]
    device = local_tensor(tuned[names[0]]).device if names else torch.device("cpu")
    pieces = [selected_entries(base[n], tuned[n], selection[n], owners[n]) for n in sharded]
    orders = [row_block_order(owners[n], group) for n in sharded]
    if sharded or sharded_dense:
        fingerprint = names_fingerprint(sharded, sharded_dense)
        agreed = {"names": fingerprint, "sparse": len(sharded), "dense": len(sharded_dense), "dst": dst}
        sizes = agreed_entry_counts(sum(idx.numel() for idx, _ in pieces), agreed, group, device)
    gathered = _gather_entries(pieces, orders, sizes, dst, group, device) if sharded else []
    dense_full = {}
    for name, tensor in (dense or {}).items():
        full = (
            _gather_rows(tensor, dst, group, "diff dense")
            if is_sharded(tensor)
            else local_tensor(tensor).clone()
        )
        dense_full[name] = full
    if dist.get_rank(group) != dst:
        return None
    indices = {name: idx for name, (idx, _) in zip(sharded, gathered, strict=True)}
    values = {name: val for name, (_, val) in zip(sharded, gathered, strict=True)}
    for name in names:
        if name not in indices:
            idx, val = selected_entries(base[name], tuned[name], selection[name], owners[name])
            indices[name], values[name] = idx.cpu(), val.cpu()
    params = {n: ParamInfo(tuple(tuned[n].shape), tuned[n].dtype) for n in names}
    return SparseDiff(indices, values, params, dense_full, base_model=base_model, method=method, k=k, settings=settings)


def save_sharded_diff(path: str | Path, *args: Any, dst: int = 0, **kwargs: Any) -> SparseDiff | None:
    """:func:`gather_sparse_diff`, written to ``path`` by rank ``dst``; every rank waits for the file.

    Raises:
        what building the SparseDiff (which only ``dst`` does, after the collectives) or
        :meth:`SparseDiff.save` raised, on ``dst``; RuntimeError naming it on every other rank (which
        would otherwise wait for the file until the process group's timeout, or go on as if it were
        written); an error every rank raised in the gather, on every rank.
    """
    diff, failure = None, None
    try:
        diff = gather_sparse_diff(*args, dst=dst, **kwargs)
        if diff is not None:
            diff.save(path)
    except Exception as err:  # told to every rank below, then raised here
        failure = err
    outcome = [None if failure is None else f"{type(failure).__name__}: {failure}"]
    dist.broadcast_object_list(outcome, group_src=dst, group=kwargs.get("group"))
    if failure is not None:
        raise failure
    if outcome[0] is not None:
        raise RuntimeError(f"save_sharded_diff: rank {dst} could not write {path} ({outcome[0]})")
    return diff
