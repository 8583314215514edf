"""Fixtures for the data reader tests: the real data root and builders of small fake roots."""

from __future__ import annotations

from pathlib import Path

import pytest

from deftx.data import default_data_dir


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The real data root (``$DEFTX_DATA_DIR`` or ``../shared/data``)."""
    return default_data_dir()


def write_file(root: Path, relative: str, text: str) -> Path:
    """Create ``root / relative`` (and its parents) holding ``text`` as UTF-8."""
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="")
    return path
