"""The ctypes loader of the native library: loading, ABI check, reasons when it is missing."""

from __future__ import annotations

import shutil
import sysconfig

import pytest

from deftx.ops import dispatch, native
from tests.ops.native.flushing import ROOT


@pytest.fixture
def fresh_loader(monkeypatch):
    """Forget the cached library before and after the test (which may monkeypatch paths), and
    load the built library whatever ``$DEFTX_NATIVE_LIBRARY`` says."""
    monkeypatch.delenv(native.LIBRARY_ENV, raising=False)
    native._load.cache_clear()
    yield
    native._load.cache_clear()


def test_built_library_loads_with_matching_abi():
    if native.library_path() is None:
        pytest.skip(native.unavailable_reason() or "native library not built")
    assert native.unavailable_reason() is None
    assert native.library().deftx_native_abi_version() == native.ABI_VERSION


def test_failed_build_reports_build_status(tmp_path, monkeypatch, fresh_loader):
    (tmp_path / "BUILD_STATUS.txt").write_text("native backend not built: cmake not found\n")
    monkeypatch.setattr(native, "NATIVE_DIR", tmp_path)
    reason = native.unavailable_reason()
    assert reason is not None and "cmake not found" in reason
    with pytest.raises(native.NativeUnavailableError, match="cmake not found"):
        native.library()


def test_missing_library_without_status_says_how_to_build(tmp_path, monkeypatch, fresh_loader):
    monkeypatch.setattr(native, "NATIVE_DIR", tmp_path)
    reason = native.unavailable_reason()
    assert reason is not None and "make native" in reason


def test_abi_mismatch_is_refused(monkeypatch, fresh_loader):
    if native.library_path() is None:
        pytest.skip("native library not built")
    monkeypatch.setattr(native, "ABI_VERSION", native.ABI_VERSION + 1)
    reason = native.unavailable_reason()
    assert reason is not None and "ABI version" in reason


@pytest.mark.parametrize(
    ("status", "error"),
    [(1, ValueError), (2, MemoryError), (3, ValueError), (77, RuntimeError)],
)
def test_nonzero_status_raises(status, error):
    with pytest.raises(error, match="deftx_fn"):
        native.check_status(status, "deftx_fn")


def test_zero_status_passes():
    native.check_status(0, "deftx_fn")


def test_the_environment_names_another_build(tmp_path, monkeypatch, fresh_loader):
    if native.library_path() is None:
        pytest.skip("native library not built")
    other = tmp_path / "deftx_native_other.so"
    shutil.copyfile(native.library_path(), other)
    monkeypatch.setenv(native.LIBRARY_ENV, str(other))
    assert native.library_path() == other
    assert native.unavailable_reason() is None
    assert dispatch.auto_backend("topk", "cpu") == (
        "native", f"native C++ library (OpenMP) from $DEFTX_NATIVE_LIBRARY ({other})"
    )


def test_the_environment_naming_no_file_is_a_reason(tmp_path, monkeypatch, fresh_loader):
    monkeypatch.setenv(native.LIBRARY_ENV, str(tmp_path / "absent.so"))
    assert native.unavailable_reason() == f"$DEFTX_NATIVE_LIBRARY names {tmp_path / 'absent.so'}, which is not a file"
    assert dispatch.auto_backend("topk", "cpu")[0] == "torch"


def test_a_build_needing_an_absent_runtime_is_refused_before_loading(tmp_path, monkeypatch, fresh_loader):
    """Loading it would abort the process (the sanitizer runtime must come first), so the file
    is read for the runtime's name, and the reason says how to start Python instead."""
    library = tmp_path / "deftx_native_sanitized.so"
    library.write_bytes(b"\x7fELF not a library, but it names libdeftx-check-rt.so")
    monkeypatch.setattr(native, "_PRELOADED_RUNTIMES", {b"libdeftx-check-rt.so": "__deftx_check_rt_init"})
    monkeypatch.setenv(native.LIBRARY_ENV, str(library))
    reason = native.unavailable_reason()
    assert reason is not None and "sanitized build" in reason and "LD_PRELOAD naming libdeftx-check-rt.so" in reason
    with pytest.raises(native.NativeUnavailableError, match="LD_PRELOAD"):
        native.library()


@pytest.mark.parametrize(
    ("names", "tools", "expected"),
    [
        (b"libtsan.so.2 libgomp.so.1", "/usr/lib/llvm-14/lib/libarcher.so", "gcc's OpenMP runtime"),
        (b"libtsan.so.2 libomp.so.5", None, "set OMP_TOOL_LIBRARIES to LLVM's libarcher.so"),
        (b"libtsan.so.2 libomp.so.5", "/opt/other-tool.so", "set OMP_TOOL_LIBRARIES to LLVM's libarcher.so"),
    ],
)
def test_a_thread_sanitizer_build_that_would_report_openmp_itself_is_refused(
    tmp_path, monkeypatch, fresh_loader, names, tools, expected
):
    """TSan without LLVM's OpenMP runtime and its tool archer calls every OpenMP barrier a race."""
    library = tmp_path / "deftx_native_tsan.so"
    library.write_bytes(b"\x7fELF not a library, but it names " + names)
    monkeypatch.setattr(native, "_PRELOADED_RUNTIMES", {})
    monkeypatch.setenv(native.LIBRARY_ENV, str(library))
    if tools is None:
        monkeypatch.delenv("OMP_TOOL_LIBRARIES", raising=False)
    else:
        monkeypatch.setenv("OMP_TOOL_LIBRARIES", tools)
    reason = native.unavailable_reason()
    assert reason is not None and "ThreadSanitizer build" in reason and expected in reason


def test_a_thread_sanitizer_build_with_archer_named_goes_on_to_load(tmp_path, monkeypatch, fresh_loader):
    library = tmp_path / "deftx_native_tsan.so"
    library.write_bytes(b"\x7fELF not a library, but it names libtsan.so.2 libomp.so.5")
    monkeypatch.setattr(native, "_PRELOADED_RUNTIMES", {})
    monkeypatch.setenv(native.LIBRARY_ENV, str(library))
    monkeypatch.setenv("OMP_TOOL_LIBRARIES", "/usr/lib/llvm-14/lib/libarcher.so")
    assert native.unavailable_reason().startswith("cannot load native library deftx_native_tsan.so")


def _sources_copy(tmp_path, monkeypatch):
    """A copy of csrc/ that the loader takes for the checkout's sources."""
    copy = tmp_path / "csrc"
    shutil.copytree(ROOT / "csrc", copy)
    monkeypatch.setattr(native, "SOURCE_DIR", copy, raising=False)
    return copy


def test_the_built_library_matches_its_sources(tmp_path, monkeypatch, fresh_loader):
    """CMake's fingerprint of csrc/ and the loader's agree (else every build would be refused)."""
    if native.library_path() is None:
        pytest.skip("native library not built")
    _sources_copy(tmp_path, monkeypatch)
    assert native.unavailable_reason() is None


def test_a_library_built_from_other_sources_is_refused(tmp_path, monkeypatch, fresh_loader):
    """A source edited after the build: the stale library used to load (its ABI version
    unchanged) and ran the old code."""
    if native.library_path() is None:
        pytest.skip("native library not built")
    copy = _sources_copy(tmp_path, monkeypatch)
    edited = copy / "topk.cpp"
    edited.write_text(edited.read_text() + "// edited after the build\n")
    reason = native.unavailable_reason()
    assert reason is not None and "built from other sources" in reason and "make native" in reason
    with pytest.raises(native.NativeUnavailableError, match="stale build"):
        native.library()


def test_without_a_checkout_the_sources_are_not_compared(tmp_path, monkeypatch, fresh_loader):
    """An installed wheel has no csrc/ beside the package."""
    if native.library_path() is None:
        pytest.skip("native library not built")
    monkeypatch.setattr(native, "SOURCE_DIR", tmp_path / "absent", raising=False)
    assert native.unavailable_reason() is None


def test_the_build_for_this_interpreter_is_preferred(tmp_path, monkeypatch, fresh_loader):
    """`make native` under another Python leaves its build beside this one's; the first name in
    sorted order used to be loaded whichever interpreter it was built for."""
    if native.library_path() is None:
        pytest.skip("native library not built")
    own = tmp_path / f"deftx_native{sysconfig.get_config_var('EXT_SUFFIX')}"
    shutil.copyfile(native.library_path(), own)
    (tmp_path / "deftx_native.cpython-30-x86_64-linux-gnu.so").write_bytes(b"\x7fELF another build")
    monkeypatch.setattr(native, "NATIVE_DIR", tmp_path)
    assert native.library_path() == own
    assert native.unavailable_reason() is None


def test_the_environment_naming_a_file_in_the_working_directory_loads_it(tmp_path, monkeypatch, fresh_loader):
    """A bare file name passed the is_file check (relative to the working directory), but dlopen
    searched the library path for it: 'cannot open shared object file', or another library."""
    if native.library_path() is None:
        pytest.skip("native library not built")
    shutil.copyfile(native.library_path(), tmp_path / "deftx_native_here.so")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(native.LIBRARY_ENV, "deftx_native_here.so")
    assert native.unavailable_reason() is None
