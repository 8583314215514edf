"""Files that are complete or absent: atomic writes with unique temporary names, consistent reads.

A write goes to a temporary file in the target's folder, named
``.<target>.tmp-<host>-<pid>-<random>`` (unique, so concurrent writers never share one),
is flushed to disk and renamed over the target. A failed write (an error, a full disk)
removes its temporary file; a killed writer cannot, so every later write to the same
target first removes the temporaries this host's dead processes left for it.

A read takes the whole file from one open descriptor: a concurrent atomic replace then
yields the old or the new file, never a mix; a file rewritten in place while it is read
is detected (its size or modification time changed) and refused.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
from collections.abc import Callable
from pathlib import Path

TEMP_MARK = ".tmp-"


class FileChangedError(OSError):
    """A file was modified in place while it was being read."""


def temp_name(target: Path) -> Path:
    """A fresh temporary path beside ``target`` that names this host and process."""
    token = secrets.token_hex(4)
    return target.with_name(f".{target.name}{TEMP_MARK}{socket.gethostname()}-{os.getpid()}-{token}")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stale_temps(target: Path) -> list[Path]:
    """Temporary files of ``target`` left by dead processes of this host."""
    prefix = f".{target.name}{TEMP_MARK}{socket.gethostname()}-"
    stale = []
    if not target.parent.is_dir():
        return stale
    for entry in target.parent.iterdir():
        if not entry.name.startswith(prefix):
            continue
        pid, _, _ = entry.name[len(prefix):].partition("-")
        if pid.isascii() and pid.isdigit() and int(pid) != os.getpid() and not _pid_alive(int(pid)):
            stale.append(entry)
    return stale


def remove_stale_temps(target: Path) -> None:
    """Delete the temporaries of ``target`` that this host's dead processes left."""
    for entry in stale_temps(target):
        entry.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(target: str | os.PathLike, write: Callable[[Path], None]) -> None:
    """Create or replace ``target`` with what ``write(temporary_path)`` writes, atomically.

    The target keeps its previous content unless the write completed; the temporary file
    is removed on any error (including a full disk).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target)
    tmp = temp_name(target)
    try:
        write(tmp)
        _fsync(tmp)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(target: str | os.PathLike, data: bytes) -> None:
    """:func:`atomic_write` of a byte string."""
    atomic_write(target, lambda tmp: tmp.write_bytes(data))


def read_consistent(path: str | os.PathLike) -> bytes:
    """Every byte of ``path``, read through one descriptor.

    Raises:
        FileNotFoundError: no such file (or it is a directory).
        FileChangedError: the file was modified in place during the read.
    """
    path = Path(path)
    try:
        handle = path.open("rb")
    except IsADirectoryError as err:
        raise FileNotFoundError(errno.ENOENT, "not a file", str(path)) from err
    with handle:
        before = os.fstat(handle.fileno())
        data = handle.read()
        after = os.fstat(handle.fileno())
    if (before.st_size, before.st_mtime_ns) != (after.st_size, after.st_mtime_ns) or len(data) != after.st_size:
        raise FileChangedError(errno.EBUSY, "the file was modified while being read", str(path))
    return data
