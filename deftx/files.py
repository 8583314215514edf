"""Files that are complete or absent: atomic writes with unique temporary names, consistent reads.

A write goes to a temporary file in the target's folder, named
``.<target>.tmp-<host>-<pid>-<random>`` (unique, so concurrent writers never share one),
is flushed to disk and renamed over the target. A failed write (an error, a full disk)
removes its temporary file; a killed writer cannot, so every later write to the same
target first removes the temporaries this host's dead processes left for it.

A read takes the whole file from one open descriptor: a concurrent atomic replace then
yields the old or the new file, never a mix; a file rewritten in place while it is read
is detected (its size or modification time changed) and refused.

Files that several processes share hold locks (``fcntl.flock``, released by the kernel when a holder
dies): :func:`locked` serialises the read-modify-write of a shared file (a ledger, an appended CSV),
so two processes appending at once keep both their lines; :func:`exclusive` lets one process at a
time own a folder (a run's results, a step's work folder) and refuses a second at once, naming the
holder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

TEMP_MARK = ".tmp-"


class FileChangedError(OSError):
    """A file was modified in place while it was being read."""


class BusyError(OSError):
    """Another process holds the exclusive lock of what this one was about to write."""


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


def lock_beside(path: str | os.PathLike) -> Path:
    """The lock file of ``path`` (a file or folder): ``.lock-<name>`` in the same folder (not ``.<name>…``, the
    prefix of its temporaries)."""
    path = Path(path)
    return path.with_name(f".lock-{path.name}")


@contextlib.contextmanager
def _flocked(lock_file: str | os.PathLike, when_held: Callable[[int], object]) -> Iterator[int]:
    """Open ``lock_file`` (created if missing) and take its exclusive lock for the block; when another
    process holds it, ``when_held(fd)`` is called first (it waits for the lock, or raises). Yields the fd."""
    lock_file = Path(lock_file)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            when_held(fd)
        yield fd
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(lock_file: str | os.PathLike, on_wait: Callable[[], object] | None = None) -> Iterator[None]:
    """Hold the exclusive lock of ``lock_file`` (created if missing) for the block, waiting for it when
    another process holds it: a read-modify-write under it sees every earlier writer's result.
    ``on_wait`` is called once, before waiting, when the lock is held elsewhere (to say so)."""

    def wait(fd: int) -> None:
        if on_wait is not None:
            on_wait()
        fcntl.flock(fd, fcntl.LOCK_EX)

    with _flocked(lock_file, wait):
        yield


def lock_holder(lock_file: Path) -> str:
    """Who holds ``lock_file`` as its holder wrote it (``pid 123 on host``), or ``unknown``."""
    try:
        return lock_file.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


@contextlib.contextmanager
def exclusive(lock_file: str | os.PathLike, what: str, advice: str) -> Iterator[None]:
    """Hold the exclusive lock of ``lock_file`` for the block, recording this process as its holder.

    Args:
        what: what the lock guards, for the error (``"results folder runs/x"``).
        advice: what to do instead, for the error.

    Raises:
        BusyError: another process holds it (naming that process): nothing waits.
    """
    lock_file = Path(lock_file)

    def refuse(fd: int) -> None:
        raise BusyError(f"{what} is in use by another process ({lock_holder(lock_file)}, "
                        f"holding {lock_file}); {advice}") from None

    with _flocked(lock_file, refuse) as fd:
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        yield
