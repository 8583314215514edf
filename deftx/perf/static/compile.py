"""Compile every declared kernel specialisation for a GPU target, with no GPU, and read back
what the hardware would get: registers, local memory, shared memory and the SASS.

For each :class:`deftx.kernels.KernelSpec`::

    triton.compile(ASTSource(fn=spec.kernel, signature=spec.signature, constexprs=spec.constexprs),
                   target=GPUTarget("cuda", capability, 32),
                   options={"num_warps": spec.num_warps, "num_stages": spec.num_stages,
                            "enable_fp_fusion": spec.fp_fusion})

builds PTX and a cubin (ptxas runs; no driver is needed). The cubin is then read with the
tools the Triton wheel ships in ``triton/backends/nvidia/bin``:

* ``cuobjdump --dump-resource-usage``: ``REG`` (registers per thread), ``STACK`` (the
  per-thread stack frame, where ptxas spills registers), ``LOCAL`` (``.local`` arrays) and
  ``SHARED`` (static shared bytes); the dynamic shared bytes Triton requests at launch are
  the compiled kernel's ``metadata.shared``;
* ``nvdisasm -c``: the SASS (see :mod:`deftx.perf.static.sass`).

Compiling takes ~1 s per specialisation and target, disassembling ~0.4 s. Triton keeps
compiled kernels in its cache (``~/.triton/cache``), this module keeps each cubin's
resource usage and SASS under ``$DEFTX_CACHE/sass`` (default ``~/.cache/deftx/sass``, keyed
by the cubin's SHA-256) and in memory for the session, and :func:`compile_all` spreads cold
builds over worker processes.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import importlib
import json
import multiprocessing
import os
import re
import subprocess
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from deftx.ops.registry import TRITON_OPS
from deftx.perf.static.sass import Sass, parse_sass
from deftx.perf.targets import Target, get_target

_RESOURCE_FUNCTION = re.compile(r"^\s*Function\s+(?P<name>\S+?):?\s*$")
_RESOURCE_FIELD = re.compile(r"(?P<key>[A-Z]+(?:\[\d+\])?):(?P<value>\d+)")
_BIN_CONSTANTS: tuple[str, ...] = ("HISTOGRAM_BINS", "NUM_BINS", "RADIX", "BINS")
_CACHE_VERSION = 1
_PARALLEL_THRESHOLD = 8
"""Fewer remaining builds than this stay in-process (a worker start costs a few seconds)."""
_CACHED_BUILD_SECONDS = 0.25
"""A build faster than this was a cache hit (a cold compile takes ~1 s)."""


def tool_path(name: str) -> Path:
    """Path of ``cuobjdump`` / ``nvdisasm`` / ``ptxas`` in the Triton wheel."""
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if not path.exists():
        raise FileNotFoundError(f"{name} not found at {path}: the installed Triton wheel does not ship it")
    return path


@dataclass(frozen=True)
class ResourceUsage:
    """``cuobjdump --dump-resource-usage`` of one function (bytes per thread / per block)."""

    registers: int
    stack_bytes: int
    local_bytes: int
    static_shared_bytes: int


RESOURCE_FIELDS: tuple[str, ...] = ("REG", "STACK", "LOCAL", "SHARED")
"""The fields of a function's resource line that a :class:`ResourceUsage` is read from."""


def parse_resource_usage(text: str) -> dict[str, ResourceUsage]:
    """Function name -> resource usage, from ``cuobjdump --dump-resource-usage`` output.

    Raises:
        ValueError: a function's resource line lacks one of :data:`RESOURCE_FIELDS` (a missing
            ``STACK`` read as 0 would report a spilling kernel as spill-free).
    """
    usage: dict[str, ResourceUsage] = {}
    current: str | None = None
    for line in text.splitlines():
        function = _RESOURCE_FUNCTION.match(line)
        if function:
            current = function.group("name")
            continue
        fields = dict((m.group("key"), int(m.group("value"))) for m in _RESOURCE_FIELD.finditer(line))
        if current is not None and fields:
            missing = [key for key in RESOURCE_FIELDS if key not in fields]
            if missing:
                raise ValueError(f"cuobjdump resource usage of {current}: no {', '.join(missing)} in {line.strip()!r}")
            usage[current] = ResourceUsage(
                registers=fields["REG"],
                stack_bytes=fields["STACK"],
                local_bytes=fields["LOCAL"],
                static_shared_bytes=fields["SHARED"],
            )
            current = None
    return usage


@dataclass(frozen=True)
class KernelBuild:
    """One specialisation compiled for one target.

    Attributes:
        name: the specialisation's name; ``module``: its kernel module (``"topk"``);
        function: the ``@triton.jit`` function; ``arch``: ``"sm_90"``.
        num_warps, num_stages, promises, constexprs: as declared (constexprs as strings).
        registers, stack_bytes, local_bytes, static_shared_bytes: from cuobjdump.
        dynamic_shared_bytes: ``metadata.shared``.
        histogram_bins: bins of a histogram kernel (:func:`histogram_bins`), or None.
        sass_text: ``nvdisasm -c`` output.
    """

    name: str
    module: str
    function: str
    arch: str
    num_warps: int
    num_stages: int
    promises: tuple[str, ...]
    constexprs: dict[str, str]
    registers: int
    stack_bytes: int
    local_bytes: int
    static_shared_bytes: int
    dynamic_shared_bytes: int
    histogram_bins: int | None
    sass_text: str = field(repr=False)

    @cached_property
    def sass(self) -> Sass:
        return parse_sass(self.sass_text)

    @property
    def target(self) -> Target:
        return get_target(self.arch)

    @property
    def user_shared_bytes(self) -> int:
        """Static + dynamic shared bytes per block, without the system reservation that
        ptxas folds into the static size on sm_90."""
        static = self.static_shared_bytes
        if self.target.reserved_shared_in_cubin:
            static = max(static - self.target.reserved_shared_per_block, 0)
        return static + self.dynamic_shared_bytes

    @property
    def local_memory_bytes(self) -> int:
        """Per-thread local memory: stack frame (register spills) plus ``.local`` arrays."""
        return self.stack_bytes + self.local_bytes


@dataclass(frozen=True)
class BuildFailure:
    """A specialisation that did not compile (or whose module did not import)."""

    name: str
    module: str
    arch: str
    error: str


@dataclass(frozen=True)
class DeclaredSpec:
    """A specialisation with where it is declared: ``SPECIALIZATIONS[index]`` of ``module``."""

    module: str
    index: int
    spec: Any


@dataclass
class Registry:
    """What the kernel modules declare: their specialisations, and the modules that are
    absent (``absent``: not written yet) or broken (``broken``: module -> import error)."""

    specs: list[DeclaredSpec]
    absent: list[str]
    broken: dict[str, str]
    without_specs: list[str]


def declared_specializations() -> Registry:
    """Every ``SPECIALIZATIONS`` entry of the kernel module of every op of the registry with Triton
    kernels (:data:`deftx.ops.registry.TRITON_OPS`).

    Unlike :func:`deftx.ops.registry.kernel_specializations` it does not stop at a module that
    is missing or fails to import: those are listed in the result instead.
    """
    registry = Registry([], [], {}, [])
    for name in TRITON_OPS:
        qualified = f"deftx.kernels.{name}"
        try:
            module = importlib.import_module(qualified)
        except ModuleNotFoundError as err:
            if err.name == qualified:
                registry.absent.append(name)
            else:
                registry.broken[name] = f"{type(err).__name__}: {err}"
            continue
        except Exception as err:  # a kernel file being edited can raise anything on import
            registry.broken[name] = f"{type(err).__name__}: {err}"
            continue
        specs = getattr(module, "SPECIALIZATIONS", None)
        if not specs:
            registry.without_specs.append(name)
            continue
        registry.specs.extend(DeclaredSpec(name, i, spec) for i, spec in enumerate(specs))
    return registry


def _cache_dir() -> Path:
    root = os.environ.get("DEFTX_CACHE")
    base = Path(root) if root else Path.home() / ".cache" / "deftx"
    return base / "sass"


def _run_tool(name: str, args: Sequence[str]) -> str:
    result = subprocess.run([str(tool_path(name)), *args], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{name} {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def analyse_cubin(cubin: bytes) -> tuple[dict[str, ResourceUsage], str]:
    """Resource usage per function and the SASS of a cubin (cached on disk by its SHA-256)."""
    digest = hashlib.sha256(cubin).hexdigest()
    cached = _cache_dir() / f"{digest}.json"
    if cached.exists():
        try:
            payload = json.loads(cached.read_text())
            if payload.get("version") == _CACHE_VERSION:
                usage = {k: ResourceUsage(**v) for k, v in payload["usage"].items()}
                return usage, payload["sass"]
        except (OSError, ValueError, TypeError, KeyError):
            pass
    with tempfile.TemporaryDirectory(prefix="deftx-cubin-") as tmp:
        path = Path(tmp) / "kernel.cubin"
        path.write_bytes(cubin)
        usage = parse_resource_usage(_run_tool("cuobjdump", ["--dump-resource-usage", str(path)]))
        sass = _run_tool("nvdisasm", ["-c", str(path)])
    payload = {"version": _CACHE_VERSION, "usage": {k: vars(v) for k, v in usage.items()}, "sass": sass}
    try:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.tmp")
        partial.write_text(json.dumps(payload))
        partial.replace(cached)
    except OSError:
        pass
    return usage, sass


def histogram_bins(spec: Any) -> int | None:
    """Bins of a histogram kernel: an int constexpr of the spec whose name contains ``BINS``
    or ``RADIX``, else an int (or ``tl.constexpr``) module constant ``HISTOGRAM_BINS`` /
    ``NUM_BINS`` / ``RADIX`` / ``BINS`` of the kernel's module; None if neither exists."""
    for name, value in spec.constexprs.items():
        if ("BINS" in name.upper() or "RADIX" in name.upper()) and type(_unwrap(value)) is int:
            return _unwrap(value)
    module_globals = getattr(getattr(spec.kernel, "fn", spec.kernel), "__globals__", {})
    for name in _BIN_CONSTANTS:
        if type(_unwrap(module_globals.get(name))) is int:
            return _unwrap(module_globals[name])
    return None


def _unwrap(value: Any) -> Any:
    """The value of a ``tl.constexpr`` (or the value itself)."""
    return getattr(value, "value", value)


def launch_attrs(spec: Any) -> dict[tuple[int, ...], list[list[Any]]]:
    """Argument attributes the launcher would specialise the kernel with.

    A spec may give them as ``spec.attrs`` (``{(arg_index,): [["tt.divisibility", 16]]}``).
    Otherwise every pointer argument is taken as 16-byte aligned, which is what Triton's
    launcher specialises the base pointer of a torch allocation to; integer arguments get
    no divisibility assumption.
    """
    declared = getattr(spec, "attrs", None)
    if declared is not None:
        return dict(declared)
    names = list(spec.signature)
    return {
        (names.index(name),): [["tt.divisibility", 16]]
        for name, kind in spec.signature.items()
        if kind.startswith("*")
    }


def kernel_function_name(spec: Any) -> str:
    """Name of the ``@triton.jit`` function of a spec (the cubin's function)."""
    fn = getattr(spec.kernel, "fn", spec.kernel)
    return fn.__name__


def compile_spec(spec: Any, target: Target, *, module: str = "") -> KernelBuild:
    """Compile one :class:`~deftx.kernels.KernelSpec` for ``target`` and read its cubin.

    Raises whatever ``triton.compile`` raises on a kernel that does not compile.
    """
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    source = ASTSource(
        fn=spec.kernel, signature=dict(spec.signature), constexprs=dict(spec.constexprs), attrs=launch_attrs(spec)
    )
    compiled = triton.compile(
        source,
        target=GPUTarget("cuda", target.capability, target.warp_size),
        options={"num_warps": spec.num_warps, "num_stages": spec.num_stages, "enable_fp_fusion": spec.fp_fusion},
    )
    usage, sass = analyse_cubin(compiled.asm["cubin"])
    parse_sass(sass)  # SASS it cannot read fails this build: checks of no instructions would all pass
    function = kernel_function_name(spec)
    resources = usage.get(compiled.metadata.name) or usage.get(function)
    if resources is None:
        raise RuntimeError(f"{spec.name}: cuobjdump reports no function {compiled.metadata.name!r} "
                           f"(found {sorted(usage)})")
    return KernelBuild(
        name=spec.name,
        module=module,
        function=function,
        arch=target.arch,
        num_warps=spec.num_warps,
        num_stages=spec.num_stages,
        promises=tuple(sorted(spec.promises)),
        constexprs={k: str(v) for k, v in spec.constexprs.items()},
        registers=resources.registers,
        stack_bytes=resources.stack_bytes,
        local_bytes=resources.local_bytes,
        static_shared_bytes=resources.static_shared_bytes,
        dynamic_shared_bytes=int(compiled.metadata.shared),
        histogram_bins=histogram_bins(spec),
        sass_text=sass,
    )


def _failure(declared: DeclaredSpec, arch: str, err: BaseException) -> BuildFailure:
    message = f"{type(err).__name__}: {err}".strip()
    return BuildFailure(declared.spec.name, declared.module, arch, message)


def _build_declared(module: str, index: int, name: str, arch: str) -> KernelBuild | BuildFailure:
    """Worker entry point: rebuild ``SPECIALIZATIONS[index]`` of ``module`` in this process."""
    import deftx.kernels as kernels

    spec = importlib.import_module(f"{kernels.__name__}.{module}").SPECIALIZATIONS[index]
    declared = DeclaredSpec(module, index, spec)
    if spec.name != name:
        return BuildFailure(name, module, arch, f"SPECIALIZATIONS[{index}] is now {spec.name!r}")
    try:
        return compile_spec(spec, get_target(arch), module=module)
    except Exception as err:  # a failing compile is a result to report, not a crash
        return _failure(declared, arch, err)


_SESSION: dict[tuple[str, str, str], KernelBuild | BuildFailure] = {}
_builds_here = 0
"""Builds run in this process (the first one also pays Triton's start-up)."""


def _build_here(declared: DeclaredSpec, target: Target) -> KernelBuild | BuildFailure:
    try:
        return compile_spec(declared.spec, target, module=declared.module)
    except Exception as err:  # reported per spec
        return _failure(declared, target.arch, err)


def compile_all(
    declared: Sequence[DeclaredSpec], arch: str, *, workers: int | None = None
) -> list[KernelBuild | BuildFailure]:
    """Build every declared specialisation for ``arch``, in order.

    Results are memoised for the session (by module, spec name and arch). Builds run in
    this process while they are cache hits; after the first cold compile (one slower than
    ``_CACHED_BUILD_SECONDS``, not counting the process's first build, which pays Triton's
    start-up) the rest go to ``workers`` processes (default: the CPU count) when at least
    ``_PARALLEL_THRESHOLD`` remain. A spec that fails to compile gives a
    :class:`BuildFailure`.
    """
    global _builds_here
    target = get_target(arch)
    keys = [(d.module, d.spec.name, target.arch) for d in declared]
    todo = [(d, key) for d, key in zip(declared, keys, strict=True) if key not in _SESSION]
    if workers is None:
        workers = os.cpu_count() or 1
    while todo:
        d, key = todo.pop(0)
        started = time.perf_counter()
        _SESSION[key] = _build_here(d, target)
        cold = time.perf_counter() - started > _CACHED_BUILD_SECONDS and _builds_here > 0
        _builds_here += 1
        if cold and workers > 1 and len(todo) >= _PARALLEL_THRESHOLD:
            _build_in_pool(todo, target, workers)
            break
    return [_SESSION[key] for key in keys]


def _build_in_pool(todo: list[tuple[DeclaredSpec, tuple[str, str, str]]], target: Target, workers: int) -> None:
    """Build ``todo`` in ``workers`` spawned processes into the session memo."""
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(_build_declared, d.module, d.index, d.spec.name, target.arch) for d, _ in todo]
        for (_, key), future in zip(todo, futures, strict=True):
            _SESSION[key] = future.result()
