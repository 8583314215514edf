"""SASS parsing and classification on hand-written snippets in ``nvdisasm -c`` format."""

from __future__ import annotations

import pytest

from deftx.perf.static.sass import (
    INSTRUCTION_CLASSES,
    Instruction,
    Loop,
    access_bits,
    instruction_class,
    is_float_atomic,
    parse_sass,
)

STREAMING_LOOP = """\
	.target	sm_90a
//--------------------- .text.kernel --------------------------
kernel:
.text.kernel:
        /*0000*/                   LDC R1, c[0x0][0x28] ;
        /*0010*/                   S2R R0, SR_TID.X ;
.L_x_0:
        /*0020*/              @!P0 LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0030*/                   LDG.E R8, desc[UR4][R2.64+0x10] ;
        /*0040*/                   STS.64 [R0], R4 ;
        /*0050*/                   LDS R9, [R0+0x8] ;
        /*0060*/                   ATOMS.POPC.INC.32 RZ, [R9+URZ] ;
        /*0070*/               @P1 BRA `(.L_x_0) ;
        /*0080*/                   REDG.E.ADD.STRONG.GPU desc[UR4][R6.64], R8 ;
        /*0090*/                   STG.E.64 desc[UR4][R10.64], R4 ;
        /*00a0*/                   EXIT ;
.L_x_1:
        /*00b0*/                   BRA `(.L_x_1);
"""

FP16_CAS_LOOP = """\
        /*0490*/                   LDG.E R15, desc[UR4][R12.64] ;
.L_x_5:
        /*04d0*/                   HADD2 R16, R15, R11.H0_H0 ;
        /*04e0*/                   PRMT R16, R15, R14, R16 ;
        /*0520*/                   ATOMG.E.CAS.STRONG.GPU PT, R16, [R12], R15, R16 ;
        /*0540*/                   ISETP.NE.U32.AND P6, PT, R16, R15, PT ;
        /*0550*/                   IMAD.MOV.U32 R15, RZ, RZ, R16 ;
        /*0560*/               @P6 BRA `(.L_x_5) ;
        /*0570*/                   EXIT ;
"""

INTEGER_CAS_LOOP = """\
.L_x_2:
        /*0100*/                   IADD3 R16, R15, 0x1, RZ ;
        /*0110*/                   ATOMG.E.CAS.STRONG.GPU PT, R16, [R12], R15, R16 ;
        /*0120*/                   ISETP.NE.U32.AND P6, PT, R16, R15, PT ;
        /*0130*/               @P6 BRA `(.L_x_2) ;
"""

NESTED_LOOPS = """\
.L_x_outer:
        /*0000*/                   IADD3 R1, R1, 0x1, RZ ;
.L_x_inner:
        /*0010*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0020*/               @P0 BRA `(.L_x_inner) ;
        /*0030*/                   RED.E.ADD.64.STRONG.GPU desc[UR4][R6.64], R8 ;
        /*0040*/               @P1 BRA `(.L_x_outer) ;
        /*0050*/               @P2 BRA `(.L_x_after) ;
        /*0060*/                   NOP ;
.L_x_after:
        /*0070*/                   EXIT ;
"""


def test_parse_fields_predicates_and_labels():
    sass = parse_sass(STREAMING_LOOP)
    assert len(sass.instructions) == 12
    first_load = sass.instructions[2]
    assert first_load == Instruction(0x20, "LDG", ("E", "128"), "R4, desc[UR4][R2.64]", "@!P0")
    assert first_load.mnemonic == "LDG.E.128"
    assert sass.instructions[0].predicate is None
    assert sass.labels == {".L_x_0": 0x20, ".L_x_1": 0xB0}
    assert sass.instructions[7].branch_target == ".L_x_0"
    assert sass.instructions[0].branch_target is None


def test_instruction_without_space_before_semicolon_is_parsed():
    sass = parse_sass("        /*0400*/                   ERRBAR;\n        /*0410*/  NOP ;\n")
    assert [i.opcode for i in sass.instructions] == ["ERRBAR", "NOP"]


@pytest.mark.parametrize(
    ("mnemonic", "expected"),
    [
        ("LDG.E.128", "global_load"),
        ("LDGSTS.E.BYPASS.LTC128B.128", "global_load"),
        ("STG.E.U16", "global_store"),
        ("ATOMG.E.ADD.F32.FTZ.RN.STRONG.GPU", "global_atomic"),
        ("RED.E.ADD.64.STRONG.GPU", "global_atomic"),
        ("REDG.E.ADD.STRONG.GPU", "global_atomic"),
        ("ATOM.E.ADD.STRONG.GPU", "global_atomic"),
        ("LDS.64", "shared_load"),
        ("LDSM.16.M88.4", "shared_load"),
        ("STS.U16", "shared_store"),
        ("ATOMS.POPC.INC.32", "shared_atomic"),
        ("STL.64", "local"),
        ("LDL", "local"),
        ("HMMA.16816.F32.BF16", "mma"),
        ("HGMMA.64x32x16.F32.BF16", "mma"),
        ("FFMA", "other"),
        ("LDC", "other"),
    ],
)
def test_instruction_class(mnemonic, expected):
    opcode, *modifiers = mnemonic.split(".")
    assert instruction_class(Instruction(0, opcode, tuple(modifiers))) == expected


@pytest.mark.parametrize(
    ("mnemonic", "bits"),
    [
        ("LDG.E.128", 128),
        ("LDG.E.64", 64),
        ("LDG.E", 32),
        ("LDG.E.U16", 16),
        ("LDG.E.S8", 8),
        ("LDG.E.EL.U8", 8),
        ("LDGSTS.E.BYPASS.LTC128B.128", 128),
        ("LDGSTS.E.LTC128B", 32),
        ("STG.E.128", 128),
    ],
)
def test_access_bits(mnemonic, bits):
    opcode, *modifiers = mnemonic.split(".")
    assert access_bits(Instruction(0, opcode, tuple(modifiers))) == bits


@pytest.mark.parametrize(
    ("mnemonic", "is_float"),
    [
        ("ATOMG.E.ADD.F32.FTZ.RN.STRONG.GPU", True),
        ("RED.E.ADD.F32.FTZ.RN.STRONG.GPU", True),
        ("REDG.E.ADD.F32.FTZ.RN.STRONG.GPU", True),
        ("ATOMG.E.ADD.F16x2.RN.STRONG.GPU", True),
        ("ATOMG.E.ADD.BF16x2.RN.STRONG.GPU", True),
        ("RED.E.ADD.F64.RN.STRONG.GPU", True),
        ("ATOMG.E.ADD.STRONG.GPU", False),
        ("REDG.E.ADD.STRONG.GPU", False),
        ("RED.E.ADD.64.STRONG.GPU", False),
        ("ATOMG.E.MAX.S32.STRONG.GPU", False),
        ("ATOMG.E.CAS.STRONG.GPU", False),
    ],
)
def test_float_atomic_modifiers(mnemonic, is_float):
    opcode, *modifiers = mnemonic.split(".")
    assert is_float_atomic(Instruction(0, opcode, tuple(modifiers))) is is_float


def test_loops_are_backward_branches_only():
    sass = parse_sass(STREAMING_LOOP)
    assert sass.loops == (Loop(0x20, 0x70),)
    assert sass.innermost_loop(0x30) == Loop(0x20, 0x70)
    assert sass.innermost_loop(0x80) is None


LOOP_FREE_KERNEL = """\
        /*03b0*/                   LDG.E.128 R8, [R4.64] ;
        /*03c0*/                   LDG.E.128 R12, [R4.64+0x800] ;
        /*03d0*/                   IMAD.WIDE R2, R0, R3, c[0x0][0x168] ;
        /*03e0*/                   STG.E.128 [R2.64], R8 ;
        /*03f0*/                   STG.E.128 [R2.64+0x800], R12 ;
        /*0400*/                   EXIT ;
.L_x_1:
        /*0410*/                   BRA `(.L_x_1);
        /*0420*/                   NOP;
"""
"""The end of a loop-free copy kernel as ``nvdisasm -c`` prints it for sm_80 (Triton 3.9): after the
last ``EXIT`` comes the unreachable self-branch nvdisasm shows at the end of every kernel."""


def test_unreachable_self_branch_after_exit_is_not_a_loop():
    sass = parse_sass(LOOP_FREE_KERNEL)
    assert sass.loops == ()
    assert sass.summary()["loops"] == 0


def test_predicated_branch_to_itself_is_a_loop():
    sass = parse_sass(".L_x_3:\n        /*0100*/               @P0 BRA `(.L_x_3) ;\n        /*0110*/  EXIT ;\n")
    assert sass.loops == (Loop(0x100, 0x100),)


def test_innermost_loop_of_nested_loops():
    sass = parse_sass(NESTED_LOOPS)
    inner, outer = Loop(0x10, 0x20), Loop(0x0, 0x40)
    assert sass.loops == (inner, outer)
    assert sass.innermost_loop(0x10) == inner
    assert sass.innermost_loop(0x30) == outer
    assert sass.innermost_loop(0x50) is None


def test_class_and_width_counts():
    sass = parse_sass(STREAMING_LOOP)
    counts = sass.class_counts()
    assert set(counts) == set(INSTRUCTION_CLASSES)
    assert counts["global_load"] == 2 and counts["global_store"] == 1 and counts["global_atomic"] == 1
    assert counts["shared_load"] == 1 and counts["shared_store"] == 1 and counts["shared_atomic"] == 1
    assert counts["other"] == 12 - 7
    assert sass.width_counts("global_load") == {128: 1, 32: 1}
    assert list(sass.width_counts("global_load")) == [128, 32]
    assert sass.summary() == {
        "total": 12,
        "classes": counts,
        "global_load_bits": {"128": 1, "32": 1},
        "global_store_bits": {"64": 1},
        "global_atomics": {"float": 0, "integer": 1},
        "mma": {},
        "loops": 1,
        "vector_loop_path": 6,
    }


def test_unknown_class_raises():
    with pytest.raises(KeyError, match="unknown instruction class"):
        parse_sass(STREAMING_LOOP).of_class("texture")


def test_cas_retry_loop_with_float_math_is_an_emulated_float_atomic():
    sass = parse_sass(FP16_CAS_LOOP)
    cas = sass.of_class("global_atomic")
    assert len(cas) == 1 and not is_float_atomic(cas[0])
    assert sass.emulated_float_atomics == (cas[0],)
    assert sass.float_atomics() == cas
    assert sass.summary()["global_atomics"] == {"float": 1, "integer": 0}


def test_integer_cas_loop_is_not_a_float_atomic():
    sass = parse_sass(INTEGER_CAS_LOOP)
    assert sass.emulated_float_atomics == ()
    assert sass.float_atomics() == []
    assert sass.summary()["global_atomics"] == {"float": 0, "integer": 1}


@pytest.mark.parametrize("text", ["", "\t.target\tsm_90a\n.L_x_0:\n", "        /* 0x000fe40000000f00 */\n"],
                         ids=["empty", "header-only", "encoding-only"])
def test_text_without_instructions_is_an_error(text):
    with pytest.raises(ValueError, match="no SASS instruction"):
        parse_sass(text)


@pytest.mark.parametrize(
    "line",
    ["        /* 0010 */                   ATOMG.E.ADD.F32.FTZ.RN.STRONG.GPU PT, RZ, desc[UR4][R4.64], R13 ;",
     "        /*0010*/                   @P0 ATOMG.E.ADD.F32.FTZ.RN.STRONG.GPU PT, RZ, desc[UR4][R4.64], R13",
     "        /*0010*/                   @Q0 RED.E.ADD.F32.FTZ.RN.STRONG.GPU desc[UR4][R2.64], R5 ;"],
    ids=["spaced-address", "no-semicolon", "unknown-predicate"],
)
def test_instruction_line_it_cannot_read_is_an_error_not_skipped(line):
    with pytest.raises(ValueError, match="line 2 is an instruction this parser cannot read"):
        parse_sass(f"        /*0000*/                   LDG.E R4, desc[UR4][R2.64] ;\n{line}\n")


def test_cuobjdump_encoding_comments_are_not_instructions():
    text = ("        /*0000*/                   MOV R1, c[0x0][0x28] ;        /* 0x00000a0000017a02 */\n"
            "                                                                 /* 0x000fe40000000f00 */\n")
    assert [i.opcode for i in parse_sass(text).instructions] == ["MOV"]


TILE_LOOP = """\
.L_x_2:
        /*0100*/                   IADD3 R2, R2, 0x400, RZ ;
        /*0110*/                   ISETP.GT.U32.AND P0, PT, R2, R9, PT ;
        /*0120*/               @P0 BRA `(.L_x_0) ;
        /*0130*/                   LDG.E.128 R4, desc[UR4][R2.64] ;
        /*0140*/                   BRA `(.L_x_1) ;
.L_x_0:
        /*0150*/                   LDG.E R4, desc[UR4][R2.64] ;
        /*0160*/              @!P1 LDG.E R5, desc[UR4][R2.64+0x4] ;
        /*0170*/                   LDG.E R6, desc[UR4][R2.64+0x8] ;
.L_x_1:
        /*0180*/                   LOP3.LUT R4, R4, 0x7fffffff, RZ, 0xc0, !PT ;
        /*0190*/                   ISETP.NE.AND P2, PT, R4, RZ, PT ;
        /*01a0*/              @P2 BRA `(.L_x_3) ;
        /*01b0*/                   IADD3 R7, R7, 0x1, RZ ;
.L_x_3:
        /*01c0*/                   ISETP.NE.AND P1, PT, R2, R8, PT ;
        /*01d0*/               @P1 BRA `(.L_x_2) ;
        /*01e0*/                   EXIT ;
"""


def test_vector_path_skips_the_masked_block_and_counts_one_iteration():
    sass = parse_sass(TILE_LOOP)
    # 0x100-0x120 (3), the vector block 0x130-0x140 (2), then 0x180-0x1a0 (3), the fall-through
    # 0x1b0 (1) and 0x1c0-0x1d0 (2): the masked block 0x150-0x170 is not counted
    assert sass.vector_path_length() == 11


def test_vector_path_without_a_vector_load_in_a_loop_is_none():
    assert parse_sass(FP16_CAS_LOOP).vector_path_length() is None
    assert parse_sass(TILE_LOOP.replace("LDG.E.128", "LDG.E")).vector_path_length() is None
