"""``deftx bench`` end to end on CPU with tiny shapes: outputs exist, parse, and hold sane numbers."""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import matplotlib.image
import pytest
import torch

from deftx.cli import main
from deftx.commands.bench import add_prediction
from deftx.perf.shapes import shape_set_from_json

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


def bench(out, *args: str) -> int:
    """``deftx bench ARGS --out OUT`` on CPU, one timed call per case."""
    return main(["bench", *args, "--out", str(out), *FAST])


def _positive_finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def _check_png(path) -> None:
    image = matplotlib.image.imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_suite_writes_json_png_and_markdown(tiny_shapes, tmp_path, capsys) -> None:
    out = tmp_path / "out"
    assert bench(out, "--model-shapes", tiny_shapes, "--k", "0.01,0.1", "--scale", "0.5", "--no-memory") == 0
    doc = json.loads((out / "cpu_tiny.json").read_text())
    _check_png(out / "cpu_tiny.png")
    assert (out / "cpu_tiny.md").read_text().startswith("| op | shapes | K |")
    assert "Predicted vs measured" not in (out / "cpu_tiny.md").read_text()
    assert "predicted" not in doc  # a CPU run without --predict-target

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


def test_predict_target_on_cpu_puts_predicted_next_to_measured(tiny_shapes, tmp_path, capsys) -> None:
    out = tmp_path / "predicted"
    args = ("--ops", "topk,scatter", "--model-shapes", tiny_shapes, "--k", "0.1", "--scale", "1", "--no-memory")
    assert bench(out, *args, "--predict-target", "sm_90") == 0
    doc = json.loads((out / "cpu_tiny.json").read_text())
    assert doc["command"].endswith("--predict-target sm_90")
    section = doc["predicted"]
    assert section["target"]["arch"] == "sm_90" and section["target"]["hbm_bytes_per_s"] == 3.35e12
    assert section["measured_on"].startswith("cpu (")
    measured = [(r["op"], r["impl"]) for r in doc["results"] if "error" not in r]
    assert [(r["op"], r["impl"]) for r in section["rows"]] == measured
    modelled = [r for r in section["rows"] if r["model"] is not None]
    assert {r["impl"] for r in section["rows"]} - {r["impl"] for r in modelled} == {"cat_kthvalue"}
    for r in modelled:
        assert _positive_finite(r["predicted_time_s"]) and _positive_finite(r["measured_over_predicted"])
        assert math.isclose(r["measured_over_predicted"], r["measured_time_s"] / r["predicted_time_s"])
    # topk on 105,856 fp32 entries, K = 10,586, 12 blocks: 2 full passes over the scores + the
    # candidate list (its capacity k + 2^16 < N: k entries bracketed from 16,384 samples; 8 B per
    # entry, written once, read by 4 radix passes, the classification and the compaction) +
    # indices + the samples (6 x 8 B each) + 128 B per block
    n, k = 1200 * 64 + 64 + 2 * (64 * 64 + 160 * 64 + 160), 10586
    topk = next(r for r in section["rows"] if r["op"] == "topk" and r["role"] == "deftx")
    assert topk["predicted_bytes"] == 2 * n * 4 + 7 * 8 * k + 8 * k + 6 * 8 * 16384 + 12 * 128
    assert math.isclose(topk["predicted_time_s"], topk["predicted_bytes"] / 3.35e12)

    markdown = (out / "cpu_tiny.md").read_text()
    first, _, second = markdown.partition("\n\n## Predicted vs measured\n")
    assert first.startswith("| op | shapes | K | deftx |") and second
    assert "predicted for NVIDIA H100 SXM (sm_90" in second and "| measured/predicted |" in second
    assert second.count("\n| topk | tiny | 10% |") == len([r for r in measured if r[0] == "topk"])
    printed = capsys.readouterr().out
    assert "predicted for NVIDIA H100 SXM" in printed and "measured on cpu" in printed


def _gpu_doc(device: str, gpu: str) -> dict:
    shapes = shape_set_from_json(TINY)
    rows = [
        {"op": "topk", "impl": "deftx:triton", "name": "deftx[triton]", "role": "deftx", "auto": True},
        {"op": "topk", "impl": "cat_topk", "name": "torch.cat+topk", "role": "baseline", "auto": False},
    ]
    return {
        "device": device,
        "machine": {"cpu": "host", "gpu": gpu},
        "config": {"dtype": "bf16", "rank": 32, "oversample": 8, "n_iter": 2},
        "shape_set": {"name": "tiny", "parameters": shapes.numel},
        "results": [{**r, "k_fraction": 0.01, "time_s": 1e-4 * (i + 1)} for i, r in enumerate(rows)],
    }


def test_cuda_runs_get_the_prediction_without_the_flag(capsys) -> None:
    shapes, no_flag = shape_set_from_json(TINY), argparse.Namespace(predict_target=None)
    doc = _gpu_doc("cuda", "NVIDIA H100 80GB HBM3")
    markdown = add_prediction(doc, no_flag, "cuda", shapes)
    assert doc["predicted"]["target"]["arch"] == "sm_90" and "detected from the GPU name" in doc["predicted"]["choice"]
    assert [r["measured_speedup"] for r in doc["predicted"]["rows"]] == [None, 2.0]
    assert markdown.startswith("## Predicted vs measured") and "| topk | tiny | 1% | torch.cat+topk |" in markdown
    assert "measured on cuda (NVIDIA H100 80GB HBM3)" in capsys.readouterr().out

    unknown = _gpu_doc("cuda:0", "NVIDIA L40S")
    markdown = add_prediction(unknown, no_flag, "cuda:0", shapes)
    assert unknown["predicted"]["target"] is None and unknown["predicted"]["rows"] == []
    assert "no roofline target for GPU 'NVIDIA L40S'" in markdown and "|" not in markdown

    h200 = _gpu_doc("cuda", "NVIDIA H200")
    add_prediction(h200, no_flag, "cuda", shapes)
    assert h200["predicted"]["target"]["gpu"] == "NVIDIA H200 SXM" and len(h200["predicted"]["rows"]) == 2

    explicit = _gpu_doc("cuda", "NVIDIA H200")
    add_prediction(explicit, argparse.Namespace(predict_target="sm_80"), "cuda", shapes)
    assert explicit["predicted"]["target"]["arch"] == "sm_80" and len(explicit["predicted"]["rows"]) == 2

    cpu = _gpu_doc("cpu", "")
    assert add_prediction(cpu, no_flag, "cpu", shapes) == "" and "predicted" not in cpu


def test_suite_measures_peak_memory_of_each_implementation(tiny_shapes, tmp_path) -> None:
    out = tmp_path / "mem"
    assert bench(out, "--ops", "topk", "--model-shapes", tiny_shapes, "--k", "0.1", "--scale", "1") == 0
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
    sets = ("--scaling", "--scaling-sets", f"{small},{tiny_shapes}", "--model-shapes", str(small))
    sizes = ("--chunk-params", "95000", "--baseline-max-params", "1e9")
    assert bench(out, *sets, "--ops", "topk,scatter", "--k", "0.01,0.1", *sizes, "--no-memory") == 0
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
        (["--k", "0,0.1"], "fraction in (0, 1]"),
        (["--model-shapes", "no-such-model"], "unknown shape set"),
        (["--scale", "2"], "fraction in (0, 1]"),
        (["--device", "tpu"], "expected cpu, cuda, cuda:N or auto"),
        (["--predict-target", "sm_70"], "unknown target"),
        (["--scaling", "--predict-target", "sm_90"], "not to --scaling"),
        (["--scaling", "--no-check"], "--no-check applies to the suite"),
    ],
)
def test_bad_arguments_exit_with_a_message(args, message, tmp_path, capsys) -> None:
    """Refused before any work: exit status 2 (argparse's or the command's) and one error line."""
    try:
        status = main(["bench", "--out", str(tmp_path), "--no-progress", *args])
    except SystemExit as done:
        status = done.code
    assert status == 2
    assert message in capsys.readouterr().err


def _first_k(tensors, k, **kwargs):
    """k indices, but the first entries of the tensors, not the largest magnitudes."""
    out, left = [], k
    for t in tensors:
        out.append(torch.arange(min(left, t.numel())))
        left -= out[-1].numel()
    return out


def test_a_wrong_deftx_output_is_an_error_row_not_a_speedup(tiny_shapes, tmp_path, capsys, monkeypatch) -> None:
    import deftx.perf.cases.topk as topk_case

    monkeypatch.setattr(topk_case, "topk_mask", _first_k)
    out = tmp_path / "wrong"
    assert bench(out, "--ops", "topk,scatter", "--model-shapes", tiny_shapes, "--k", "0.1", "--scale", "1",
                 "--no-memory") == 1
    doc = json.loads((out / "cpu_tiny.json").read_text())
    topk = [r for r in doc["results"] if r["op"] == "topk" and r["role"] == "deftx"]
    assert topk and all(r["wrong_output"] and "an entry of magnitude" in r["error"] and "time_s" not in r
                        for r in topk)
    assert not [c for c in doc["comparisons"] if c["op"] == "topk"]
    scatter = [r for r in doc["results"] if r["op"] == "scatter" and r["role"] == "deftx"]
    assert scatter and all(r["output_check"] == "ok" and _positive_finite(r["time_s"]) for r in scatter)
    printed = capsys.readouterr()
    assert f"outputs: {len(topk) + len(scatter)} of {len(topk) + len(scatter)} deftx rows checked" in printed.out
    assert "gave a wrong output, not timed: topk 10% deftx[" in printed.err


def bench_tiny_topk(out: Path, tiny_shapes: str, *extra: str) -> int:
    """``deftx bench`` of the top-k alone on the tiny shapes at K = 10%, without the memory probe."""
    return bench(out, "--ops", "topk", "--model-shapes", tiny_shapes, "--k", "0.1", "--scale", "1", "--no-memory",
                 *extra)


def test_a_check_that_cannot_run_leaves_the_row_timed_and_marked(tiny_shapes, tmp_path, capsys, monkeypatch) -> None:
    import deftx.perf.cases.topk as topk_case

    def out_of_memory(impl, inputs):
        raise MemoryError("the reference needs 9 GiB")

    monkeypatch.setattr(topk_case, "mismatch", out_of_memory)
    out = tmp_path / "unchecked"
    assert bench_tiny_topk(out, tiny_shapes) == 0
    rows = [r for r in json.loads((out / "cpu_tiny.json").read_text())["results"] if r["role"] == "deftx"]
    assert rows and all(r["output_check"] == "not run: MemoryError: the reference needs 9 GiB"
                        and _positive_finite(r["time_s"]) for r in rows)
    assert f"outputs: 0 of {len(rows)} deftx rows checked" in capsys.readouterr().out


def test_no_check_times_a_wrong_output_and_says_it_was_not_checked(tiny_shapes, tmp_path, capsys,
                                                                   monkeypatch) -> None:
    import deftx.perf.cases.topk as topk_case

    monkeypatch.setattr(topk_case, "topk_mask", _first_k)
    out = tmp_path / "unchecked"
    assert bench_tiny_topk(out, tiny_shapes, "--no-check") == 0
    doc = json.loads((out / "cpu_tiny.json").read_text())
    assert "--no-check" in doc["command"] and doc["config"]["check_outputs"] is False
    assert not [r for r in doc["results"] if "output_check" in r or "error" in r]
    assert "outputs: not checked (--no-check)" in capsys.readouterr().out


def test_a_failed_baseline_is_a_row_of_the_table_and_the_markdown_says_why(tiny_shapes, tmp_path, capsys,
                                                                          monkeypatch) -> None:
    import deftx.perf.cases.topk as topk_case

    def out_of_memory(flat, k):
        raise MemoryError("cat needs 9 GiB")

    monkeypatch.setattr(topk_case, "chunked_topk", out_of_memory)
    out = tmp_path / "failed"
    assert bench_tiny_topk(out, tiny_shapes) == 0
    markdown = (out / "cpu_tiny.md").read_text()
    assert markdown.startswith("| op | shapes | K |")
    assert "| - | - | torch.cat+topk | failed |" in markdown
    assert "torch.cat+topk: MemoryError: cat needs 9 GiB" in markdown
    assert re.search(r"torch\.cat\+topk +failed", capsys.readouterr().out)


def test_the_recorded_command_gives_back_the_values_run_exactly() -> None:
    from deftx.commands.bench import add_arguments, canonical_command

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    given = ["--ops", "topk", "--k", "0.0012345678,0.1", "--scale", "0.123456789", "--chunk-params", "123456789",
             "--scaling"]
    args = parser.parse_args(given)
    command = canonical_command(args, "cpu").split()
    again = parser.parse_args(command[2:])
    assert again.k == args.k == (0.0012345678, 0.1)
    assert again.scale == args.scale and again.chunk_params == args.chunk_params == 123456789
    assert "0.0012345678,0.1" in command and "6e+08" in command
