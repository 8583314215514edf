"""Theoretical occupancy: resident warps per SM from registers, shared memory and threads.

For a block of ``W`` warps using ``R`` registers per thread and ``S`` bytes of shared
memory, the resident blocks per SM are the minimum of four limits:

* warps: ``floor(max_warps_per_sm / W)``;
* blocks: ``max_blocks_per_sm``;
* registers: a warp is given ``ceil(32 R / 256) * 256`` registers, from one of the SM's
  4 sub-partitions of ``registers_per_sm / 4``; so ``4 * floor((registers_per_sm / 4) /
  registers_per_warp)`` warps fit, i.e. ``floor(that / W)`` blocks;
* shared memory: a block is given ``ceil((S + reserved) / 128) * 128`` bytes, so
  ``floor(shared_per_sm / that)`` blocks fit (the 1 KB reservation counts even for a
  block that uses no shared memory).

Resident warps = blocks * W; occupancy = warps / max_warps_per_sm. This is the
theoretical figure (what the hardware allows), not the achieved one.
"""

from __future__ import annotations

from dataclasses import dataclass

from deftx.perf.targets import Target

LIMITERS: tuple[str, ...] = ("warps", "blocks", "registers", "shared_memory")


@dataclass(frozen=True)
class Occupancy:
    """Resident blocks / warps per SM and the resource that limits them.

    ``limiter`` is one of :data:`LIMITERS` (the first in that order among equal limits).
    """

    blocks_per_sm: int
    warps_per_sm: int
    max_warps_per_sm: int
    limiter: str

    @property
    def fraction(self) -> float:
        """Resident warps / the SM's maximum, in [0, 1]."""
        return self.warps_per_sm / self.max_warps_per_sm


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def registers_per_warp(target: Target, registers_per_thread: int) -> int:
    """Registers allocated to one warp: ``ceil(32 R / unit) * unit``."""
    return _round_up(registers_per_thread * target.warp_size, target.register_allocation_unit)


def shared_per_block(target: Target, user_shared_bytes: int) -> int:
    """Shared bytes allocated to one block: user bytes plus the reservation, rounded up."""
    return _round_up(user_shared_bytes + target.reserved_shared_per_block, target.shared_allocation_unit)


def theoretical_occupancy(
    target: Target, *, num_warps: int, registers_per_thread: int, user_shared_bytes: int
) -> Occupancy:
    """Resident blocks and warps per SM of a kernel on ``target``.

    Args:
        num_warps: warps per block (1..32).
        registers_per_thread: registers per thread from the cubin (0..255).
        user_shared_bytes: static + dynamic shared bytes per block, without the system
            reservation (see :func:`deftx.perf.static.compile.user_shared_bytes`).

    Raises:
        ValueError: a block that cannot be resident at all (too many threads, registers
            or shared bytes), or negative inputs.
    """
    if num_warps < 1 or num_warps * target.warp_size > target.max_threads_per_block:
        raise ValueError(f"num_warps must be in [1, {target.max_threads_per_block // target.warp_size}] "
                         f"({target.max_threads_per_block} threads per block), got {num_warps}")
    if not 0 <= registers_per_thread <= target.max_registers_per_thread:
        raise ValueError(
            f"registers_per_thread must be in [0, {target.max_registers_per_thread}], got {registers_per_thread}"
        )
    if not 0 <= user_shared_bytes <= target.max_shared_per_block:
        raise ValueError(
            f"user_shared_bytes must be in [0, {target.max_shared_per_block}] on {target.arch}, "
            f"got {user_shared_bytes}"
        )
    per_warp = registers_per_warp(target, registers_per_thread)
    if per_warp:
        warps_by_registers = target.sub_partitions * (
            (target.registers_per_sm // target.sub_partitions) // per_warp
        )
    else:
        warps_by_registers = target.max_warps_per_sm
    limits = {
        "warps": target.max_warps_per_sm // num_warps,
        "blocks": target.max_blocks_per_sm,
        "registers": warps_by_registers // num_warps,
        "shared_memory": target.shared_per_sm // shared_per_block(target, user_shared_bytes),
    }
    blocks = min(limits.values())
    if blocks == 0:
        raise ValueError(f"a block of {num_warps} warps with {registers_per_thread} registers/thread "
                         f"cannot be resident on {target.arch}")
    limiter = next(name for name in LIMITERS if limits[name] == blocks)
    return Occupancy(blocks, blocks * num_warps, target.max_warps_per_sm, limiter)
