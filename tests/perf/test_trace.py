"""Runtime profiles on CPU with the tiny shape set: files exist, parse, numbers are sane."""

from __future__ import annotations

import json
import math

import pytest
import torch

from deftx.perf.trace import TraceConfig, load_trace_config, profile_target


def check_outputs(summary, out_dir, expected_ranges):
    for path in summary["files"]:
        assert (out_dir / path.split("/")[-1]).exists(), path
    trace = json.loads((out_dir / summary["trace"].split("/")[-1]).read_text())
    names = {event.get("name") for event in trace["traceEvents"]}
    assert set(expected_ranges) <= names, f"missing ranges {set(expected_ranges) - names}"
    stored = json.loads((out_dir / f"profile_{summary['target'].replace('-', '_')}.json").read_text())
    assert stored["rows"] == summary["rows"]
    rows = {r["name"]: r for r in summary["rows"]}
    for name in expected_ranges:
        row = rows[name]
        assert row["calls"] >= 1 and math.isfinite(row["total_ms"]) and row["total_ms"] > 0
        assert row["mean_ms"] == pytest.approx(row["total_ms"] / row["calls"])
    markdown = (out_dir / f"profile_{summary['target'].replace('-', '_')}.md").read_text()
    assert "(measured)" in markdown and all(f"`{name}`" in markdown for name in expected_ranges)
    return rows


@pytest.mark.parametrize(
    ("target", "ranges"),
    [("topk", ["deftx.topk"]), ("scatter", ["deftx.scatter_add", "deftx.scatter_restore"]),
     ("step", ["deftx.masked_step"]), ("rsvd", ["deftx.rsvd"])],
)
def test_op_profiles(target, ranges, tmp_path):
    summary = profile_target(TraceConfig(target=target, iterations=2, warmup=0), tmp_path)
    rows = check_outputs(summary, tmp_path, ranges)
    modelled = rows[ranges[0]]
    assert modelled["calls"] == 2
    assert modelled["bytes_per_call"] > 0
    assert math.isfinite(modelled["achieved_gb_per_s"]) and modelled["achieved_gb_per_s"] > 0
    assert any(r["kind"] == "cpu op" for r in summary["rows"])


def test_train_step_profile_has_every_phase(tmp_path):
    summary = profile_target(TraceConfig(target="train-step", warmup=0), tmp_path)
    phases = [f"deftx.phase.{p}" for p in ("full_step", "selection", "sparse_step", "compose")]
    rows = check_outputs(summary, tmp_path, [*phases, "deftx.rsvd", "deftx.topk", "deftx.masked_step",
                                             "deftx.scatter_add", "deftx.scatter_restore"])
    assert all(rows[p]["kind"] == "phase" for p in phases)


def test_config_file_and_overrides(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"target": "step", "shapes": "tiny", "iterations": 3, "rank": 4}))
    config = load_trace_config(path, iterations=1, device=None)
    assert (config.target, config.iterations, config.rank) == ("step", 1, 4)
    assert config.workload().settings.rank == 4


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"target": "fft"}, "unknown profile target"), ({"device": "tpu"}, "device"),
     ({"iterations": 0}, "iterations")],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TraceConfig(**kwargs)


def test_bad_config_file_raises(tmp_path):
    path = tmp_path / "profile.json"
    path.write_text(json.dumps({"target": "step", "speed": "fast"}))
    with pytest.raises(ValueError, match="expected a JSON object"):
        load_trace_config(path)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_raises():
    with pytest.raises(ValueError, match="cuda"):
        TraceConfig(device="cuda")


def test_an_op_without_a_flop_model_reports_no_gflops_rather_than_zero(tmp_path):
    summary = profile_target(TraceConfig(target="topk", iterations=1, warmup=0), tmp_path)
    topk = next(r for r in summary["rows"] if r["name"] == "deftx.topk")
    assert topk["bytes_per_call"] > 0 and topk["achieved_gb_per_s"] > 0
    assert topk["flops_per_call"] is None and topk["achieved_gflop_per_s"] is None
    markdown = (tmp_path / "profile_topk.md").read_text()
    assert next(line for line in markdown.splitlines() if "`deftx.topk`" in line).endswith("| - |")


def test_the_markdown_never_rounds_a_sub_microsecond_mean_to_zero():
    from deftx.perf.trace import render_summary

    row = {"name": "aten::detach", "kind": "cpu op", "calls": 81, "total_ms": 0.039, "mean_ms": 0.039 / 81,
           "bytes_per_call": None, "achieved_gb_per_s": None, "flops_per_call": None, "achieved_gflop_per_s": None}
    summary = {"target": "topk", "device": "cpu", "shapes": "tiny", "backend": "auto", "iterations": 3, "warmup": 1,
               "trace": "t.json", "rows": [row]}
    line = next(line for line in render_summary(summary).splitlines() if "aten::detach" in line)
    assert line.startswith("| `aten::detach` | cpu op | 81 | 0.039 | 0.00048 |")


def test_cuda_summary_leaves_out_the_device_copies_of_ranges():
    """On CUDA, kineto records each ``record_function`` range twice: on the host and as a
    ``gpu_user_annotation`` on the device timeline (same name, device type CUDA). Torch's own
    tables leave the device copies out; so does the summary: one row per deftx range (its host
    time), and an annotation (the optimizer's) is not listed as a kernel."""
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import EventList, FunctionEvent

    from deftx.perf.roofline import Cost
    from deftx.perf.trace import OpRun, summarize

    def event(i, name, start_us, end_us, device_type=DeviceType.CPU, annotation=False):
        return FunctionEvent(id=i, name=name, thread=0, start_us=start_us, end_us=end_us, device_type=device_type,
                             is_user_annotation=annotation, use_device="cuda", stack=[])

    events = EventList([
        event(1, "deftx.topk", 0, 100, annotation=True),
        event(2, "deftx.topk", 10, 90, DeviceType.CUDA, annotation=True),
        event(3, "Optimizer.step#AdamW.step", 100, 200, annotation=True),
        event(4, "Optimizer.step#AdamW.step", 110, 190, DeviceType.CUDA, annotation=True),
        event(5, "my_kernel", 20, 60, DeviceType.CUDA),
    ], use_device="cuda")
    events._build_tree()
    profiled = type("Profiled", (), {"key_averages": lambda self: events.key_averages()})()
    rows = summarize(profiled, [OpRun("deftx.topk", lambda: None, Cost(1e6, 0.0, None))], torch.device("cuda"))
    assert [(r["name"], r["kind"]) for r in rows] == [("deftx.topk", "deftx op"), ("my_kernel", "kernel")]
    assert rows[0]["mean_ms"] == pytest.approx(0.1) and rows[0]["achieved_gb_per_s"] == pytest.approx(10.0)
    assert rows[1]["total_ms"] == pytest.approx(0.04)


def test_every_range_of_the_train_step_ends_after_a_device_synchronize(monkeypatch):
    """A range's host time is the op's time only if the device is done when it closes (on CUDA
    the launches return at once): the ops' ranges nested in the train-step phases end after a
    synchronize, as the phases' and the op targets' do."""
    import contextlib

    from deftx.perf import trace

    log = []

    @contextlib.contextmanager
    def logged_range(name):
        log.append(("open", name))
        yield
        log.append(("close", name))

    monkeypatch.setattr(trace, "record_function", logged_range)
    monkeypatch.setattr(trace, "_synchronize", lambda device: log.append(("sync",)))
    for run in trace.train_step_runs(trace.load_workload("tiny"), torch.device("cpu"), None, seed=0):
        run.run()
    closed = [name for event, *name in log if event == "close"]
    assert {"deftx.rsvd", "deftx.topk", "deftx.masked_step", "deftx.scatter_add",
            "deftx.scatter_restore"} <= {name for (name,) in closed}
    unsynced = [log[i][1] for i in range(len(log)) if log[i][0] == "close" and log[i - 1] != ("sync",)]
    assert unsynced == []


def test_the_rsvd_profile_inputs_follow_the_seed(monkeypatch):
    """``seed`` fixes the synthetic weights *and* their fine-tuned copies: two profiles with the
    same seed decompose the same differences, whatever torch's global generator holds."""
    import deftx.ops
    from deftx.perf import trace

    seen = []
    monkeypatch.setattr(deftx.ops, "denoised_magnitudes", lambda w1, w0, **kwargs: seen.append(w1 - w0))
    workload = trace.load_workload("tiny")
    for _ in range(2):
        (run,) = trace.rsvd_runs(workload, torch.device("cpu"), None, seed=3)
        run.run()
    first, second = seen[: len(seen) // 2], seen[len(seen) // 2 :]
    assert len(first) == len(workload.matrices) > 0
    assert all(torch.equal(a, b) for a, b in zip(first, second, strict=True))
