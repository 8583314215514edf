"""The native library under sanitizers (README, "Reliability").

The library is built twice more: with AddressSanitizer and UBSan
(``-DDEFTX_NATIVE_SANITIZE="address;undefined"``), and with ThreadSanitizer on LLVM's OpenMP runtime
(``-DDEFTX_NATIVE_SANITIZE=thread``, ``-DDEFTX_NATIVE_OPENMP_RUNTIME=.../libomp.so``, its tool
archer loaded through ``$OMP_TOOL_LIBRARIES`` so that TSan sees OpenMP's barriers and reductions).
Each is loaded through ``$DEFTX_NATIVE_LIBRARY`` into a Python that preloads its runtime. There
the native backend's own tests, the SFT file fuzzer (every loaded mutant applied and reverted) and
the op-input refusals must pass with no report: any out-of-bounds access, use after free, double
free, undefined behaviour or data race in csrc/ aborts the child. An error planted through the C
ABI shows that each build catches one and names its line: a buffer one entry short (ASan), and
OpenMP threads adding into one buffer passed as many tensors (TSan). TSan leaves out the small
bit-pattern cases (one block per op, so no two threads work at once).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
# Run against each sanitized build: the native tests, and the suites whose applies and refusals
# reach csrc/ through the public API.
SUITES = (
    "tests/ops/native",
    "tests/reliability/test_fuzz_sft.py",
    "tests/reliability/test_op_inputs.py",
    "tests/sft/test_apply_semantics.py",
)
# LLVM's OpenMP runtime with archer (Debian: libomp-14-dev, which .ci/run installs).
ARCHER_GLOB = "/usr/lib/llvm-*/lib/libarcher.so"

# scatter_restore told that one list has 2 entries while its saved buffer holds 1.
SHORT_BUFFER = """
import torch
from deftx.ops import native

dense, index, saved = torch.zeros(4), torch.tensor([0, 1]), torch.zeros(1)
status = native.library().deftx_scatter_restore(
    1, native.pointer_array([dense]), native.int32_array([0]), native.int64_array([4]),
    1, native.pointer_array([index]), native.int64_array([2]), native.pointer_array([saved]))
print("returned", status)
"""

# scatter_add told that one buffer is 64 tensors: the OpenMP threads adding blocks of different
# "tensors" write the same entries at once.
ALIASED_TENSORS = """
import torch
from deftx.ops import native

n, size = 64, 4096
dense, index, values = torch.zeros(size), torch.arange(size), torch.ones(size)
status = native.library().deftx_scatter_add(
    n, native.pointer_array([dense] * n), native.int32_array([0] * n), native.int64_array([size] * n),
    1, native.pointer_array([index] * n), native.int64_array([size] * n), native.pointer_array([values] * n),
    native.int32_array([0] * n), native.float32_array([1.0]), None)
print("returned", status)
"""

# Where the child loads its library from, whether its sanitizer runtime is in the process, what
# `auto` picks on CPU; then one multi-threaded top-k, which starts the OpenMP runtime.
LOADED = """
import ctypes, sys
import torch
from deftx.ops import dispatch, native, topk_mask

selected = topk_mask([torch.randn(1 << 18)], k=1000, output="indices")[0]
runtime_loaded = hasattr(ctypes.CDLL(None), sys.argv[1])
print("loaded", native.library_path(), runtime_loaded, dispatch.auto_backend("scatter", "cpu")[0], selected.numel())
"""


@dataclass(frozen=True)
class Sanitized:
    """A sanitized build of the native library and the child environment that runs it."""

    env: dict[str, str]
    init_symbol: str  # defined once the sanitizer's runtime is in the process
    report: str  # the first line of its report
    planted: str  # a script whose C ABI call makes an error of this sanitizer's kind
    loaded_says: str | None  # what a child that ran OpenMP code under it prints, if anything
    left_out: tuple[str, ...] = ()  # test files of SUITES not run against this build


def _runtime_path(compiler: str, runtime: str) -> Path | None:
    """The compiler's own copy of a sanitizer runtime, or None if it has none."""
    printed = subprocess.run([compiler, f"-print-file-name={runtime}"], capture_output=True, text=True, check=True)
    path = Path(printed.stdout.strip())
    return path if path.is_absolute() and path.exists() else None


def _build(tmp_path_factory, name: str, *cmake_options: str) -> tuple[Path, str]:
    """Builds the native library with ``cmake_options`` (once per session): (library, g++)."""
    cmake, compiler = shutil.which("cmake"), shutil.which("g++")
    if cmake is None or compiler is None:
        pytest.skip("needs cmake and g++ on PATH")
    build = tmp_path_factory.mktemp(f"native-{name}")
    library = build / f"deftx_native_{name}.so"
    configure = [
        cmake, "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
        f"-DCMAKE_CXX_COMPILER={compiler}", f"-DDEFTX_NATIVE_OUTPUT={library}", *cmake_options,
    ]
    for command in (configure, [cmake, "--build", str(build), "-j", "2"]):
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    return library, compiler


def _preloading(compiler: str, runtimes: tuple[str, ...], library: Path, **variables: str) -> dict[str, str]:
    """This process's environment, with ``runtimes`` preloaded and ``library`` named for deftx."""
    paths = [_runtime_path(compiler, runtime) for runtime in runtimes]
    if None in paths:
        pytest.skip(f"g++ has no {' / '.join(runtimes)}")
    env = {
        **os.environ,
        **variables,
        "LD_PRELOAD": " ".join(str(path) for path in paths),
        "DEFTX_NATIVE_LIBRARY": str(library),
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }
    # A runtime that cannot start on this kernel (TSan and a large mmap_rnd_bits, say) is the
    # machine's limit, not a finding about csrc/.
    bare = subprocess.run([sys.executable, "-c", "pass"], env=env, capture_output=True, text=True, timeout=60)
    if bare.returncode != 0:
        pytest.skip(f"{' / '.join(runtimes)} cannot start Python here: {bare.stderr.strip()[:300]}")
    return env


def _address(tmp_path_factory) -> Sanitized:
    library, compiler = _build(tmp_path_factory, "sanitized", "-DDEFTX_NATIVE_SANITIZE=address;undefined")
    env = _preloading(
        compiler, ("libasan.so", "libubsan.so"), library,
        ASAN_OPTIONS="detect_leaks=0", UBSAN_OPTIONS="print_stacktrace=1",
    )
    return Sanitized(env, "__asan_init", "ERROR: AddressSanitizer: heap-buffer-overflow", SHORT_BUFFER, None)


def _thread(tmp_path_factory) -> Sanitized:
    archers = sorted(glob.glob(ARCHER_GLOB))
    if not archers:
        pytest.skip(f"needs LLVM's OpenMP runtime with archer ({ARCHER_GLOB}; Debian: apt install libomp-14-dev)")
    archer = Path(archers[-1])
    library, compiler = _build(
        tmp_path_factory, "tsan", "-DDEFTX_NATIVE_SANITIZE=thread",
        f"-DDEFTX_NATIVE_OPENMP_RUNTIME={archer.with_name('libomp.so')}",
    )
    env = _preloading(
        compiler, ("libtsan.so",), library,
        OMP_TOOL_LIBRARIES=str(archer), ARCHER_OPTIONS="verbose=1", OMP_NUM_THREADS="4",
        TSAN_OPTIONS="ignore_noninstrumented_modules=1 halt_on_error=1 exitcode=66",
    )
    return Sanitized(
        env, "__tsan_init", "WARNING: ThreadSanitizer: data race", ALIASED_TENSORS,
        "Archer detected OpenMP application with TSan",
        # 4,000 cases of at most 4 tensors of 96 entries: one block each, so no team works at
        # once, while archer's cost per parallel region makes them 2 minutes under TSan.
        left_out=("tests/ops/native/test_bit_patterns.py",),
    )


@pytest.fixture(scope="module", params=["address", "thread"])
def sanitized(request, tmp_path_factory) -> Sanitized:
    return {"address": _address, "thread": _thread}[request.param](tmp_path_factory)


def _run(env: dict[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_child_runs_the_sanitized_build(sanitized):
    done = _run(sanitized.env, "-c", LOADED, sanitized.init_symbol, timeout=120)
    assert done.returncode == 0, done.stderr
    loaded = [line.split() for line in done.stdout.splitlines() if line.startswith("loaded ")]
    assert loaded == [["loaded", sanitized.env["DEFTX_NATIVE_LIBRARY"], "True", "native", "1000"]], done.stdout
    if sanitized.loaded_says is not None:
        assert sanitized.loaded_says in done.stdout + done.stderr, done.stdout + done.stderr


def test_a_planted_error_is_reported_with_its_source_line(sanitized):
    done = _run(sanitized.env, "-c", sanitized.planted, timeout=120)
    assert done.returncode != 0, done.stdout
    assert "returned" not in done.stdout
    assert sanitized.report in done.stderr, done.stderr[-3000:]
    assert "csrc/scatter.cpp" in done.stderr, done.stderr[-3000:]


def test_native_suites_pass_with_no_sanitizer_report(sanitized):
    # --capture=sys: a report written to fd 2 as the child aborts reaches this test's message.
    ignored = [f"--ignore={path}" for path in (Path(__file__).relative_to(ROOT), *sanitized.left_out)]
    done = _run(
        sanitized.env, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--capture=sys", "-x", *ignored, *SUITES,
        timeout=1200,
    )
    report = done.stdout[-3000:] + done.stderr[-6000:]
    assert done.returncode == 0, report
    for marker in ("AddressSanitizer", "ThreadSanitizer:", "runtime error:"):
        assert marker not in done.stderr, report
    assert " passed" in done.stdout.splitlines()[-1], report
