"""Finished steps shared between runs: a :class:`StepStore` keyed by the steps' identities.

A step (phase 1 of a sparse fine-tuning, a selection branch, the full fine-tuning
baseline) is identified by what its results depend on (:mod:`deftx.train.identity`). Before
running a step, its runner asks the store to *attach* the files of an equal step finished
by another run; after finishing it, it *publishes* them. ``deftx ablate`` shares phase 1
between variants this way, and a pipeline config's ``step_store`` links an ablation's
finished steps into the final run.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

from deftx.files import atomic_write, remove_stale_temps, stale_temps, temp_name
from deftx.train.identity import IDENTITY_FILE, digest

STORE_KEY_LENGTH = 32
STORE_MODE = 0o755
"""The mode of a store entry (a staging folder starts private)."""


class StepStore(Protocol):
    """Shares finished steps between runs."""

    def attach(self, work_dir: Path, identity: Mapping[str, Any], files: Sequence[str]) -> bool:
        """Put the stored ``files`` (paths relative to ``work_dir``) of an equal step into
        ``work_dir``, unless all are there already; True when they are all there afterwards. A file
        ``work_dir`` holds of its own (a run stopped between them) is replaced by the stored one: the
        step's files all come from one run."""

    def publish(self, work_dir: Path, identity: Mapping[str, Any], files: Sequence[str]) -> None:
        """Keep ``work_dir``'s finished ``files`` of this step for later runs (no-op if kept)."""


class LinkedStepStore:
    """A :class:`StepStore` over a folder, by hard links (no copies).

    A step is kept as ``<root>/<key>/<file name>`` (plus ``identity.json``), where the key
    is the digest of the step's identity; the file names of one step must be distinct.
    Files are linked, not copied (θ1 of e5-small is ~470 MB). Where a hard link is
    impossible (another file system) a run attaches a symbolic link to the store's file, and
    the store keeps a copy of a published file (written atomically): a symbolic link would
    follow the run's path, which the run may delete (θ1) or fill with another step's result.
    Every file deftx writes is replaced atomically (a new inode), never rewritten in place,
    so a linked file stays intact in the store and in every run that shares it, and a run
    deleting its own link (θ1 once its branches are done) leaves the store's.

    ``attached`` and ``published`` count the steps reused and kept, by their ``step`` name.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.attached: Counter[str] = Counter()
        self.published: Counter[str] = Counter()

    def folder(self, identity: Mapping[str, Any]) -> Path:
        """Where the step of ``identity`` is kept."""
        return self.root / digest(dict(identity))[:STORE_KEY_LENGTH]

    @staticmethod
    def _names(files: Sequence[str]) -> list[str]:
        names = [Path(name).name for name in files]
        if len(set(names)) != len(names):
            raise ValueError(f"the files of one step need distinct names, got {list(files)}")
        return names

    @staticmethod
    def _link(source: Path, target: Path, *, own: bool) -> None:
        """Hard-link ``source`` at ``target`` (atomically); where that is impossible, a copy when the
        target must ``own`` its bytes (the store's), else a symbolic link to ``source``."""
        target.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_temps(target)
        partial = temp_name(target)
        try:
            os.link(source, partial)
        except OSError:
            if own:
                atomic_write(target, lambda temporary: shutil.copyfile(source, temporary))
                return
            os.symlink(source.resolve(), partial)
        os.replace(partial, target)

    def attach(self, work_dir: Path, identity: Mapping[str, Any], files: Sequence[str]) -> bool:
        names = self._names(files)
        if all((work_dir / name).is_file() for name in files):
            return True
        folder = self.folder(identity)
        if not all((folder / name).is_file() for name in names):
            return False
        for relative, name in zip(files, names, strict=True):
            self._link(folder / name, work_dir / relative, own=False)
        self.attached[str(identity.get("step"))] += 1
        return True

    def publish(self, work_dir: Path, identity: Mapping[str, Any], files: Sequence[str]) -> None:
        """Keep ``work_dir``'s ``files`` as one entry: linked into a staging folder, which is then renamed into
        place whole, so that two runs publishing an equal step at once leave the entry of one of them, never
        one's files beside the other's. The staging folder (a temporary of the entry's, :func:`deftx.files.temp_name`)
        of a process of this host killed before the rename is removed by the next publish of the step: it holds
        hard links to the killed run's files (θ1: hundreds of MB)."""
        names = self._names(files)
        folder = self.folder(identity)
        if all((folder / name).is_file() for name in names):
            return
        self.root.mkdir(parents=True, exist_ok=True)
        for stale in stale_temps(folder):  # staged (or retired) by a process of this host killed in its publish
            shutil.rmtree(stale, ignore_errors=True)
        staging = temp_name(folder)
        staging.mkdir(mode=0o700)
        try:
            staging.chmod(STORE_MODE)
            for relative, name in zip(files, names, strict=True):
                self._link(work_dir / relative, staging / name, own=True)
            (staging / IDENTITY_FILE).write_text(json.dumps(dict(identity), indent=2, sort_keys=True) + "\n")
            if self._install(staging, folder, names):
                self.published[str(identity.get("step"))] += 1
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @staticmethod
    def _install(staging: Path, folder: Path, names: Sequence[str]) -> bool:
        """Rename the complete entry ``staging`` to ``folder``; False when an entry holding every one of
        ``names`` is there first (an equal step's: it stays). An entry lacking some (left by a deftx that
        published file by file) is replaced."""
        installed = LinkedStepStore._renamed_into_place(staging, folder, names)
        if installed is not None:
            return installed
        retired = temp_name(folder)
        with contextlib.suppress(FileNotFoundError):
            os.rename(folder, retired)
        try:
            installed = LinkedStepStore._renamed_into_place(staging, folder, names)
        finally:
            shutil.rmtree(retired, ignore_errors=True)
        if installed is None:
            raise FileExistsError(f"{folder}: an incomplete store entry came back while this one was installed")
        return installed

    @staticmethod
    def _renamed_into_place(staging: Path, folder: Path, names: Sequence[str]) -> bool | None:
        """Rename ``staging`` to ``folder``: True when done, False when an entry holding every one of ``names``
        is there (it stays), None when an incomplete entry is in the way."""
        try:
            os.rename(staging, folder)
            return True
        except OSError:
            return False if all((folder / name).is_file() for name in names) else None
