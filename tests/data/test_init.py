"""deftx.data.default_data_dir: environment variable, fallbacks, and the error naming what was tried."""

from __future__ import annotations

import pytest

import deftx.data
from deftx.data import DATA_DIR_ENV, default_data_dir


def test_env_variable_wins(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert default_data_dir() == tmp_path


def test_env_variable_pointing_nowhere_is_an_error(tmp_path, monkeypatch):
    missing = tmp_path / "nope"
    monkeypatch.setenv(DATA_DIR_ENV, str(missing))
    with pytest.raises(FileNotFoundError, match="nope"):
        default_data_dir()


def test_cwd_relative_candidate(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert default_data_dir() == (tmp_path / "shared" / "data").resolve()


def test_repo_relative_candidate(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(deftx.data, "_REPO_ROOT", tmp_path / "repo")
    (tmp_path / "repo").mkdir()
    (tmp_path / "shared" / "data").mkdir(parents=True)
    work = tmp_path / "elsewhere" / "work"
    work.mkdir(parents=True)
    monkeypatch.chdir(work)
    assert default_data_dir() == (tmp_path / "shared" / "data").resolve()


def test_nothing_found_names_every_candidate(tmp_path, monkeypatch):
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)
    monkeypatch.setattr(deftx.data, "_REPO_ROOT", tmp_path / "repo")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    with pytest.raises(FileNotFoundError) as info:
        default_data_dir()
    message = str(info.value)
    assert DATA_DIR_ENV in message
    assert str(work / ".." / "shared" / "data") in message
    assert str(tmp_path / "repo" / ".." / "shared" / "data") in message
