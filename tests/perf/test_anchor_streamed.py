"""The anchor table's streamed row (deftx.perf.anchor_streamed): the sharded pair it writes, the
child's figures and the table."""

from __future__ import annotations

import json

import pytest
import torch

from deftx.ops import topk_mask
from deftx.ops.topk_streamed import checkpoint_files, checkpoint_tensors, select_streamed
from deftx.perf import anchor_streamed
from deftx.perf.shapes import TensorShape

SHAPES = [TensorShape("embed", (300, 16)), TensorShape("norm", (16,)), TensorShape("q", (16, 16))]


def test_write_pair_shards_both_checkpoints_with_an_index(tmp_path):
    theta1, theta0 = anchor_streamed.write_pair(SHAPES, tmp_path / "pair", torch.bfloat16, shard_bytes=5000)
    for folder in (theta1, theta0):
        assert len(checkpoint_files(folder)) == 2
        stored = checkpoint_tensors(folder)
        assert {n: (t.kind, t.shape) for n, t in stored.items()} == {s.name: ("BF16", s.shape) for s in SHAPES}
    selection = select_streamed(theta1, theta0, 40)
    assert sum(int(i.numel()) for i in selection.indices.values()) == 40 and selection.full_passes == 2


def test_measure_reports_the_call_read_and_memory(tmp_path):
    theta1, theta0 = anchor_streamed.write_pair(SHAPES, tmp_path / "pair", torch.float16)
    row = anchor_streamed.measure(theta1, theta0, 0.05)
    numel = 300 * 16 + 16 + 16 * 16
    assert row["numel"] == numel and row["k"] == round(0.05 * numel) == row["entries"]
    assert row["full_passes"] == 2 and row["bytes_read"] == 2 * 2 * numel * 2
    assert row["peak_rss_bytes"] > 0 and row["first_call_s"] > 0


def test_the_pair_is_theta0_plus_small_noise(tmp_path):
    from safetensors.torch import load_file

    theta1, theta0 = anchor_streamed.write_pair(SHAPES, tmp_path / "pair", torch.float32)
    one = load_file(str(checkpoint_files(theta1)[0]))
    zero = load_file(str(checkpoint_files(theta0)[0]))
    assert 0.04 < float(zero["embed"].std()) < 0.06
    assert float((one["embed"] - zero["embed"]).abs().max()) < 0.01
    k = 10
    diffs = [one[s.name] - zero[s.name] for s in sorted(SHAPES, key=lambda s: s.name)]
    want = topk_mask(diffs, k, output="indices")
    got = select_streamed(theta1, theta0, k).indices
    assert [g.tolist() for g in got.values()] == [w.tolist() for w in want]


def test_main_writes_the_table_and_removes_the_pair(tmp_path, monkeypatch):
    shape_file = tmp_path / "tiny.json"
    shape_file.write_text(json.dumps({"name": "tiny", "tensors": [{"name": s.name, "shape": list(s.shape)}
                                                                  for s in SHAPES]}))
    monkeypatch.setattr(anchor_streamed, "run_fresh", anchor_streamed.measure)
    out = tmp_path / "out"
    assert anchor_streamed.main(["--shapes", str(shape_file), "--scratch", str(tmp_path / "scratch"),
                                 "--out", str(out)]) == 0
    assert not (tmp_path / "scratch").exists()
    row = json.loads((out / "anchor_streamed_tiny.json").read_text())
    assert row["entries"] == row["k"] and row["dtype"] == "bf16" and row["write_s"] >= 0
    table = (out / "anchor_streamed_tiny.md").read_text()
    assert "select_streamed" in table and "2 full passes" in table


def test_main_needs_a_scratch_folder():
    with pytest.raises(SystemExit, match="--scratch"):
        anchor_streamed.main(["--shapes", "e5-small"])


@pytest.mark.parametrize(("growth", "cell"), [(None, "| - |"), (0, "| +0.0 MB |"), (2_500_000_000, "| +2.50 GB |"),
                                              (-100_000, "| -0.1 MB |"), (-2_500_000_000, "| -2.50 GB |")])
def test_table_shows_unmeasured_growth_as_a_dash_not_zero(growth, cell):
    row = {"shapes": "llama-7b", "numel": 6_738_415_616, "dtype": "bf16", "element_bytes": 2, "first_call_s": 100.0,
           "peak_rss_bytes": 3_000_000_000, "peak_extra_bytes": growth, "entries": 5, "k": 5, "k_fraction": 0.01,
           "full_passes": 2, "bytes_read": 53_907_324_928, "candidates": 3, "write_s": 10.0, "load_before": 1.0,
           "load_after": 1.0}
    assert f"| 3.00 GB {cell} k |" in anchor_streamed.markdown(row)
