"""The resource and promise checks on hand-made builds (SASS snippets, no compiler)."""

from __future__ import annotations

import dataclasses

import pytest

from deftx.perf.static.checks import CHECKS, check_build
from deftx.perf.static.compile import KernelBuild
from deftx.perf.targets import A100_80GB_SXM, H100_SXM

BLOCK_LOCAL = """\
.L_x_0:
        /*0000*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0010*/                   ATOMS.POPC.INC.32 RZ, [R4+URZ] ;
        /*0020*/               @P0 BRA `(.L_x_0) ;
        /*0030*/                   REDG.E.ADD.STRONG.GPU desc[UR4][R6.64], R8 ;
        /*0040*/                   REDG.E.ADD.STRONG.GPU desc[UR4][R6.64+0x200], R9 ;
        /*0050*/                   EXIT ;
"""

PER_BLOCK_FLUSH = """\
.L_x_outer:
        /*0000*/                   IADD3 R1, R1, 0x1, RZ ;
.L_x_inner:
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0020*/                   ATOMS.POPC.INC.32 RZ, [R4+URZ] ;
        /*0030*/               @P0 BRA `(.L_x_inner) ;
        /*0040*/                   RED.E.ADD.64.STRONG.GPU desc[UR4][R6.64], R8 ;
        /*0050*/               @P1 BRA `(.L_x_outer) ;
        /*0060*/                   EXIT ;
"""

PER_ELEMENT = """\
.L_x_0:
        /*0000*/                   LDG.E R4, desc[UR4][R2.64] ;
        /*0010*/                   ATOMG.E.ADD.STRONG.GPU PT, RZ, desc[UR4][R4.64], R9 ;
        /*0020*/               @P0 BRA `(.L_x_0) ;
        /*0030*/                   EXIT ;
"""

PER_ELEMENT_CAS = """\
.L_x_0:
        /*0000*/                   LDG.E R4, desc[UR4][R2.64] ;
.L_x_1:
        /*0010*/                   IADD3 R16, R15, 0x1, RZ ;
        /*0020*/                   ATOMG.E.CAS.STRONG.GPU PT, R16, [R12], R15, R16 ;
        /*0030*/               @P6 BRA `(.L_x_1) ;
        /*0040*/               @P0 BRA `(.L_x_0) ;
        /*0050*/                   EXIT ;
"""

FLOAT_ATOMIC = "        /*0000*/                   ATOMG.E.ADD.F32.FTZ.RN.STRONG.GPU PT, RZ, desc[UR4][R4.64], R13 ;\n"
SPILL = "        /*0000*/  STL [R1+0x5ac], R16 ;\n        /*0010*/  LDL R3, [R1+0x5ac] ;\n"
HMMA = "        /*0000*/                   HMMA.16816.F32.BF16 R24, R44, R68, R24 ;\n"
HGMMA = "        /*0000*/                   HGMMA.64x32x16.F32.BF16 R24, R40, gdesc[UR20].tnspB, R24 ;\n"


NO_MEMORY = "        /*0000*/                   EXIT ;\n"


def make_build(sass: str = NO_MEMORY, *, arch: str = "sm_90", promises: tuple[str, ...] = (), **changes) -> KernelBuild:
    build = KernelBuild(
        name="k", module="m", function="k", arch=arch, num_warps=4, num_stages=1, promises=promises,
        constexprs={}, registers=32, stack_bytes=0, local_bytes=0, static_shared_bytes=0,
        dynamic_shared_bytes=0, histogram_bins=None, sass_text=sass,
    )
    return dataclasses.replace(build, **changes)


def checks_of(build: KernelBuild) -> list[str]:
    return [v.check for v in check_build(build)]


def test_clean_build_passes():
    assert check_build(make_build(BLOCK_LOCAL)) == []


@pytest.mark.parametrize(
    ("changes", "sass"),
    [({"stack_bytes": 8}, NO_MEMORY), ({"local_bytes": 16}, NO_MEMORY), ({}, SPILL)],
    ids=["stack", "local", "ldl-stl"],
)
def test_spill_detected_from_cubin_or_sass(changes, sass):
    violations = check_build(make_build(sass, **changes))
    assert [v.check for v in violations] == ["spill"]
    assert "local memory" in violations[0].message


@pytest.mark.parametrize(
    ("target", "static", "dynamic", "ok"),
    [
        (A100_80GB_SXM, 0, 163 * 1024, True),
        (A100_80GB_SXM, 0, 163 * 1024 + 1, False),
        (A100_80GB_SXM, 1024, 163 * 1024, False),
        # sm_90 cubins carry the 1 KB system reservation in their static size: not user memory
        (H100_SXM, 1024, 227 * 1024, True),
        (H100_SXM, 1024, 227 * 1024 + 1, False),
        (H100_SXM, 0, 227 * 1024 + 1, False),
    ],
)
def test_shared_memory_limit_per_block(target, static, dynamic, ok):
    build = make_build(arch=target.arch, static_shared_bytes=static, dynamic_shared_bytes=dynamic)
    assert ("shared_memory" not in checks_of(build)) is ok


@pytest.mark.parametrize(
    ("sass", "flagged"),
    [(FLOAT_ATOMIC, True), (BLOCK_LOCAL, False), (PER_ELEMENT_CAS, False),
     ("        /*0000*/  RED.E.ADD.F32.FTZ.RN.STRONG.GPU desc[UR4][R2.64], R5 ;\n", True)],
)
def test_no_float_atomics(sass, flagged):
    assert ("no_float_atomics" in checks_of(make_build(sass, promises=("no_float_atomics",)))) is flagged


@pytest.mark.parametrize(
    ("sass", "bins", "warps", "flagged"),
    [
        (BLOCK_LOCAL, 256, 4, False),  # 2 atomics x 128 threads = 256 <= 4 x 256
        (PER_BLOCK_FLUSH, 256, 4, False),  # flush in the outer loop, loads in the inner one
        (PER_ELEMENT, 256, 4, True),  # atomic in the loop of the loads
        (PER_ELEMENT_CAS, 256, 4, True),  # CAS retry loop nested in the streaming loop
        (BLOCK_LOCAL, 16, 4, True),  # 256 atomic lanes for 16 bins: more than one flush
        (BLOCK_LOCAL, 64, 4, False),  # exactly 4 x bins
        (BLOCK_LOCAL, 64, 8, True),
        (BLOCK_LOCAL, None, 4, True),  # no bin count: cannot be verified
    ],
)
def test_block_local_histogram(sass, bins, warps, flagged):
    build = make_build(sass, promises=("block_local_histogram",), histogram_bins=bins, num_warps=warps)
    assert ("block_local_histogram" in checks_of(build)) is flagged


def test_block_local_histogram_messages_say_why():
    per_element = check_build(make_build(PER_ELEMENT, promises=("block_local_histogram",), histogram_bins=256))
    assert "inside the loop that streams the global loads" in per_element[0].message
    unknown = check_build(make_build(BLOCK_LOCAL, promises=("block_local_histogram",)))
    assert "no histogram size declared" in unknown[0].message


@pytest.mark.parametrize(
    ("sass", "flagged"),
    [
        ("        /*0000*/  LDG.E.128 R4, desc[UR4][R2.64] ;\n", False),
        ("        /*0000*/  LDGSTS.E.BYPASS.LTC128B.128 [R3], desc[UR4][R4.64] ;\n", False),
        ("        /*0000*/  LDG.E.64 R4, desc[UR4][R2.64] ;\n", True),
        ("        /*0000*/  STG.E.128 desc[UR4][R2.64], R4 ;\n", True),
        (NO_MEMORY, True),
    ],
)
def test_vectorized_loads(sass, flagged):
    assert ("vectorized_loads" in checks_of(make_build(sass, promises=("vectorized_loads",)))) is flagged


@pytest.mark.parametrize(
    ("sass", "arch", "flagged"),
    [(HMMA, "sm_80", False), (HGMMA, "sm_80", True), (HMMA, "sm_90", False), (HGMMA, "sm_90", False),
     ("        /*0000*/  FFMA R1, R2, R3, R1 ;\n", "sm_90", True)],
)
def test_tensor_cores(sass, arch, flagged):
    assert ("tensor_cores" in checks_of(make_build(sass, arch=arch, promises=("tensor_cores",)))) is flagged


@pytest.mark.parametrize("sass", ["", FLOAT_ATOMIC.replace("/*0000*/", "/* 0000 */")], ids=["empty", "unreadable"])
def test_sass_that_cannot_be_parsed_fails_the_check_instead_of_passing_it(sass):
    build = make_build(sass, promises=("no_float_atomics", "block_local_histogram"), histogram_bins=256)
    with pytest.raises(ValueError, match="SASS"):
        check_build(build)


def test_unknown_promise_is_reported():
    violations = check_build(make_build(promises=("fast",)))
    assert [v.check for v in violations] == ["promises"] and "'fast'" in violations[0].message
    assert set(CHECKS) >= {"spill", "shared_memory", "promises"}
