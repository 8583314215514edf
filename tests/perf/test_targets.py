"""Target facts: the datasheet and programming-guide values the models rely on."""

from __future__ import annotations

import pytest

from deftx.perf.targets import A100_80GB_SXM, H100_SXM, H200_SXM, TARGETS, get_target


def test_datasheet_bandwidth_and_peaks():
    assert H100_SXM.hbm_bytes_per_s == 3.35e12 and A100_80GB_SXM.hbm_bytes_per_s == 2039e9
    assert H100_SXM.peak_flops["fp32"] == 67e12 and A100_80GB_SXM.peak_flops["fp32"] == 19.5e12
    assert H100_SXM.peak_flops["bf16"] == 989.4e12 and A100_80GB_SXM.peak_flops["bf16"] == 312e12
    assert H100_SXM.peak_flops["tf32"] == 494.7e12 and A100_80GB_SXM.peak_flops["tf32"] == 156e12


def test_sm_limits():
    for target in (H100_SXM, A100_80GB_SXM):
        assert target.registers_per_sm == 65536 and target.max_threads_per_sm == 2048
        assert target.max_warps_per_sm * target.warp_size == target.max_threads_per_sm
        assert target.reserved_shared_per_block == 1024
    assert (A100_80GB_SXM.max_shared_per_block, H100_SXM.max_shared_per_block) == (163 * 1024, 227 * 1024)
    assert (A100_80GB_SXM.shared_per_sm, H100_SXM.shared_per_sm) == (164 * 1024, 228 * 1024)
    assert (A100_80GB_SXM.sm_count, H100_SXM.sm_count) == (108, 132)


@pytest.mark.parametrize(("name", "arch"), [("sm_90", "sm_90"), ("90", "sm_90"), ("SM80", "sm_80"), ("sm_80", "sm_80")])
def test_get_target_accepts_spellings(name, arch):
    assert get_target(name).arch == arch
    assert get_target(name) is TARGETS[arch]


def test_h200_is_h100s_sm_with_its_own_bandwidth():
    assert H200_SXM.hbm_bytes_per_s == 4.8e12 and H200_SXM.arch == "sm_90"
    assert H200_SXM.peak_flops == H100_SXM.peak_flops and H200_SXM.sm_count == H100_SXM.sm_count
    assert get_target("H200") is H200_SXM and get_target("h100") is H100_SXM and get_target("a100") is A100_80GB_SXM
    assert TARGETS["sm_90"] is H100_SXM, "sm_90 compiles and profiles as the H100"


@pytest.mark.parametrize("name", ["sm_70", "h300", ""])
def test_unknown_target_raises(name):
    with pytest.raises(ValueError, match="unknown target"):
        get_target(name)
