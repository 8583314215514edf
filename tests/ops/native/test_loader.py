"""The ctypes loader of the native library: loading, ABI check, reasons when it is missing."""

from __future__ import annotations

import pytest

from deftx.ops import native


@pytest.fixture
def fresh_loader():
    """Forget the cached library before and after the test (which may monkeypatch paths)."""
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
