"""Native CPU backend of deftx: ctypes bindings of the C++17 / OpenMP library built from csrc/.

The library is ``deftx/_native/deftx_native*.so`` (built by ``pip install`` or ``make native``);
``deftx/_native/BUILD_STATUS.txt`` records why it is missing when the build failed.
``$DEFTX_NATIVE_LIBRARY`` names another build to load instead (``make native-sanitized``'s or
``make native-tsan``'s). Every exported function takes raw pointers and sizes and returns a status
code, which :func:`check_status` turns into a Python exception. The op modules (:mod:`.topk`,
:mod:`.scatter`, :mod:`.masked_step`) hold the backend functions of the op contract.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import sysconfig
from collections.abc import Sequence
from pathlib import Path

import torch

ABI_VERSION = 2
NATIVE_DIR = Path(__file__).resolve().parents[2] / "_native"
# The sources of a checkout (absent from an installed wheel): a library built from other
# sources than these is refused, so an edit without `make native` cannot run a stale build.
SOURCE_DIR = Path(__file__).resolve().parents[3] / "csrc"
LIBRARY_ENV = "DEFTX_NATIVE_LIBRARY"

_TSAN_RUNTIME = b"libtsan.so"

# Sanitizer runtimes a build may need (its file names them) -> a symbol they define once loaded.
# Such a runtime must be in the process before Python starts (LD_PRELOAD), or loading aborts it.
_PRELOADED_RUNTIMES: dict[bytes, str] = {b"libasan.so": "__asan_init", _TSAN_RUNTIME: "__tsan_init"}

# ThreadSanitizer sees OpenMP's barriers and reductions only through LLVM's OpenMP runtime and its
# tool archer; on gcc's libgomp, or without the tool, it reports them as data races.
_LLVM_OPENMP_RUNTIME = b"libomp.so"
_OPENMP_TOOL_ENV = "OMP_TOOL_LIBRARIES"
_ARCHER = "libarcher.so"

# Element type codes of the C ABI (csrc/common.h, enum DType).
DTYPE_CODES: dict[torch.dtype, int] = {torch.float32: 0, torch.bfloat16: 1, torch.float16: 2}

# Status codes of the C ABI (csrc/common.h, enum Status).
_STATUS_OK = 0
_STATUS_INVALID_ARGUMENT = 1
_STATUS_OUT_OF_MEMORY = 2
_STATUS_BAD_INDICES = 3

_c_ptr = ctypes.c_void_p
_c_ptrp = ctypes.POINTER(_c_ptr)
_c_i32p = ctypes.POINTER(ctypes.c_int32)
_c_i64 = ctypes.c_int64
_c_i64p = ctypes.POINTER(ctypes.c_int64)
_c_f32p = ctypes.POINTER(ctypes.c_float)

# The leading arguments of both scatter functions (csrc/scatter.cpp): n_tensors, dense, dense_dtypes,
# numels (the dense tensors), n_diffs, indices, lengths (the index lists).
_SCATTER_LISTS: list[type] = [_c_i64, _c_ptrp, _c_i32p, _c_i64p, _c_i64, _c_ptrp, _c_i64p]

# Exported function -> (restype, argtypes); pointer arrays are passed as void**.
_SIGNATURES: dict[str, tuple[type, list[type]]] = {
    "deftx_native_abi_version": (ctypes.c_int32, []),
    "deftx_native_source_fingerprint": (ctypes.c_char_p, []),
    "deftx_topk_select": (
        ctypes.c_int32,
        [_c_i64, _c_ptrp, _c_ptrp, _c_i32p, _c_i64p, _c_i64p, _c_i64, _c_i64, _c_ptr, _c_i64p, _c_i64p, _c_i64p],
    ),
    "deftx_scatter_add": (ctypes.c_int32, [*_SCATTER_LISTS, _c_ptrp, _c_i32p, _c_f32p, _c_ptrp]),
    "deftx_scatter_restore": (ctypes.c_int32, [*_SCATTER_LISTS, _c_ptrp]),
    "deftx_masked_adamw_step": (
        ctypes.c_int32,
        [_c_i64, _c_ptrp, _c_ptrp, _c_i32p, _c_i64p, _c_ptrp, _c_i64p, _c_ptrp, _c_ptrp, _c_ptrp, _c_ptrp, _c_f32p],
    ),
}


class NativeUnavailableError(RuntimeError):
    """The native library is not built, cannot be loaded, or has another ABI version."""


def library_path() -> Path | None:
    """Path of the library to load: ``$DEFTX_NATIVE_LIBRARY`` when set, else the built one in
    ``deftx/_native``, or None if there is none."""
    override = os.environ.get(LIBRARY_ENV)
    if override:
        return Path(override)
    # The build for this interpreter first: `make native` for another Python leaves its own
    # (named with that Python's suffix, maybe of older sources) beside it.
    own = NATIVE_DIR / f"deftx_native{sysconfig.get_config_var('EXT_SUFFIX')}"
    if own.is_file():
        return own
    candidates = sorted(NATIVE_DIR.glob("deftx_native*.so"))
    return candidates[0] if candidates else None


def _sanitizer_reason(path: Path) -> str | None:
    """Why the sanitized build at ``path`` must not be loaded into this process, or None."""
    content = path.read_bytes()
    process = ctypes.CDLL(None)
    for runtime, symbol in _PRELOADED_RUNTIMES.items():
        if runtime in content and not hasattr(process, symbol):
            return (
                f"native library {path.name} is a sanitized build: start Python with LD_PRELOAD naming "
                f"{runtime.decode()} (README, Reliability)"
            )
    if _TSAN_RUNTIME not in content:
        return None
    if _LLVM_OPENMP_RUNTIME not in content:
        return (
            f"native library {path.name} is a ThreadSanitizer build on gcc's OpenMP runtime, whose "
            "synchronisation TSan cannot see: build it with `make native-tsan`"
        )
    if _ARCHER not in os.environ.get(_OPENMP_TOOL_ENV, ""):
        return (
            f"native library {path.name} is a ThreadSanitizer build: set {_OPENMP_TOOL_ENV} to LLVM's "
            f"{_ARCHER}, or TSan reports OpenMP's own synchronisation as data races (README, Reliability)"
        )
    return None


def source_fingerprint(directory: Path) -> str | None:
    """The fingerprint CMakeLists.txt compiles into the library, of the ``*.cpp`` and ``*.h``
    files in ``directory``: SHA-256 (hex) of one line ``"<name> <SHA-256 of content>\\n"`` per file,
    in name order; None when there are none (no checkout beside the package)."""
    files = sorted((*directory.glob("*.cpp"), *directory.glob("*.h")), key=lambda path: path.name)
    if not files:
        return None
    lines = "".join(f"{path.name} {hashlib.sha256(path.read_bytes()).hexdigest()}\n" for path in files)
    return hashlib.sha256(lines.encode()).hexdigest()


def _missing_library_reason() -> str:
    status_file = NATIVE_DIR / "BUILD_STATUS.txt"
    status = status_file.read_text().strip() if status_file.is_file() else ""
    if status and status != "ok":
        return f"native library not built ({status})"
    return f"native library not found in {NATIVE_DIR} (run `make native`)"


def _bind(lib: ctypes.CDLL) -> ctypes.CDLL:
    for name, (restype, argtypes) in _SIGNATURES.items():
        function = getattr(lib, name)
        function.restype = restype
        function.argtypes = argtypes
    return lib


@functools.lru_cache(maxsize=1)
def _load() -> tuple[ctypes.CDLL | None, str | None]:
    path = library_path()
    if path is None:
        return None, _missing_library_reason()
    if not path.is_file():
        return None, f"${LIBRARY_ENV} names {path}, which is not a file"
    reason = _sanitizer_reason(path)
    if reason is not None:
        return None, reason
    try:
        lib = ctypes.CDLL(str(path.resolve()))  # a bare name would make dlopen search the library path
    except OSError as err:
        return None, f"cannot load native library {path.name}: {err}"
    missing = [name for name in _SIGNATURES if not hasattr(lib, name)]
    if missing:
        return None, f"native library {path.name} lacks {', '.join(missing)} (rebuild: make native)"
    version = _bind(lib).deftx_native_abi_version()
    if version != ABI_VERSION:
        return None, (
            f"native library {path.name} has ABI version {version}, deftx expects {ABI_VERSION} (rebuild: make native)"
        )
    expected = source_fingerprint(SOURCE_DIR)
    if expected is not None and lib.deftx_native_source_fingerprint().decode() != expected:
        return None, (
            f"native library {path.name} was built from other sources than {SOURCE_DIR} (stale build: make native)"
        )
    return lib, None


def unavailable_reason() -> str | None:
    """Why the native backend cannot be used, or None when it can."""
    return _load()[1]


def library() -> ctypes.CDLL:
    """The loaded native library with its function signatures set.

    Raises:
        NativeUnavailableError: the library is missing, unloadable or of another ABI version.
    """
    lib, reason = _load()
    if lib is None:
        raise NativeUnavailableError(reason)
    return lib


def check_status(status: int, function: str) -> None:
    """Raise the Python exception matching a non-zero status code of ``function``."""
    if status == _STATUS_OK:
        return
    if status == _STATUS_INVALID_ARGUMENT:
        raise ValueError(f"{function}: invalid argument (count, dtype, pointer or k)")
    if status == _STATUS_OUT_OF_MEMORY:
        raise MemoryError(f"{function}: out of memory for its work buffers")
    if status == _STATUS_BAD_INDICES:
        raise ValueError(f"{function}: an index list is not sorted or has an entry out of range")
    raise RuntimeError(f"{function}: unknown status code {status}")


def dtype_code(tensor: torch.Tensor, what: str) -> int:
    """The C ABI code of ``tensor``'s dtype; TypeError for dtypes other than fp32/bf16/fp16."""
    code = DTYPE_CODES.get(tensor.dtype)
    if code is None:
        raise TypeError(f"{what}: dtype {tensor.dtype} is not supported (fp32, bf16 or fp16)")
    return code


def check_cpu_contiguous(tensor: torch.Tensor, what: str) -> None:
    """ValueError unless ``tensor`` is a contiguous CPU tensor (the library reads raw memory)."""
    if tensor.device.type != "cpu":
        raise ValueError(f"{what}: the native backend needs CPU tensors, got {tensor.device}")
    if not tensor.is_contiguous():
        raise ValueError(f"{what}: tensor must be contiguous")
    if _misaligned(tensor):
        raise ValueError(
            f"{what}: tensor data at {tensor.data_ptr():#x} is not aligned to its {tensor.element_size()}-byte elements"
        )


def _misaligned(tensor: torch.Tensor) -> bool:
    """Whether the data pointer is not a multiple of the element size (a tensor over a buffer at
    an odd offset: ``torch.frombuffer``, ``torch.from_numpy``): the library's loads of it would
    be undefined behaviour (UBSan reports them), and vectorised ones may fault."""
    return tensor.data_ptr() % tensor.element_size() != 0


def read_operand(tensor: torch.Tensor, what: str) -> torch.Tensor:
    """A CPU tensor the library only reads, as one dense aligned buffer: ``tensor`` itself when it
    is contiguous and aligned, else a copy (ValueError for another device)."""
    if tensor.device.type != "cpu":
        raise ValueError(f"{what}: the native backend needs CPU tensors, got {tensor.device}")
    tensor = tensor.contiguous()
    return tensor.clone() if _misaligned(tensor) else tensor


def dtype_codes(tensors: Sequence[torch.Tensor], what: str) -> list[int]:
    """The C ABI dtype codes of tensors the library reads or writes through raw pointers, each
    checked first (:func:`check_cpu_contiguous`, :func:`dtype_code`; errors name ``what[t]``)."""
    codes = []
    for t, tensor in enumerate(tensors):
        check_cpu_contiguous(tensor, f"{what}[{t}]")
        codes.append(dtype_code(tensor, f"{what}[{t}]"))
    return codes


def pointer_array(tensors: Sequence[torch.Tensor]) -> ctypes.Array:
    """``void*[len(tensors)]`` of the tensors' data pointers."""
    return (_c_ptr * len(tensors))(*(tensor.data_ptr() for tensor in tensors))


def int32_array(values: Sequence[int]) -> ctypes.Array:
    """``int32_t[len(values)]``."""
    return (ctypes.c_int32 * len(values))(*values)


def int64_array(values: Sequence[int]) -> ctypes.Array:
    """``int64_t[len(values)]``."""
    return (ctypes.c_int64 * len(values))(*values)


_FLOAT32_TINY = 2.0**-126  # the smallest normal fp32
_FLOAT32_UNIT = 2.0**149  # subnormal fp32 values count units of 2^-149


def float32_array(values: Sequence[float]) -> ctypes.Array:
    """``float[len(values)]``: each Python float rounded to fp32 (nearest even).

    The hardware conversion flushes a subnormal fp32 result to zero when the calling thread
    flushes denormals (``torch.set_flush_denormal(True)``), so magnitudes below the smallest
    normal are rounded here on integers: ``round`` is exact and ties to even."""
    array = (ctypes.c_float * len(values))(*values)
    bits = (ctypes.c_uint32 * len(values)).from_buffer(array)
    for position, value in enumerate(values):
        magnitude = abs(float(value))
        if 0.0 < magnitude < _FLOAT32_TINY:
            bits[position] = (0x80000000 if value < 0 else 0) | round(magnitude * _FLOAT32_UNIT)
    return array
