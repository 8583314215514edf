"""The native library under AddressSanitizer and UBSan (README, "Reliability").

The library is built once more with ``-DDEFTX_NATIVE_SANITIZE="address;undefined"`` and loaded
through ``$DEFTX_NATIVE_LIBRARY`` into a Python that preloads the sanitizer runtimes. There the
native backend's own tests, the SFT file fuzzer (every loaded mutant applied and reverted) and
the op-input refusals must pass with no report: any out-of-bounds access, use after free, double
free or undefined behaviour in csrc/ aborts the child. A buffer one entry short, handed to the C
ABI directly, shows that such an error is caught and named.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SANITIZERS = "address;undefined"
RUNTIMES = ("libasan.so", "libubsan.so")
# Run against the sanitized build: the native tests, and the suites whose applies and refusals
# reach csrc/ through the public API.
SUITES = (
    "tests/ops/native",
    "tests/reliability/test_fuzz_sft.py",
    "tests/reliability/test_op_inputs.py",
    "tests/sft/test_apply_semantics.py",
)

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

LOADED = """
import ctypes
from deftx.ops import dispatch, native

print(native.library_path())
print(hasattr(ctypes.CDLL(None), "__asan_init"))
print(dispatch.auto_backend("scatter", "cpu")[0])
"""


def _runtime_path(compiler: str, runtime: str) -> Path | None:
    """The compiler's own copy of a sanitizer runtime, or None if it has none."""
    printed = subprocess.run([compiler, f"-print-file-name={runtime}"], capture_output=True, text=True, check=True)
    path = Path(printed.stdout.strip())
    return path if path.is_absolute() and path.exists() else None


@pytest.fixture(scope="module")
def sanitized_env(tmp_path_factory) -> dict[str, str]:
    """Environment of a child Python that loads the sanitized build (built here, once)."""
    cmake, compiler = shutil.which("cmake"), shutil.which("g++")
    if cmake is None or compiler is None:
        pytest.skip("needs cmake and g++ on PATH")
    runtimes = [_runtime_path(compiler, runtime) for runtime in RUNTIMES]
    if None in runtimes:
        pytest.skip(f"g++ has no {' / '.join(RUNTIMES)}")
    build = tmp_path_factory.mktemp("native-sanitized")
    library = build / "deftx_native_sanitized.so"
    configure = [
        cmake, "-S", str(ROOT), "-B", str(build), "-DCMAKE_BUILD_TYPE=RelWithDebInfo",
        f"-DCMAKE_CXX_COMPILER={compiler}", f"-DDEFTX_NATIVE_SANITIZE={SANITIZERS}",
        f"-DDEFTX_NATIVE_OUTPUT={library}",
    ]
    for command in (configure, [cmake, "--build", str(build), "-j", "2"]):
        done = subprocess.run(command, capture_output=True, text=True)
        assert done.returncode == 0, done.stdout + done.stderr
    return {
        **os.environ,
        "LD_PRELOAD": " ".join(str(path) for path in runtimes),
        "ASAN_OPTIONS": "detect_leaks=0",
        "UBSAN_OPTIONS": "print_stacktrace=1",
        "DEFTX_NATIVE_LIBRARY": str(library),
        "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
    }


def _run(env: dict[str, str], *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def test_the_child_runs_the_sanitized_build(sanitized_env):
    done = _run(sanitized_env, "-c", LOADED, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [sanitized_env["DEFTX_NATIVE_LIBRARY"], "True", "native"]


def test_a_buffer_one_entry_short_is_reported_with_its_source_line(sanitized_env):
    done = _run(sanitized_env, "-c", SHORT_BUFFER, timeout=120)
    assert done.returncode != 0, done.stdout
    assert "returned" not in done.stdout
    assert "ERROR: AddressSanitizer: heap-buffer-overflow" in done.stderr, done.stderr[-3000:]
    assert "csrc/scatter.cpp" in done.stderr, done.stderr[-3000:]


def test_native_suites_pass_with_no_sanitizer_report(sanitized_env):
    this_file = f"--ignore={Path(__file__).relative_to(ROOT)}"
    done = _run(sanitized_env, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-x", this_file, *SUITES, timeout=1200)
    report = done.stdout[-3000:] + done.stderr[-6000:]
    assert done.returncode == 0, report
    assert "AddressSanitizer" not in done.stderr and "runtime error:" not in done.stderr, report
    assert " passed" in done.stdout.splitlines()[-1], report
