"""Checks of a compiled kernel: no spills, shared memory within the block limit, and the
design promises its spec declares, verified in the SASS.

Resource checks (every kernel):

* ``spill``: no local memory: the cubin's stack frame and ``.local`` size are 0 and the
  SASS has no ``LDL`` / ``STL`` (ptxas spills registers to the stack frame).
* ``shared_memory``: static + dynamic shared bytes per block (without the system
  reservation) within the target's per-block maximum.

Promises (``KernelSpec.promises``):

* ``no_float_atomics``: no global atomic on floats: neither a typed one
  (``ATOMG.E.ADD.F32.FTZ.RN``, ``RED.E.ADD.F32.FTZ.RN``, ``.F16x2`` ...) nor a
  compare-and-swap retry loop doing float arithmetic (how fp16 / bf16 ``atomic_add`` is
  emulated). Integer atomics are allowed.
* ``block_local_histogram``: the global atomics of a histogram kernel are bounded by the
  histogram size per program, not issued once per element. Two conditions, both needed:

  1. *rate*: no global atomic lies inside the innermost loop of any global load. The loop
     that streams the input (and any loop it is unrolled into) is the innermost loop of its
     loads; an atomic inside it executes at the rate elements are loaded, i.e. per element.
     Atomics after the streaming loop, or in an outer loop around it (one flush per block
     of elements), pass. A compare-and-swap retry loop nested in the streaming loop is
     still inside it, so it fails too.
  2. *count*: ``global atomic instructions x threads per program <= 4 x bins``: flushing a
     ``bins``-entry histogram once needs ``bins / threads`` atomics per thread; the factor
     4 allows Triton to keep the small histogram tensor replicated across warps (copies are
     predicated off but still appear as instructions). A loop-free per-element kernel whose
     program covers more than 4 x bins elements fails here.

  The bin count is :attr:`KernelBuild.histogram_bins` (see
  :func:`deftx.perf.static.compile.histogram_bins`).
* ``vectorized_loads``: at least one 128-bit global load (``LDG.E.128``, or
  ``LDGSTS.E.BYPASS.128`` for async copies into shared memory).
* ``tensor_cores``: tensor-core MMA present: ``HMMA`` on sm_80, ``HGMMA`` or ``HMMA`` on sm_90.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from deftx.perf.static.compile import KernelBuild
from deftx.perf.static.sass import Sass, access_bits

PROMISES: tuple[str, ...] = ("no_float_atomics", "block_local_histogram", "vectorized_loads", "tensor_cores")
CHECKS: tuple[str, ...] = ("spill", "shared_memory", "promises", *PROMISES)
REPLICATION_SLACK = 4
"""Allowed ratio of flushed atomic lanes to histogram bins (see the module docstring)."""


@dataclass(frozen=True)
class Violation:
    """A failed check: which (one of :data:`CHECKS`) and a message with the evidence."""

    check: str
    message: str

    def __str__(self) -> str:
        return f"{self.check}: {self.message}"


def check_spill(build: KernelBuild) -> Violation | None:
    local_ops = build.sass.opcode_counts("local")
    if build.local_memory_bytes == 0 and not local_ops:
        return None
    return Violation(
        "spill",
        f"local memory: stack {build.stack_bytes} B + local {build.local_bytes} B per thread, "
        f"{sum(local_ops.values())} LDL/STL instructions ({build.registers} registers)",
    )


def check_shared_memory(build: KernelBuild) -> Violation | None:
    limit = build.target.max_shared_per_block
    if build.user_shared_bytes <= limit:
        return None
    return Violation(
        "shared_memory",
        f"{build.user_shared_bytes} B of shared memory per block (static {build.static_shared_bytes} "
        f"+ dynamic {build.dynamic_shared_bytes}) > {limit} B allowed on {build.arch}",
    )


def check_no_float_atomics(build: KernelBuild, sass: Sass) -> Violation | None:
    floats = sass.float_atomics()
    if not floats:
        return None
    emulated = set(sass.emulated_float_atomics)
    shown = ", ".join(
        f"{i.mnemonic}{' (CAS loop)' if i in emulated else ''} @0x{i.address:04x}" for i in floats[:4]
    )
    return Violation("no_float_atomics", f"{len(floats)} floating-point atomics: {shown}")


def check_block_local_histogram(build: KernelBuild, sass: Sass, bins: int | None) -> Violation | None:
    atomics = sass.of_class("global_atomic")
    load_loops = {sass.innermost_loop(i.address) for i in sass.of_class("global_load")} - {None}
    per_element = [a for a in atomics if any(loop.contains(a.address) for loop in load_loops)]
    if per_element:
        a = per_element[0]
        return Violation(
            "block_local_histogram",
            f"{len(per_element)} global atomics inside the loop that streams the global loads "
            f"(one atomic per loaded element), first {a.mnemonic} @0x{a.address:04x}",
        )
    if bins is None:
        return Violation(
            "block_local_histogram",
            "cannot bound the atomics: no histogram size declared (a constexpr named *BINS* / *RADIX*, "
            "or a module constant HISTOGRAM_BINS / NUM_BINS / RADIX)",
        )
    threads = build.num_warps * build.target.warp_size
    if len(atomics) * threads > REPLICATION_SLACK * bins:
        return Violation(
            "block_local_histogram",
            f"{len(atomics)} global atomic instructions x {threads} threads > {REPLICATION_SLACK} x {bins} bins: "
            "more atomics per program than one flush of the histogram",
        )
    return None


def check_vectorized_loads(build: KernelBuild, sass: Sass) -> Violation | None:
    loads = sass.of_class("global_load")
    if any(access_bits(i) == 128 for i in loads):
        return None
    widths = build.sass.width_counts("global_load")
    return Violation("vectorized_loads", f"no 128-bit global load; global loads by bits: {widths or 'none'}")


def check_tensor_cores(build: KernelBuild, sass: Sass) -> Violation | None:
    wanted = {"HMMA"} if build.target.capability < 90 else {"HGMMA", "HMMA"}
    mma = sass.opcode_counts("mma")
    if any(name.split(".")[0] in wanted for name in mma):
        return None
    return Violation(
        "tensor_cores",
        f"no {' / '.join(sorted(wanted))} instruction on {build.arch}; MMA found: {mma or 'none'}",
    )


def check_build(build: KernelBuild) -> list[Violation]:
    """Every violated check of a compiled kernel (empty when it is clean)."""
    sass = build.sass
    promise_checks: dict[str, Callable[[], Violation | None]] = {
        "no_float_atomics": lambda: check_no_float_atomics(build, sass),
        "block_local_histogram": lambda: check_block_local_histogram(build, sass, build.histogram_bins),
        "vectorized_loads": lambda: check_vectorized_loads(build, sass),
        "tensor_cores": lambda: check_tensor_cores(build, sass),
    }
    found = [v for v in (check_spill(build), check_shared_memory(build)) if v is not None]
    for promise in build.promises:
        if promise not in promise_checks:
            found.append(Violation("promises", f"unknown promise {promise!r}; known: {', '.join(PROMISES)}"))
            continue
        violation = promise_checks[promise]()
        if violation is not None:
            found.append(violation)
    return found
