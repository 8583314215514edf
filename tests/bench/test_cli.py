"""``deftx bench`` end to end on CPU with tiny shapes: outputs exist, parse, and hold sane numbers."""

from __future__ import annotations

import json
import math

import matplotlib.image
import pytest

from deftx.cli import main

TINY = {
    "name": "tiny",
    "tensors": [{"name": "embed", "shape": [1200, 64], "vocab": True}, {"name": "norm", "shape": [64]}],
    "num_layers": 2,
    "layer_tensors": [
        {"name": "q", "shape": [64, 64]},
        {"name": "ffn", "shape": [160, 64]},
        {"name": "b", "shape": [160]},
    ],
}
FAST = ["--device", "cpu", "--repeats", "1", "--no-progress"]


@pytest.fixture
def tiny_shapes(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return str(path)


def _positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _check_png(path) -> None:
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_suite_writes_json_png_and_markdown(tiny_shapes, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = main(
        [
            "bench",
            "--model-shapes",
            tiny_shapes,
            "--k",
            "0.01,0.1",
            "--scale",
            "0.5",
            "--no-memory",
            "--out",
            str(out),
            *FAST,
        ]
    )
    assert code == 0
    doc = json.loads((out / "cpu_tiny.json").read_text())
    _check_png(out / "cpu_tiny.png")
    assert (out / "cpu_tiny.md").read_text().startswith("| op | shapes | K |")

    assert doc["schema"] == "deftx-bench/1"
    assert doc["command"].startswith("deftx bench --ops topk,rsvd,scatter,step --model-shapes")
    assert "--scale 0.5" in doc["command"]
    assert doc["shape_set"]["scale"] == 0.5 and "1 of 2 layers" in doc["shape_set"]["note"]
    assert doc["shape_set"]["parameters"] == 600 * 64 + 64 + 64 * 64 + 160 * 64 + 160
    assert _positive_finite(doc["roofline"]["copy_gbps"]) and _positive_finite(doc["roofline"]["matmul_gflops"])
    assert doc["machine"]["cpu_count"] >= 1

    results = doc["results"]
    assert not [r for r in results if "error" in r]
    assert {r["op"] for r in results} == {"topk", "rsvd", "scatter", "step"}
    assert {r["k_fraction"] for r in results if r["op"] == "step"} == {0.01, 0.05, 0.1}
    for r in results:
        for key in ("time_s", "bytes", "gbps", "roofline_pct"):
            assert _positive_finite(r[key]), (r["op"], r["name"], key, r[key])
        assert all(_positive_finite(s) for s in r["samples_s"])
    rsvd = [r for r in results if r["op"] == "rsvd"]
    assert all(0 < r["relative_error"] < 1 for r in rsvd)
    assert sum(r["auto"] for r in rsvd) == 1

    assert doc["comparisons"]
    for c in doc["comparisons"]:
        assert _positive_finite(c["speedup"])
        assert math.isclose(c["speedup"], c["baseline_time_s"] / c["deftx_time_s"])
    printed = capsys.readouterr().out
    assert "speedup" in printed and "measured roofs: copy" in printed and "cpu_tiny.json" in printed


def test_suite_measures_peak_memory_of_each_implementation(tiny_shapes, tmp_path) -> None:
    out = tmp_path / "mem"
    assert (
        main(
            [
                "bench",
                "--ops",
                "topk",
                "--model-shapes",
                tiny_shapes,
                "--k",
                "0.1",
                "--scale",
                "1",
                "--out",
                str(out),
                *FAST,
            ]
        )
        == 0
    )
    doc = json.loads((out / "cpu_tiny.json").read_text())
    for r in doc["results"]:
        assert isinstance(r["peak_extra_bytes"], int) and r["peak_extra_bytes"] >= 0, r
        assert "RSS" in r["memory_method"]
    cat = next(r for r in doc["results"] if r["impl"] == "cat_topk")
    assert cat["peak_extra_bytes"] >= 4 * 1200 * 64 * 0.9  # at least the concatenated fp32 copy of the embedding


def test_scaling_study_streams_large_sets_and_skips_their_baselines(tiny_shapes, tmp_path, capsys) -> None:
    small = tmp_path / "small.json"
    small.write_text(json.dumps({**TINY, "name": "small", "num_layers": 1}))
    out = tmp_path / "scaling"
    code = main(
        [
            "bench",
            "--scaling",
            "--scaling-sets",
            f"{small},{tiny_shapes}",
            "--model-shapes",
            str(small),
            "--ops",
            "topk,scatter",
            "--k",
            "0.01,0.1",
            "--chunk-params",
            "95000",
            "--baseline-max-params",
            "1e9",
            "--no-memory",
            "--out",
            str(out),
            *FAST,
        ]
    )
    assert code == 0
    doc = json.loads((out / "cpu_scaling.json").read_text())
    _check_png(out / "cpu_scaling.png")
    sizes = {(r["op"], r["shape_set"]): r for r in doc["size_sweep"]}
    assert set(sizes) == {(op, s) for op in ("topk", "scatter") for s in ("small", "tiny")}
    assert sizes[("topk", "small")]["chunks"] == 1 and _positive_finite(sizes[("topk", "small")]["baseline_time_s"])
    streamed = sizes[("topk", "tiny")]
    assert streamed["chunks"] == 2 and streamed["largest_chunk_parameters"] <= 95000
    assert "baseline_time_s" not in streamed and "streamed" in streamed["baseline_skipped"]
    for r in doc["size_sweep"] + doc["k_sweep"]:
        assert _positive_finite(r["deftx_time_s"]) and _positive_finite(r["deftx_gbps"])
    assert sorted((r["op"], r["k_fraction"]) for r in doc["k_sweep"]) == [
        ("scatter", 0.01),
        ("scatter", 0.1),
        ("topk", 0.01),
        ("topk", 0.1),
    ]
    assert "streamed in chunks" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--ops", "topk,sort"], "unknown op"),
        (["--k", "0,0.1"], "fractions in"),
        (["--model-shapes", "no-such-model"], "unknown shape set"),
        (["--scale", "2"], "scale must be in"),
        (["--device", "tpu"], "cpu or cuda"),
    ],
)
def test_bad_arguments_exit_with_a_message(args, message, tmp_path) -> None:
    with pytest.raises(SystemExit, match=message):
        main(["bench", "--out", str(tmp_path), "--no-progress", *args])
