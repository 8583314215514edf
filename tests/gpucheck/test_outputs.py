"""The output folder: what comes back from a device call, the bundle, the result prefix."""

from __future__ import annotations

import json
import tarfile

import torch

from deftx.gpucheck.outputs import (
    MAX_RETURNED_FILES,
    bundle,
    publish,
    result_prefix,
    returnable_problems,
    write_json,
)


def test_result_prefix_names_the_gpu_or_the_device():
    assert result_prefix("cuda", "NVIDIA H200") == "h200"
    assert result_prefix("cuda", "NVIDIA H100 80GB HBM3") == "h100"
    assert result_prefix("cuda", "NVIDIA A100-SXM4-80GB") == "a100"
    assert result_prefix("cuda", "NVIDIA L40S") == "cuda"
    assert result_prefix("cpu", None) == "cpu"


def test_write_json_leaves_no_temporary_file(tmp_path):
    path = write_json(tmp_path / "a" / "doc.json", {"x": 1})
    assert json.loads(path.read_text()) == {"x": 1}
    assert [p.name for p in path.parent.iterdir()] == ["doc.json"]


def test_bundle_packs_the_work_folder_and_leaves_out_what_does_not_fit(tmp_path):
    work = tmp_path / "work"
    (work / "stage").mkdir(parents=True)
    (work / "stage" / "log.txt").write_text("hello\n")
    (work / "stage" / "big.bin").write_bytes(torch.randint(0, 256, (50_000,), dtype=torch.uint8).numpy().tobytes())
    (work / "stage" / "trace.json").write_text('{"event": 1}' * 4000)
    (work / "small.json").write_text("{}")
    left_out = bundle(work, tmp_path / "logs.tar.gz", limit_bytes=20_000)
    assert left_out == ["stage/big.bin (50,000 bytes)"]
    assert (tmp_path / "logs.tar.gz").stat().st_size <= 20_000
    with tarfile.open(tmp_path / "logs.tar.gz") as tar:
        names = sorted(tar.getnames())
        note = tar.extractfile("work/LEFT_OUT.txt").read().decode()
    assert names == ["work/LEFT_OUT.txt", "work/small.json", "work/stage/log.txt", "work/stage/trace.json"]
    assert "stage/big.bin" in note
    assert bundle(work, tmp_path / "all.tar.gz", limit_bytes=1 << 20) == []


def test_publish_copies_existing_sources_only(tmp_path):
    source = tmp_path / "a.json"
    source.write_text("{}")
    out = tmp_path / "out"
    publish(out, {"summary.json": source, "missing.json": tmp_path / "nope.json"})
    assert [p.name for p in out.iterdir()] == ["summary.json"]


def test_returnable_problems_apply_the_device_tool_limits(tmp_path):
    for i in range(MAX_RETURNED_FILES):
        (tmp_path / f"f{i}.json").write_text("{}")
    assert returnable_problems(tmp_path) == []
    (tmp_path / "one too many.txt").write_text("x")
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "x.txt").write_text("x")
    problems = returnable_problems(tmp_path)
    assert any("10 files, more than 8" in p for p in problems)
    assert any("one too many.txt: a name outside" in p for p in problems)
    assert any("a/b/c/x.txt: more than 2 folders deep" in p for p in problems)
