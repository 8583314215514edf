"""Global magnitude top-k over sharded tensors: one exact threshold from all-reduced histograms.

Inputs are DTensors on one 1-D device mesh, each ``Shard(0)`` (FSDP2's layout, rows split
in ``torch.chunk`` blocks, uneven or empty at the end) or ``Replicate()``. Nothing is
gathered: every rank reads only its local shard.

Keys
    As in the single-process op (:mod:`deftx.kernels.topk`): an entry's key is the fp32 bit
    pattern of ``|x|`` with the sign cleared, read as a non-negative int32 (monotone in
    ``|x|``; ``-0.0 == +0.0``; ``+inf`` largest; fp16/bf16 values are exact fp32 values).
    With a base (a DTensor of the same shape, dtype, mesh and placement) the key is that of
    ``|fl32(f32(x) − f32(base))|``, computed chunk by chunk from the two local shards: the
    difference is never stored whole.

Radix select (8-bit digits, most significant first)
    Pass ``p`` histograms the digit ``(key >> SHIFT_p) & 255`` (``SHIFT = 24, 16, 8, 0``) of
    the local keys whose higher digits equal the threshold prefix found so far. The 256
    counts are summed over ranks with one ``all_reduce`` (2 KiB of int64), and every rank
    derives the same next digit and the same count still to take. bf16 keys have 16 zero low
    bits and fp16 keys 13, so lists of those dtypes stop after 2 and 3 passes. The first
    pass also carries the local NaN count, so a NaN anywhere makes every rank raise, and
    terms that show whether every rank asked for the same k of the same tensors (:data:`AGREED`),
    so ranks that disagree all raise rather than each take its share of another selection.

Ties (the single-process rule, exactly)
    Among entries equal to the threshold key, those lowest in (tensor position, global flat
    index) order are taken. Each rank knows its per-tensor tie counts from its last local
    histogram; one ``all_reduce`` of those counts (8 bytes per tensor) gives every tensor's
    total and hence the one tensor ``t*`` where the take stops part-way. For a ``Shard(0)``
    tensor the global flat order is mesh-coordinate-major (the rank at coordinate r holds one
    contiguous row block, whatever its process-group rank), so one more ``all_reduce`` of every
    rank's tie count in ``t*``, slotted by coordinate (8 bytes per rank), gives each rank the
    exclusive prefix it needs. When the last histogram already shows that every
    entry of the threshold bin is taken, both tie collectives are skipped.

Communication per call: ``passes × 2 KiB + 200 + 8 × tensors + 8 × ranks`` bytes at most (the
200 is the NaN count and the agreement terms, :data:`HEADER_BYTES`), in at most ``passes + 2``
all-reduces, independent of the number of entries; k = 0 or every entry costs one all-reduce
of ``2 KiB + 200`` bytes (the first pass's shape, its histogram zero). Replicated tensors are
counted once (by mesh coordinate 0) and every rank computes their mask in full.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Replicate, Shard
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

from deftx.distributed import comm
from deftx.ops.extensions import register_subclass_handler
from deftx.ops.validation import check_count, check_float_dtype

RADIX_BITS = 8
RADIX = 1 << RADIX_BITS
PASS_SHIFTS: tuple[int, ...] = (24, 16, 8, 0)
ZERO_LOW_KEY_BITS: dict[torch.dtype, int] = {torch.float32: 0, torch.float16: 13, torch.bfloat16: 16}
"""Low key bits that are zero for every value of a dtype (fp16: 10-bit mantissa, bf16: 7-bit)."""
INF_KEY = 0x7F800000
AGREED: tuple[str, ...] = ("k", "entries", "tensors", "passes")
"""What every rank of a call must agree on: k, the total entries, the number of tensors and the radix passes
their dtypes need (checked with the first all-reduce)."""
HEADER_BYTES = 8 * (1 + 6 * len(AGREED))
"""Bytes the first all-reduce carries besides its histogram: the NaN count and the agreement terms."""
CHUNK_ELEMENTS = 1 << 22
"""Local entries processed at once (bounds the temporary key buffer to 16 MiB)."""


@dataclass(frozen=True)
class LocalShard:
    """What one rank holds of one input tensor.

    Attributes:
        flat: the local entries, contiguous, 1-D (any float dtype).
        start: global flat index of ``flat[0]``.
        counted: whether this rank's entries enter the global counts (False for the
            copies of a replicated tensor on mesh coordinates other than 0).
        sharded: True for ``Shard(0)`` (entries split over ranks), False for ``Replicate``.
        base: the local entries of the base, like ``flat``, or None.
    """

    flat: torch.Tensor
    start: int
    counted: bool
    sharded: bool
    base: torch.Tensor | None = None

    def chunks(self) -> Iterator[tuple[int, int]]:
        """Local ``(begin, end)`` ranges of at most :data:`CHUNK_ELEMENTS` entries."""
        numel = self.flat.numel()
        for begin in range(0, numel, CHUNK_ELEMENTS):
            yield begin, min(begin + CHUNK_ELEMENTS, numel)

    def keys(self, begin: int, end: int) -> torch.Tensor:
        """int32 keys of local entries ``[begin, end)`` (a new tensor: callers may modify it)."""
        base = None if self.base is None else self.base[begin:end]
        return magnitude_keys(self.flat[begin:end], base)


def _is_row_shard(placement: object) -> bool:
    return type(placement) is Shard and placement.dim == 0


def mesh_of(tensors: Sequence[DTensor], what: str) -> DeviceMesh:
    """The one 1-D device mesh all ``tensors`` live on; placements must be Shard(0) or Replicate.

    Raises:
        TypeError: a plain tensor among DTensors.
        ValueError: different meshes, a multi-dimensional mesh, or another placement.
    """
    mesh = None
    for i, t in enumerate(tensors):
        if not isinstance(t, DTensor):
            raise TypeError(f"{what}: tensor {i} is a plain {type(t).__name__} among DTensors; pass all or none")
        if mesh is None:
            mesh = t.device_mesh
        elif t.device_mesh != mesh:
            raise ValueError(f"{what}: tensor {i} is on another device mesh than tensor 0")
        if t.device_mesh.ndim != 1:
            raise ValueError(f"{what}: tensor {i} is on a {t.device_mesh.ndim}-D mesh; only 1-D meshes are supported")
        placement = t.placements[0]
        if not (_is_row_shard(placement) or isinstance(placement, Replicate)):
            raise ValueError(f"{what}: tensor {i} has placement {placement}; expected Shard(0) or Replicate()")
    if mesh is None:
        raise ValueError(f"{what}: the list of tensors is empty")
    return mesh


def check_bases(tensors: Sequence[DTensor], bases: Sequence[DTensor | None], what: str) -> None:
    """Every base is None or a DTensor laid out like its tensor: shape, dtype, mesh, placement.

    Raises:
        TypeError: a plain tensor as a base, or another dtype.
        ValueError: another count, shape, mesh or placement.
    """
    if len(bases) != len(tensors):
        raise ValueError(f"{what}: base has {len(bases)} items for {len(tensors)} tensors")
    for i, (t, b) in enumerate(zip(tensors, bases, strict=True)):
        if b is None:
            continue
        if not isinstance(b, DTensor):
            raise TypeError(f"{what}: base {i} is a plain {type(b).__name__} for a DTensor; pass a DTensor")
        if b.dtype != t.dtype:
            raise TypeError(f"{what}: base {i} has dtype {b.dtype}, its tensor {t.dtype}; cast one of them")
        if b.shape != t.shape or b.device_mesh != t.device_mesh or tuple(b.placements) != tuple(t.placements):
            raise ValueError(f"{what}: base {i} must have its tensor's shape, mesh and placement "
                             f"(got {tuple(b.shape)} {b.placements}, tensor {tuple(t.shape)} {t.placements})")


def _local_flat(t: DTensor) -> torch.Tensor:
    with torch.no_grad():
        local = t.to_local().detach()
    return local.contiguous().view(-1)


def local_shard(t: DTensor, base: DTensor | None = None) -> LocalShard:
    """The local part of a Shard(0) / Replicate DTensor on a 1-D mesh (and of its base), with
    its global offset."""
    flat = _local_flat(t)
    local_base = None if base is None else _local_flat(base)
    if isinstance(t.placements[0], Replicate):
        return LocalShard(flat, 0, t.device_mesh.get_local_rank() == 0, False, local_base)
    _, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    row_numel = 1
    for size in t.shape[1:]:
        row_numel *= size
    return LocalShard(flat, int(offset[0]) * row_numel, True, True, local_base)


def magnitude_keys(values: torch.Tensor, base: torch.Tensor | None = None) -> torch.Tensor:
    """int32 keys of ``|values|``, or of ``|fl32(f32(values) − f32(base))|``: the fp32 bit
    pattern with the sign bit cleared (monotone).

    Always a new tensor, so callers may modify it in place.
    """
    if base is None:
        return values.float().abs().view(torch.int32)
    return (values.float() - base.float()).abs_().view(torch.int32)


def passes_needed(dtypes: Sequence[torch.dtype], with_base: bool = False) -> int:
    """Radix passes that resolve every key bit that can be non-zero for these dtypes (all 31
    with a base: the fp32 difference of two bf16 / fp16 values can use every mantissa bit)."""
    low = 0 if with_base else min(ZERO_LOW_KEY_BITS[d] for d in dtypes)
    return sum(1 for shift in PASS_SHIFTS if shift + RADIX_BITS > low)


def _local_histograms(
    shards: Sequence[LocalShard], shift: int, prefix: int, count_nan: bool
) -> tuple[torch.Tensor, int]:
    """(T, 256) int64 per-tensor digit counts of the local keys in the current band, and the
    local NaN count (counted shards only; when ``count_nan``, else 0).

    The band test and the digit are one subtraction: ``(key >> shift) − (prefix >> shift)`` lies
    in [0, 256) exactly for keys whose higher digits equal the prefix; the rest are clamped
    into two overflow bins that are dropped (no compaction of the band's keys).
    """
    device = shards[0].flat.device
    hist = torch.zeros(len(shards), RADIX, dtype=torch.int64, device=device)
    nan = torch.zeros((), dtype=torch.int64, device=device)
    for i, shard in enumerate(shards):
        for begin, end in shard.chunks():
            keys = shard.keys(begin, end)
            if count_nan and shard.counted:
                nan += (keys > INF_KEY).sum()
            keys >>= shift
            keys -= prefix >> shift
            keys.clamp_(-1, RADIX)
            keys += 1
            hist[i] += torch.bincount(keys, minlength=RADIX + 2)[1 : RADIX + 1]
    return hist, int(nan)


def _local_nan_count(shards: Sequence[LocalShard]) -> int:
    return sum(int((s.keys(begin, end) > INF_KEY).sum()) for s in shards if s.counted for begin, end in s.chunks())


def _raise_on_nan(nan_count: int) -> None:
    if nan_count:
        raise ValueError(
            f"topk_mask: the sharded tensors contain {nan_count} NaN value(s); magnitudes of NaN have no order"
        )


@dataclass(frozen=True)
class Threshold:
    """The selection rule every rank derived: keys with ``key >> shift`` above ``level`` are taken,
    and ``ties`` of those equal to it (all of them when ``ties`` is None)."""

    shift: int
    level: int
    ties: int | None
    tie_counts: torch.Tensor
    """(T,) int64 local count of keys at the threshold level per tensor."""


def first_exchange(
    histogram: torch.Tensor, nan_count: int, agreed: dict[str, int], group: dist.ProcessGroup, what: str
) -> torch.Tensor:
    """Sum the first pass's (256,) int64 ``histogram`` over the ranks, with the header: the NaN count and the
    :func:`~deftx.distributed.comm.agreement_terms` of ``agreed`` (:data:`AGREED` of this rank's call).
    Returns the summed histogram.

    Raises:
        ValueError: on every rank, when the ranks' ``agreed`` values differ (each rank would take its share
            of another selection, or the ranks would issue collectives that do not match), or a NaN is held.
    """
    header = histogram.new_tensor([nan_count, *comm.agreement_terms(agreed.values())])
    total = comm.all_reduce_sum(torch.cat([histogram, header]), group, what)
    summed = total[RADIX:].cpu().tolist()
    comm.raise_unless_agreed(
        summed[1:], dist.get_world_size(group), agreed, "topk_mask: the ranks disagree on k or on the tensors",
        "every rank must pass the same k and the same tensors, each its own shards",
    )
    _raise_on_nan(summed[0])
    return total[:RADIX]


def radix_threshold(
    shards: Sequence[LocalShard], k: int, passes: int, group: dist.ProcessGroup, agreed: dict[str, int]
) -> Threshold:
    """Radix-select the k-th largest key over all ranks (1 <= k <= total entries); the first pass checks
    that every rank gave the same ``agreed`` values (:func:`first_exchange`)."""
    counted = torch.tensor([s.counted for s in shards], device=shards[0].flat.device)
    remaining, prefix = k, 0
    for p in range(passes):
        shift = PASS_SHIFTS[p]
        local, nan_count = _local_histograms(shards, shift, prefix, count_nan=p == 0)
        total = local[counted].sum(0)
        if p == 0:
            total = first_exchange(total, nan_count, agreed, group, "topk histogram")
        else:
            comm.all_reduce_sum(total, group, "topk histogram")
        at_or_above = total.flip(0).cumsum(0).flip(0).cpu()
        digit = int((at_or_above >= remaining).nonzero().max())
        remaining -= int(at_or_above[digit]) - int(total[digit])
        prefix |= digit << shift
        if int(total[digit]) == remaining:
            return Threshold(shift, prefix >> shift, None, local[:, digit])
    return Threshold(shift, prefix >> shift, remaining, local[:, digit])


def tie_quotas(
    shards: Sequence[LocalShard], threshold: Threshold, group: dist.ProcessGroup, position: int
) -> list[int | None]:
    """How many of its local threshold-level keys each tensor takes on this rank (None: all).

    ``position``: this rank's mesh coordinate, the place of its row blocks in the global flat
    order (not its rank in ``group``: a mesh may list its ranks in any order).
    """
    if threshold.ties is None:
        return [None] * len(shards)
    counted = torch.tensor([s.counted for s in shards], device=threshold.tie_counts.device)
    totals = comm.all_reduce_sum(threshold.tie_counts * counted, group, "topk tie counts").cpu().tolist()
    quotas: list[int | None] = []
    before = 0
    for i, shard in enumerate(shards):
        wanted = threshold.ties - before
        if wanted >= totals[i]:
            quotas.append(None)
        elif wanted <= 0:
            quotas.append(0)
        elif not shard.sharded:
            quotas.append(wanted)
        else:
            local_count = int(threshold.tie_counts[i])
            per_rank = comm.per_rank_values(local_count, group, "topk tie prefix", threshold.tie_counts.device,
                                            slot=position)
            earlier = int(per_rank[:position].sum())
            quotas.append(max(0, min(local_count, wanted - earlier)))
        before += totals[i]
    return quotas


def _local_mask(shard: LocalShard, threshold: Threshold, quota: int | None) -> torch.Tensor:
    """Bool (local numel,) selection of one local shard."""
    mask = torch.empty(shard.flat.numel(), dtype=torch.bool, device=shard.flat.device)
    taken = 0
    for begin, end in shard.chunks():
        level = shard.keys(begin, end) >> threshold.shift
        out = mask[begin:end]
        if quota is None:
            torch.ge(level, threshold.level, out=out)
            continue
        torch.gt(level, threshold.level, out=out)
        if quota > taken:
            ties = (level == threshold.level).nonzero().flatten()[: quota - taken]
            out[ties] = True
            taken += ties.numel()
    return mask


def sharded_topk_local(
    tensors: Sequence[DTensor], k: int, bases: Sequence[DTensor | None] | None = None
) -> list[torch.Tensor]:
    """Bool local masks (flat, one per tensor) of the global top-k over sharded ``tensors``
    (ranked by ``|x − base|`` where ``bases`` holds one).

    The union over ranks of the local masks (placed at each shard's global offset) equals
    :func:`deftx.ops.topk_mask` on the full tensors, entry for entry.
    """
    mesh = mesh_of(tensors, "topk_mask")
    paired = list(bases) if bases is not None else [None] * len(tensors)
    check_bases(tensors, paired, "topk_mask")
    for i, t in enumerate(tensors):
        check_float_dtype(t, f"topk_mask: tensor {i}")
    check_count(k, sum(t.numel() for t in tensors), "topk_mask")
    group = mesh.get_group()
    shards = [local_shard(t, b) for t, b in zip(tensors, paired, strict=True)]
    total = sum(t.numel() for t in tensors)
    passes = passes_needed([t.dtype for t in tensors], any(b is not None for b in paired))
    agreed = dict(zip(AGREED, (k, total, len(tensors), passes), strict=True))
    if k in (0, total):
        no_histogram = torch.zeros(RADIX, dtype=torch.int64, device=shards[0].flat.device)
        first_exchange(no_histogram, _local_nan_count(shards), agreed, group, "topk NaN check")
        return [torch.full((s.flat.numel(),), k > 0, dtype=torch.bool, device=s.flat.device) for s in shards]
    threshold = radix_threshold(shards, k, passes, group, agreed)
    quotas = tie_quotas(shards, threshold, group, mesh.get_coordinate()[0])
    return [_local_mask(s, threshold, q) for s, q in zip(shards, quotas, strict=True)]


def topk_mask_dtensor(
    tensors: Sequence[DTensor],
    k: int,
    output: Literal["mask", "indices"] = "mask",
    base: Sequence[DTensor | None] | None = None,
) -> list[torch.Tensor]:
    """``deftx.ops.topk_mask`` for DTensors: the k largest ``|x|`` (or ``|x − base|``) over all
    sharded tensors.

    Args:
        tensors: fp32 / bf16 / fp16 DTensors on one 1-D device mesh, each placed
            ``Shard(0)`` or ``Replicate()``. Collective: every rank of the mesh must call it
            with the same tensors (its own shards) and the same ``k``.
        k: entries to select, ``0 <= k <= total global numel``.
        output: ``"mask"``: bool DTensors with the inputs' shapes and placements;
            ``"indices"``: per tensor, a plain int64 1-D tensor of the *global* flat indices
            selected in this rank's shard (sorted; for a replicated tensor, all of them).
        base: None, or per tensor None or a DTensor of its shape, dtype, mesh and placement
            (θ0): the tensor is then ranked by ``|fl32(f32(x) − f32(base))|`` as in
            :func:`deftx.ops.topk_mask`, computed from the local shards chunk by chunk.

    Raises:
        TypeError: plain tensors mixed in, non-floating dtypes, a non-int k, a plain base or
            one of another dtype.
        ValueError: another placement or mesh, k out of range, NaN on any rank (raised on
            every rank), a base of another shape, mesh or placement.
    """
    if output not in ("mask", "indices"):
        raise ValueError(f"topk_mask: output must be 'mask' or 'indices', got {output!r}")
    masks = sharded_topk_local(tensors, k, base)
    if output == "indices":
        return [mask.nonzero().flatten() + local_shard(t).start for mask, t in zip(masks, tensors, strict=True)]
    return [
        DTensor.from_local(
            mask.view(t.to_local().shape),
            t.device_mesh,
            t.placements,
            run_check=False,
            shape=t.shape,
            stride=t.stride(),
        )
        for mask, t in zip(masks, tensors, strict=True)
    ]


register_subclass_handler("topk", DTensor, topk_mask_dtensor)
