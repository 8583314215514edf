"""Collectives with communication accounting: every call is counted, with its payload bytes.

The sharded ops of :mod:`deftx.distributed` talk to other ranks only through the
functions here, so a :class:`CommLedger` opened with :func:`count_communication` sees
every collective they issue::

    with count_communication() as ledger:
        masks = topk_mask_dtensor(scores, k)
    print(ledger.report())

Bytes are *payload bytes per rank*: the size of the buffer this rank hands to the
collective (``all_reduce``: the reduced tensor; ``gather``: what this rank sends;
``all_gather``: this rank's input). What a network moves to realise it depends on the
algorithm; :func:`ring_all_reduce_wire_bytes` gives the usual ring model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.distributed as dist

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh

_LEDGERS: list[CommLedger] = []


@dataclass
class CollectiveCount:
    """Calls and payload bytes of one (collective, purpose) pair."""

    op: str
    what: str
    calls: int = 0
    bytes: int = 0


class CommLedger:
    """Counts collectives by (op, what): calls and payload bytes per rank."""

    def __init__(self) -> None:
        self.counts: dict[tuple[str, str], CollectiveCount] = {}

    def add(self, op: str, what: str, nbytes: int) -> None:
        """Record one call of ``op`` for ``what`` moving ``nbytes`` of payload."""
        entry = self.counts.setdefault((op, what), CollectiveCount(op, what))
        entry.calls += 1
        entry.bytes += int(nbytes)

    @property
    def calls(self) -> int:
        """Total number of collective calls."""
        return sum(c.calls for c in self.counts.values())

    @property
    def bytes(self) -> int:
        """Total payload bytes over all calls."""
        return sum(c.bytes for c in self.counts.values())

    def report(self) -> str:
        """One line per (op, what), then the total."""
        lines = [f"{c.op:<14} {c.what:<32} calls {c.calls:>4}  bytes {c.bytes:>12,}" for c in self.counts.values()]
        lines.append(f"{'total':<47} calls {self.calls:>4}  bytes {self.bytes:>12,}")
        return "\n".join(lines)


@contextlib.contextmanager
def count_communication() -> Iterator[CommLedger]:
    """Count every collective issued by :mod:`deftx.distributed` inside the block (nestable)."""
    ledger = CommLedger()
    _LEDGERS.append(ledger)
    try:
        yield ledger
    finally:
        _LEDGERS.remove(ledger)


def _record(op: str, what: str, nbytes: int) -> None:
    for ledger in _LEDGERS:
        ledger.add(op, what, nbytes)


def payload_bytes(tensor: torch.Tensor) -> int:
    """Bytes of a dense tensor's elements."""
    return tensor.numel() * tensor.element_size()


def all_reduce_sum(tensor: torch.Tensor, group: dist.ProcessGroup | None, what: str) -> torch.Tensor:
    """In-place sum of ``tensor`` over ``group`` (every rank gets the same bits); returns it."""
    _record("all_reduce", what, payload_bytes(tensor))
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM, group=group)
    return tensor


def gather_to(tensor: torch.Tensor, dst: int, group: dist.ProcessGroup | None, what: str) -> list[torch.Tensor] | None:
    """Gather equal-shaped ``tensor`` from every rank of ``group`` onto group rank ``dst``.

    Returns the list (group rank order) on ``dst``, None elsewhere.
    """
    _record("gather", what, payload_bytes(tensor))
    rank = dist.get_rank(group)
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))] if rank == dst else None
    dist.gather(tensor, parts, group_dst=dst, group=group)
    return parts


def all_gather_equal(tensor: torch.Tensor, group: dist.ProcessGroup | None, what: str) -> list[torch.Tensor]:
    """All-gather equal-shaped ``tensor`` from every rank of ``group`` (group rank order)."""
    _record("all_gather", what, payload_bytes(tensor))
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, tensor, group=group)
    return parts


def per_rank_values(
    value: int, group: dist.ProcessGroup | None, what: str, device: torch.device, slot: int | None = None
) -> torch.Tensor:
    """int64 (world,) holding every rank's ``value`` at its ``slot`` (default: its group rank; one
    all-reduce of a one-hot slot vector). Every rank of ``group`` must give a distinct slot."""
    slots = torch.zeros(dist.get_world_size(group), dtype=torch.int64, device=device)
    slots[dist.get_rank(group) if slot is None else slot] = int(value)
    return all_reduce_sum(slots, group, what)


AGREEMENT_DIGIT_BITS = 21
AGREEMENT_DIGITS = 3
"""A value in [0, 2**63) is compared as three 21-bit digits: a digit's square summed over fewer than 2**21 ranks
fits an int64."""


def agreement_terms(values: Sequence[int]) -> list[int]:
    """int64 terms whose sums over the ranks tell whether every rank holds the same ``values`` (ints in
    [0, 2**63)): each value's 21-bit digits, then their squares (``6 · len(values)`` terms)."""
    mask = (1 << AGREEMENT_DIGIT_BITS) - 1
    digits = [(int(v) >> (AGREEMENT_DIGIT_BITS * i)) & mask for v in values for i in range(AGREEMENT_DIGITS)]
    return digits + [d * d for d in digits]


def all_agree(summed: Sequence[int], world: int) -> bool:
    """Whether the sums over ``world`` ranks of their :func:`agreement_terms` come from equal values on every
    rank: per digit, ``world · Σd² == (Σd)²`` exactly when the ``world`` digits are equal (Cauchy–Schwarz).
    Every rank reads the same sums, so every rank decides the same."""
    half = len(summed) // 2
    return all(
        world * int(squares) == int(total) ** 2 for total, squares in zip(summed[:half], summed[half:], strict=True)
    )


def check_agreement(values: Mapping[str, int], group: dist.ProcessGroup | None, what: str,
                    device: torch.device, label: str) -> None:
    """One int64 all-reduce (``label`` in the ledger) of the :func:`agreement_terms` of ``values`` (ints
    in [0, 2**63)) over ``group``.

    Raises:
        ValueError: on every rank, when the ranks' ``values`` differ (naming ``what`` and this rank's values).
    """
    terms = torch.tensor(agreement_terms(list(values.values())), dtype=torch.int64, device=device)
    all_reduce_sum(terms, group, label)
    raise_unless_agreed(terms.tolist(), dist.get_world_size(group), values, f"{what}: the ranks disagree",
                        "every rank must pass the same values")


def raise_unless_agreed(summed: Sequence[int], world: int, values: Mapping[str, int], disagreement: str,
                        advice: str) -> None:
    """ValueError ``"<disagreement> (this rank: <values>); <advice>"`` when the sums over ``world`` ranks of
    their :func:`agreement_terms` of ``values`` show that the ranks' values differ (:func:`all_agree`)."""
    if not all_agree(summed, world):
        mine = ", ".join(f"{name} {value}" for name, value in values.items())
        raise ValueError(f"{disagreement} (this rank: {mine}); {advice}")


def mesh_order(mesh_ranks: torch.Tensor, group: dist.ProcessGroup) -> list[int]:
    """The ranks of ``group`` in the coordinate order of a 1-D device mesh whose global ranks are
    ``mesh_ranks`` (``DeviceMesh.mesh``): the order of its row blocks, which need not be the group's
    rank order (a mesh may list its ranks in any order)."""
    return [dist.get_group_rank(group, int(r)) for r in mesh_ranks.flatten().tolist()]


def check_fsdp_mesh(mesh: DeviceMesh) -> None:
    """Refuse a 1-D mesh that lists its ranks out of their process group's rank order for FSDP2.

    FSDP2 stores shard ``i`` on group rank ``i`` (``FSDPMeshInfo.shard_mesh_rank``), while its
    DTensors say mesh coordinate ``i`` holds it (``compute_local_shape_and_global_offset``): on
    ``DeviceMesh("cpu", [2, 0, 1])`` global rank 0 holds rows 0-5 of a 16-row weight and its
    DTensor claims rows 6-11, so every read of a shard's rows (selection, diff, ``full_tensor``)
    takes the wrong rows.

    Raises:
        ValueError: such a mesh, naming it and what to use instead.
    """
    if mesh.ndim != 1:
        return
    order = mesh_order(mesh.mesh, mesh.get_group())
    if order != sorted(order):
        raise ValueError(
            f"FSDP2 cannot shard over {mesh}: it lists ranks {mesh.mesh.tolist()} out of ascending order, and "
            "FSDP2 puts shard i on group rank i while its DTensors say mesh coordinate i holds it, so the "
            f"shards' rows would be mislabelled; use a mesh with ascending ranks "
            f"(init_device_mesh({mesh.device_type!r}, ({mesh.size()},)) or DeviceMesh({mesh.device_type!r}, "
            f"{sorted(mesh.mesh.tolist())})), or strategy 'ddp'"
        )


def ring_all_reduce_wire_bytes(payload: int, world: int) -> float:
    """Bytes each rank sends in a ring all-reduce of ``payload`` bytes: ``2 (W-1)/W * payload``."""
    return 2.0 * (world - 1) / world * payload if world > 1 else 0.0
