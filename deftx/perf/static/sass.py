"""Read SASS (``nvdisasm -c`` output): instructions, their classes, memory widths and loops.

A SASS instruction line looks like::

    /*0160*/              @!P6 LDG.E.128 R8, desc[UR6][R2.64+0x200] ;

an address, an optional predicate, the opcode with dot-separated modifiers, and operands.
Labels (``.L_x_3:``) name the address of the instruction that follows them; branches name
their target as ``BRA `(.L_x_3)``.

Instruction classes (:func:`instruction_class`):

========================  ===============================================================
class                     opcodes
========================  ===============================================================
``global_load``           ``LDG``; ``LDGSTS`` (sm_80+ async copy global -> shared)
``global_store``          ``STG``
``global_atomic``         ``ATOMG``, ``ATOM`` (generic address), ``RED``, ``REDG``
``shared_load``           ``LDS``, ``LDSM`` (matrix load)
``shared_store``          ``STS``, ``STSM``
``shared_atomic``         ``ATOMS``
``local``                 ``LDL``, ``STL`` (register spills, local arrays)
``mma``                   ``HMMA``, ``HGMMA``, ``IMMA``, ``IGMMA``, ``DMMA``, ``BMMA``, ``QGMMA``
``other``                 everything else
========================  ===============================================================

Memory widths (:func:`access_bits`) come from the size modifier: ``.128`` / ``.64``, ``.U8``
/ ``.S8`` (8 bits), ``.U16`` / ``.S16`` (16), none (32). A global atomic is *floating-point*
(:func:`is_float_atomic`) when it carries a float type (``.F32``, ``.F16x2``, ``.BF16x2``,
``.F64``) or float rounding modifiers (``.FTZ``, ``.RN``), e.g. ``ATOMG.E.ADD.F32.FTZ.RN`` or
``RED.E.ADD.F32.FTZ.RN``; ``ATOMG.E.ADD`` / ``RED.E.ADD.64`` are integer atomics. Half and
bfloat16 ``atomic_add`` are emulated with a compare-and-swap retry loop: a ``CAS`` inside a
loop that also does float arithmetic (``HADD2``, ``HFMA2``, ``FADD`` ...) is counted as an
emulated float atomic (:attr:`Sass.emulated_float_atomics`).

Loops (:attr:`Sass.loops`) are the address ranges ``[target, branch]`` of backward branches,
except an unpredicated branch to itself: the unreachable ``BRA`` nvdisasm prints after the last
``EXIT`` of every kernel, which would count one loop in a loop-free kernel.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property

_INSTRUCTION = re.compile(
    r"^\s*/\*(?P<address>[0-9a-fA-F]+)\*/\s+"
    r"(?:(?P<predicate>@!?U?P(?:[0-7]|T))\s+)?"
    r"(?P<mnemonic>[A-Z][A-Z0-9_]*(?:\.[A-Za-z0-9_]+)*)"
    r"\s*(?P<operands>[^;]*?)\s*;"
)
_ADDRESSED = re.compile(r"^\s*/\*\s*[0-9a-fA-F]+\s*\*/")
"""The start of an instruction line in any spacing (``/*0160*/``, ``/* 0160 */``); not an encoding
comment (``/* 0x000fe40000000f00 */``)."""
_LABEL = re.compile(r"^(?P<label>\.L_[A-Za-z0-9_]+):\s*$")
_BRANCH_TARGET = re.compile(r"`\((?P<label>\.L_[A-Za-z0-9_]+)\)")

CLASS_OPCODES: dict[str, frozenset[str]] = {
    "global_load": frozenset({"LDG", "LDGSTS"}),
    "global_store": frozenset({"STG"}),
    "global_atomic": frozenset({"ATOMG", "ATOM", "RED", "REDG"}),
    "shared_load": frozenset({"LDS", "LDSM"}),
    "shared_store": frozenset({"STS", "STSM"}),
    "shared_atomic": frozenset({"ATOMS"}),
    "local": frozenset({"LDL", "STL"}),
    "mma": frozenset({"HMMA", "HGMMA", "IMMA", "IGMMA", "DMMA", "BMMA", "QGMMA"}),
}
INSTRUCTION_CLASSES: tuple[str, ...] = (*CLASS_OPCODES, "other")
_CLASS_OF_OPCODE = {op: cls for cls, ops in CLASS_OPCODES.items() for op in ops}

_WIDTH_MODIFIERS = {"128": 128, "64": 64, "U8": 8, "S8": 8, "U16": 16, "S16": 16}
_FLOAT_ATOMIC_MODIFIER = re.compile(r"^(?:B?F(?:16|32|64)(?:X2)?|FTZ|RN)$", re.IGNORECASE)
FLOAT_ARITHMETIC_OPCODES: frozenset[str] = frozenset(
    {"FADD", "FFMA", "FMUL", "FMNMX", "HADD2", "HFMA2", "HMUL2", "HMNMX2", "DADD", "DFMA", "DMUL"}
)
"""Float arithmetic that marks a CAS retry loop as an emulated float atomic."""

BRANCH_OPCODES: frozenset[str] = frozenset({"BRA", "JMP", "BRX", "JMX"})


@dataclass(frozen=True)
class Instruction:
    """One SASS instruction: ``address``, ``predicate`` (``"@!P0"`` or None), ``opcode``
    (``"LDG"``), ``modifiers`` (``("E", "128")``) and the raw ``operands`` text."""

    address: int
    opcode: str
    modifiers: tuple[str, ...] = ()
    operands: str = ""
    predicate: str | None = None

    @property
    def mnemonic(self) -> str:
        """Opcode with its modifiers, as printed (``"LDG.E.128"``)."""
        return ".".join((self.opcode, *self.modifiers))

    @property
    def branch_target(self) -> str | None:
        """The label a branch jumps to, or None (not a branch, or an indirect one)."""
        if self.opcode not in BRANCH_OPCODES:
            return None
        match = _BRANCH_TARGET.search(self.operands)
        return match.group("label") if match else None


@dataclass(frozen=True)
class Loop:
    """Address range ``[start, end]`` of a backward branch (``end`` is the branch)."""

    start: int
    end: int

    def contains(self, address: int) -> bool:
        return self.start <= address <= self.end


def instruction_class(instruction: Instruction) -> str:
    """Class of an instruction (one of :data:`INSTRUCTION_CLASSES`)."""
    return _CLASS_OF_OPCODE.get(instruction.opcode, "other")


def access_bits(instruction: Instruction) -> int:
    """Bits per thread moved by a memory instruction: 8, 16, 32 (no size modifier), 64 or 128."""
    for modifier in instruction.modifiers:
        if modifier in _WIDTH_MODIFIERS:
            return _WIDTH_MODIFIERS[modifier]
    return 32


def is_float_atomic(instruction: Instruction) -> bool:
    """Whether an atomic / reduction instruction operates on floating-point values."""
    return any(_FLOAT_ATOMIC_MODIFIER.match(m) for m in instruction.modifiers)


def is_cas(instruction: Instruction) -> bool:
    """Whether an atomic is a compare-and-swap."""
    return "CAS" in instruction.modifiers


@dataclass(frozen=True)
class Sass:
    """A parsed kernel: its instructions in address order and its label addresses."""

    instructions: tuple[Instruction, ...]
    labels: dict[str, int] = field(default_factory=dict)

    def of_class(self, cls: str) -> list[Instruction]:
        """Instructions of one class (see :data:`INSTRUCTION_CLASSES`)."""
        if cls not in INSTRUCTION_CLASSES:
            raise KeyError(f"unknown instruction class {cls!r}; known: {', '.join(INSTRUCTION_CLASSES)}")
        return [i for i in self.instructions if instruction_class(i) == cls]

    @cached_property
    def loops(self) -> tuple[Loop, ...]:
        """Backward-branch loops, innermost (shortest) first."""
        found = set()
        for instruction in self.instructions:
            target = instruction.branch_target
            if target is not None and target in self.labels and self.labels[target] <= instruction.address:
                if self.labels[target] == instruction.address and instruction.predicate is None:
                    continue  # the unreachable ``BRA`` to itself nvdisasm prints after a kernel's last EXIT
                found.add(Loop(self.labels[target], instruction.address))
        return tuple(sorted(found, key=lambda loop: (loop.end - loop.start, loop.start)))

    def innermost_loop(self, address: int) -> Loop | None:
        """The shortest loop containing ``address``, or None."""
        return next((loop for loop in self.loops if loop.contains(address)), None)

    def vector_path_length(self) -> int | None:
        """Instructions one iteration of the loop over the data issues on its unmasked path: from
        the start of the innermost loop that holds a 128-bit global load to its back branch,
        following unconditional branches, and at a conditional branch the side whose straight
        run holds no narrower (masked, element-wise) global load (the fall-through when neither
        does). None when no loop holds a 128-bit global load.

        Divided by the elements a warp handles per iteration, it is the warp instructions per
        element that bound a streaming kernel by issue rather than by bytes.
        """
        vector = [i for i in self.of_class("global_load") if access_bits(i) == 128 and self.innermost_loop(i.address)]
        if not vector:
            return None
        loop = self.innermost_loop(vector[0].address)
        assert loop is not None
        position = {i.address: n for n, i in enumerate(self.instructions)}

        def straight_run(n: int) -> list[Instruction]:
            run: list[Instruction] = []
            while (n < len(self.instructions) and loop.contains(self.instructions[n].address)
                   and len(run) <= len(self.instructions)):
                instruction = self.instructions[n]
                run.append(instruction)
                if instruction.opcode in BRANCH_OPCODES:
                    target = instruction.branch_target
                    if instruction.predicate or instruction.address == loop.end or target not in self.labels:
                        return run
                    n = position[self.labels[target]]
                else:
                    n += 1
            return run

        def element_wise(run: list[Instruction]) -> bool:
            return any(instruction_class(i) == "global_load" and access_bits(i) < 64 for i in run)

        count, n = 0, position[loop.start]
        for _ in range(len(self.instructions)):
            run = straight_run(n)
            count += len(run)
            last = run[-1] if run else None
            if last is None or last.address == loop.end or last.branch_target not in self.labels:
                return count
            taken, fall = position[self.labels[last.branch_target]], position[last.address] + 1
            n = taken if element_wise(straight_run(fall)) and not element_wise(straight_run(taken)) else fall
        return count

    def class_counts(self) -> dict[str, int]:
        """Number of instructions of every class (all of :data:`INSTRUCTION_CLASSES`)."""
        counts = Counter(instruction_class(i) for i in self.instructions)
        return {cls: counts.get(cls, 0) for cls in INSTRUCTION_CLASSES}

    def width_counts(self, cls: str) -> dict[int, int]:
        """Instructions of a memory class by access width in bits, widest first."""
        counts = Counter(access_bits(i) for i in self.of_class(cls))
        return dict(sorted(counts.items(), reverse=True))

    def opcode_counts(self, cls: str) -> dict[str, int]:
        """Instructions of a class by full mnemonic (``"HMMA.16816.F32.BF16"``)."""
        return dict(sorted(Counter(i.mnemonic for i in self.of_class(cls)).items()))

    @cached_property
    def emulated_float_atomics(self) -> tuple[Instruction, ...]:
        """Global CAS atomics inside a loop that does float arithmetic (a float add emulated
        with a compare-and-swap retry loop, as Triton lowers fp16 / bf16 ``atomic_add``)."""
        found = []
        for atomic in self.of_class("global_atomic"):
            loop = self.innermost_loop(atomic.address) if is_cas(atomic) else None
            if loop is not None and any(
                loop.contains(i.address) and i.opcode in FLOAT_ARITHMETIC_OPCODES for i in self.instructions
            ):
                found.append(atomic)
        return tuple(found)

    def float_atomics(self) -> list[Instruction]:
        """Global atomics on floats: typed ones plus emulated CAS loops."""
        emulated = set(self.emulated_float_atomics)
        return [i for i in self.of_class("global_atomic") if is_float_atomic(i) or i in emulated]

    def summary(self) -> dict[str, object]:
        """JSON-ready instruction counts: per class, memory widths, atomics split, MMA opcodes,
        loops, and the unmasked path of one iteration of the vector-load loop
        (:meth:`vector_path_length`, None without one)."""
        atomics = self.of_class("global_atomic")
        floats = self.float_atomics()
        return {
            "total": len(self.instructions),
            "classes": self.class_counts(),
            "global_load_bits": {str(k): v for k, v in self.width_counts("global_load").items()},
            "global_store_bits": {str(k): v for k, v in self.width_counts("global_store").items()},
            "global_atomics": {"float": len(floats), "integer": len(atomics) - len(floats)},
            "mma": self.opcode_counts("mma"),
            "loops": len(self.loops),
            "vector_loop_path": self.vector_path_length(),
        }


def parse_sass(text: str) -> Sass:
    """Instructions and labels of ``nvdisasm -c`` (or ``cuobjdump -sass``) output.

    Raises:
        ValueError: an instruction line (one that starts with an address comment) this parser
            cannot read, or text with no instruction at all: a count or check on what was not
            parsed would read as "none found".
    """
    instructions: list[Instruction] = []
    pending_labels: list[str] = []
    labels: dict[str, int] = {}
    for number, line in enumerate(text.splitlines(), start=1):
        label = _LABEL.match(line)
        if label:
            pending_labels.append(label.group("label"))
            continue
        match = _INSTRUCTION.match(line)
        if not match:
            if _ADDRESSED.match(line):
                raise ValueError(f"SASS line {number} is an instruction this parser cannot read: {line.strip()!r}")
            continue
        address = int(match.group("address"), 16)
        opcode, *modifiers = match.group("mnemonic").split(".")
        instructions.append(
            Instruction(
                address=address,
                opcode=opcode,
                modifiers=tuple(modifiers),
                operands=match.group("operands"),
                predicate=match.group("predicate"),
            )
        )
        for name in pending_labels:
            labels[name] = address
        pending_labels.clear()
    if not instructions:
        lines = len(text.splitlines())
        raise ValueError(f"no SASS instruction in {lines} lines: not nvdisasm -c / cuobjdump -sass output")
    return Sass(tuple(instructions), labels)
