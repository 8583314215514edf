"""Files complete or absent: interrupted and full-disk saves keep the old file, concurrent writers
never mix into a read, dead writers' temporaries are cleaned up (deftx.files, SparseDiff.save/load)."""

from __future__ import annotations

import errno
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from deftx.files import atomic_write, read_consistent, temp_name
from deftx.sft import ParamInfo, SparseDiff, SparseDiffFormatError

ROOT = Path(__file__).resolve().parents[1]


def diff(seed: int, n: int = 4000) -> SparseDiff:
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(10 * n, generator=gen)[:n].sort().values
    return SparseDiff({"w": idx}, {"w": torch.randn(n, generator=gen)}, {"w": ParamInfo((10 * n,), torch.float32)},
                      method=f"seed-{seed}")


def same(a: SparseDiff, b: SparseDiff) -> bool:
    return a.method == b.method and torch.equal(a.indices["w"], b.indices["w"]) and torch.equal(
        a.values["w"].view(torch.int32), b.values["w"].view(torch.int32))


def full_disk_after(nbytes: int):
    """A ``Path.write_bytes`` that writes ``nbytes`` of the file, then fails like a full disk."""
    def write_bytes(self, data):
        with open(self, "wb") as file:
            file.write(bytes(data[:nbytes]))
        raise OSError(errno.ENOSPC, "No space left on device", str(self))
    return write_bytes


def test_a_save_hitting_a_full_disk_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "sft.safetensors"
    old = diff(1)
    old.save(path)
    monkeypatch.setattr(Path, "write_bytes", full_disk_after(100))
    with pytest.raises(OSError, match="No space left"):
        diff(2).save(path)
    assert same(SparseDiff.load(path), old)
    assert [p.name for p in tmp_path.iterdir()] == ["sft.safetensors"], "the partial temporary is removed"


def test_an_interrupted_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "sft.safetensors"
    old = diff(1)
    old.save(path)

    def interrupted(self, data):
        with open(self, "wb") as file:
            file.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_bytes", interrupted)
    with pytest.raises(KeyboardInterrupt):
        diff(2).save(path)
    assert same(SparseDiff.load(path), old)
    assert [p.name for p in tmp_path.iterdir()] == ["sft.safetensors"]


def test_temporaries_of_dead_writers_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "sft.safetensors"
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = Path(str(temp_name(target)).replace(f"-{__import__('os').getpid()}-", f"-{child.stdout.strip()}-"))
    dead.write_bytes(b"left by a killed writer")
    live = temp_name(target.with_name("other"))  # another target's temporary, this (live) process
    live.write_bytes(b"in progress")
    diff(1).save(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([target.name, live.name])


def test_atomic_write_replaces_only_once_complete(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old")
    with pytest.raises(ValueError, match="boom"):
        atomic_write(target, lambda tmp: (tmp.write_bytes(b"new, half"), (_ for _ in ()).throw(ValueError("boom"))))
    assert target.read_bytes() == b"old"
    atomic_write(target, lambda tmp: tmp.write_bytes(b"new"))
    assert target.read_bytes() == b"new" and read_consistent(target) == b"new"


WRITER = """
import os, sys, time
target, a, b, seconds, mode = sys.argv[1], open(sys.argv[2], "rb").read(), open(sys.argv[3], "rb").read(), \\
    float(sys.argv[4]), sys.argv[5]
end, n = time.time() + seconds, 0
while time.time() < end:
    data = (a, b)[n % 2]
    n += 1
    if mode == "replace":  # what SparseDiff.save does: a temporary, then an atomic rename
        with open(target + ".tmp", "wb") as f:
            f.write(data)
        os.replace(target + ".tmp", target)
    else:  # a tool rewriting the file in place, in chunks
        with open(target, "r+b") as f:
            f.truncate(0)
            for i in range(0, len(data), 4096):
                f.write(data[i : i + 4096])
                f.flush()
"""


def start_writer(tmp_path, mode: str, seconds: float):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    diff(1).save(a)
    diff(2).save(b)
    target = tmp_path / "sft.safetensors"
    target.write_bytes(a.read_bytes())
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(a), str(b), str(seconds), mode])
    return writer, target


def test_loads_during_atomic_replaces_give_the_old_or_the_new_file(tmp_path):
    writer, target = start_writer(tmp_path, "replace", 4.0)
    a, b = diff(1), diff(2)
    outcomes = {"a": 0, "b": 0}
    try:
        time.sleep(0.3)
        while writer.poll() is None:
            loaded = SparseDiff.load(target)
            key = "a" if same(loaded, a) else "b" if same(loaded, b) else None
            assert key is not None, "a load mixed the two files"
            outcomes[key] += 1
    finally:
        writer.wait()
    assert writer.returncode == 0
    assert outcomes["a"] and outcomes["b"], outcomes


READER = """
import sys, time, torch
from deftx.sft import SparseDiff, SparseDiffFormatError
target, seconds = sys.argv[1], float(sys.argv[2])
a, b = SparseDiff.load(sys.argv[3]), SparseDiff.load(sys.argv[4])
def same(x, y):
    return torch.equal(x.indices["w"], y.indices["w"]) and torch.equal(x.values["w"], y.values["w"])
counts = {"a": 0, "b": 0, "refused": 0, "missing": 0}
end = time.time() + seconds
while time.time() < end:
    try:
        loaded = SparseDiff.load(target)
    except SparseDiffFormatError:
        counts["refused"] += 1
        continue
    except FileNotFoundError:
        counts["missing"] += 1
        continue
    key = "a" if same(loaded, a) else "b" if same(loaded, b) else None
    if key is None:
        sys.exit("a load returned neither file")
    counts[key] += 1
print(counts)
"""


def test_an_in_place_rewrite_never_crashes_a_reader(tmp_path):
    """A tool rewriting the file in place: reads are the old file, the new one, or refused; never a SIGBUS."""
    writer, target = start_writer(tmp_path, "in-place", 30.0)
    try:
        reader = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(READER), str(target), "2", str(tmp_path / "a.safetensors"),
             str(tmp_path / "b.safetensors")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    finally:
        writer.kill()
        writer.wait()
    assert reader.returncode == 0, f"reader died ({reader.returncode}): {reader.stderr[-1500:]}"
    counts = eval(reader.stdout.strip().splitlines()[-1])
    assert counts["refused"] + counts["a"] + counts["b"] > 0, counts


def test_refused_file_reads_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError):
        SparseDiff.load(tmp_path / "absent.safetensors")
    with pytest.raises(SparseDiffFormatError, match="a folder without an SFT in it"):
        SparseDiff.load(tmp_path)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    with pytest.raises(SparseDiffFormatError, match="truncated"):
        SparseDiff.load(tmp_path / "empty.safetensors")
