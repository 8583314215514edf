"""Theoretical occupancy against hand-computed cases (64K registers in 4 sub-partitions,
256-register warp allocation, 128-byte shared allocation plus 1 KB reserved per block)."""

from __future__ import annotations

import pytest

from deftx.perf.static.occupancy import registers_per_warp, shared_per_block, theoretical_occupancy
from deftx.perf.targets import A100_80GB_SXM, H100_SXM


@pytest.mark.parametrize(
    ("registers", "expected"),
    [(0, 0), (1, 256), (8, 256), (9, 512), (32, 1024), (128, 4096), (255, 8192)],
)
def test_registers_per_warp_rounds_to_256(registers, expected):
    assert registers_per_warp(H100_SXM, registers) == expected


@pytest.mark.parametrize(("user", "expected"), [(0, 1024), (1, 1152), (128, 1152), (49152, 50176)])
def test_shared_per_block_adds_reservation_and_rounds_to_128(user, expected):
    assert shared_per_block(A100_80GB_SXM, user) == expected


@pytest.mark.parametrize(
    ("target", "warps", "registers", "shared", "blocks", "limiter"),
    [
        # 32 regs: 16 warps per sub-partition -> 64 warps; the 64-warp limit binds first
        (H100_SXM, 4, 32, 0, 16, "warps"),
        # 128 regs: 4096 per warp -> 4 per sub-partition -> 16 warps -> 4 blocks of 4
        (H100_SXM, 4, 128, 0, 4, "registers"),
        # 255 regs -> 8192 per warp -> 2 per sub-partition -> 8 warps -> 2 blocks of 4
        (H100_SXM, 4, 255, 0, 2, "registers"),
        # 64 regs, 8 warps: 2048 per warp -> 8 per sub-partition -> 32 warps -> 4 blocks
        (H100_SXM, 8, 64, 0, 4, "registers"),
        # 48 KB + 1 KB reserved = 50176 B; 164 KB / 50176 = 3 blocks on A100
        (A100_80GB_SXM, 4, 32, 49152, 3, "shared_memory"),
        # the same on H100: 228 KB / 50176 = 4 blocks
        (H100_SXM, 4, 32, 49152, 4, "shared_memory"),
        # 1 warp, 16 regs, no shared: 64 blocks by warps, 32 by the block limit
        (H100_SXM, 1, 16, 0, 32, "blocks"),
        # the largest block allowed on A100 fits once
        (A100_80GB_SXM, 4, 32, 163 * 1024, 1, "shared_memory"),
    ],
)
def test_hand_computed_occupancy(target, warps, registers, shared, blocks, limiter):
    occ = theoretical_occupancy(target, num_warps=warps, registers_per_thread=registers, user_shared_bytes=shared)
    assert occ.blocks_per_sm == blocks
    assert occ.warps_per_sm == blocks * warps
    assert occ.limiter == limiter
    assert occ.fraction == pytest.approx(blocks * warps / 64)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"num_warps": 0, "registers_per_thread": 32, "user_shared_bytes": 0}, "num_warps"),
        ({"num_warps": 65, "registers_per_thread": 32, "user_shared_bytes": 0}, "num_warps"),
        # 64 warps fill an SM's 2048 threads but are past the 1024 threads a block may have
        ({"num_warps": 64, "registers_per_thread": 32, "user_shared_bytes": 0}, r"num_warps must be in \[1, 32\]"),
        ({"num_warps": 4, "registers_per_thread": 256, "user_shared_bytes": 0}, "registers_per_thread"),
        ({"num_warps": 4, "registers_per_thread": -1, "user_shared_bytes": 0}, "registers_per_thread"),
        ({"num_warps": 4, "registers_per_thread": 32, "user_shared_bytes": 163 * 1024 + 1}, "user_shared_bytes"),
        ({"num_warps": 32, "registers_per_thread": 255, "user_shared_bytes": 0}, "cannot be resident"),
    ],
)
def test_invalid_blocks_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        theoretical_occupancy(A100_80GB_SXM, **kwargs)
