"""Stage machinery on CPU: process groups stopped whole, the tests stage's pytest run, the
kernel cases ncu and the sanitizer run (here under the Triton interpreter), host-overhead counting."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

from deftx.gpucheck import processes
from deftx.gpucheck.context import StageContext, read_result
from deftx.gpucheck.kernel_cases import CASES
from deftx.gpucheck.stage import run_stage
from deftx.gpucheck.stages import tests as tests_stage
from deftx.kernels import kernel_module
from deftx.perf.counters import count_device_work
from deftx.perf.overhead import (
    COUNTED_RANGE,
    classify_device_events,
    count_host_overhead,
    count_runtime_calls,
    count_sync_warnings,
    device_event_names,
    host_names_within,
    triton_kernel_names,
)
from deftx.perf.static.compile import declared_specializations

REPO = Path(__file__).resolve().parents[2]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_a_timed_out_process_is_stopped_with_everything_it_started(tmp_path):
    pid_file = tmp_path / "grandchild.pid"
    script = (f"import subprocess, time; p = subprocess.Popen(['sleep', '60']); "
              f"open({str(pid_file)!r}, 'w').write(str(p.pid)); time.sleep(60)")
    start = time.monotonic()
    code = processes.run([sys.executable, "-c", script], tmp_path, tmp_path / "out.log", timeout=3.0)
    assert code is None and time.monotonic() - start < 30
    grandchild = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while alive(grandchild) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not alive(grandchild)


def test_a_finished_process_returns_its_exit_code(tmp_path):
    assert processes.run([sys.executable, "-c", "print('hi'); raise SystemExit(3)"], tmp_path, tmp_path / "o", 30) == 3
    assert (tmp_path / "o").read_text() == "hi\n"


def write_suite(tmp_path, tests: str):
    """A test folder ``tmp_path/suite`` whose conftest declares the ``cuda`` marker and whose
    test_sample.py holds ``tests`` (dedented); returns the test file."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "conftest.py").write_text("def pytest_configure(config):\n"
                                       "    config.addinivalue_line('markers', 'cuda: needs a GPU')\n")
    sample = suite / "test_sample.py"
    sample.write_text(textwrap.dedent(tests))
    return sample


def test_the_tests_stage_runs_only_cuda_marked_tests_and_reports_them(tmp_path):
    sample = write_suite(tmp_path, """
        import pytest

        @pytest.mark.cuda
        def test_on_gpu():
            assert True

        @pytest.mark.cuda
        def test_on_gpu_fails():
            assert 1 == 2

        def test_on_cpu():
            raise AssertionError("not selected by -m cuda")
    """)
    ctx = StageContext(stage="tests", repo=str(tmp_path), work_dir=str(tmp_path / "work"), test_paths=("suite",),
                       deadline=time.time() + 120)
    result = tests_stage.run(ctx)
    assert result["status"] == "failed"
    assert result["counts"] == {"PASSED": 1, "FAILED": 1}
    assert result["failed_tests"] == ["suite/test_sample.py::test_on_gpu_fails"]
    sample.write_text("def test_on_cpu():\n    pass\n")
    none = tests_stage.run(ctx)
    assert (none["status"], none["headline"]) == ("ok", "no tests selected by -m cuda")


def test_on_cuda_the_tests_stage_fails_when_no_cuda_test_ran(tmp_path):
    """Every CUDA test skipped (the tests' process did not see the GPU), or none selected, is
    a run that checked nothing on the device: a failure there, reported only on CPU."""
    write_suite(tmp_path, """
        import pytest

        @pytest.mark.cuda
        def test_on_gpu():
            pytest.skip("CUDA not available")
    """)
    on_cuda = StageContext(stage="tests", repo=str(tmp_path), work_dir=str(tmp_path / "work"),
                           test_paths=("suite",), device="cuda", deadline=time.time() + 120)
    skipped = tests_stage.run(on_cuda)
    assert (skipped["status"], skipped["headline"]) == ("failed", "no CUDA test ran: 1 skipped")
    assert tests_stage.summarize({}, 5, False, on_cuda=True)["status"] == "failed"
    assert tests_stage.summarize({"a::t": "PASSED", "a::u": "SKIPPED"}, 0, False, on_cuda=True)["status"] == "ok"
    assert tests_stage.summarize({"a::t": "SKIPPED"}, 0, False)["status"] == "ok"


def test_a_crashing_stage_is_a_failed_result_with_its_traceback(tmp_path, monkeypatch):
    from deftx.gpucheck import stages

    def boom(ctx):
        raise RuntimeError("kernel launch failed\nmore")

    monkeypatch.setitem(stages.RUNNERS, "ceilings", ("ceilings", "missing_function"))
    ctx = StageContext(stage="ceilings", repo=str(REPO), work_dir=str(tmp_path), deadline=time.time() + 60)
    result = run_stage(ctx)
    assert result["status"] == "failed" and "AttributeError" in result["headline"]
    monkeypatch.setattr(stages, "stage_runner", lambda name: boom)
    result = run_stage(ctx)
    assert result["headline"] == "RuntimeError: kernel launch failed"
    assert "Traceback" in result["traceback"]
    ctx.write_result(result)
    assert read_result(tmp_path, "ceilings")["status"] == "failed"


def test_a_stage_that_dies_after_a_partial_ok_result_is_recorded_as_failed(tmp_path):
    """The bench, histogram and training stages write ``ok`` partial results as they go; a process
    that then dies (a device assert's abort, a segfault, the OOM killer) must not read as ok."""
    from deftx.gpucheck.plan import STAGES, PlannedStage
    from deftx.gpucheck.runner import stage_record

    planned = PlannedStage(next(s for s in STAGES if s.name == "training"))
    log = tmp_path / "stage.log"
    log.write_text("[training] starting\nSegmentation fault\n")
    partial = {"status": "ok", "headline": "partial: fit done (1.0 s)"}
    died = stage_record(planned, partial, -11, 3.0, log)
    assert died["status"] == "failed"
    assert died["headline"] == "exited with -11 after its partial result: partial: fit done (1.0 s); Segmentation fault"
    assert stage_record(planned, {"status": "ok", "headline": "7/7"}, 0, 3.0, log)["status"] == "ok"
    assert stage_record(planned, {"status": "failed", "headline": "1/7"}, 1, 3.0, log)["headline"] == "1/7"


def test_the_environment_stage_gives_up_a_hung_nvidia_smi_before_its_deadline(tmp_path, monkeypatch):
    """Each command had 20 s whatever the stage's 10 s budget: a hung nvidia-smi got the stage
    killed at its cap with nothing recorded."""
    from deftx.gpucheck.stages import environment

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text("#!/bin/sh\nsleep 60\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    ctx = StageContext(stage="environment", repo=str(REPO), work_dir=str(tmp_path / "work"),
                       deadline=time.time() + 6)
    result = environment.run(ctx)
    assert ctx.seconds_left() > 0
    assert result["status"] == "ok" and result["nvidia_smi"] is None


def test_kernel_cases_run_every_case_under_the_interpreter():
    done = subprocess.run([sys.executable, "-m", "deftx.gpucheck.kernel_cases", "--device", "cpu", "--size", "tiny"],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.split() == [word for case in CASES for word in ("ran", case)]


def test_kernel_cases_launch_every_declared_kernel(monkeypatch):
    """ncu profiles one launch of each kernel and the sanitizer checks each: every kernel the
    ops declare is launched by some case. The sample and bracket kernels run only where a call
    brackets its list from samples (N above k + 2^16), so here with the list's slack lowered."""
    topk = kernel_module("topk", interpret=True)
    monkeypatch.setattr(topk, "MIN_LIST_SLACK", 64)
    declared = {getattr(d.spec.kernel, "fn", d.spec.kernel).__name__ for d in declared_specializations().specs}
    launched: set[str] = set()
    for build in CASES.values():
        call = build("tiny", torch.device("cpu"))
        with count_device_work("cpu") as work:
            call()
        launched |= set(work.triton_launches)
    assert declared <= launched, sorted(declared - launched)


def test_kernel_cases_refuse_a_profiler_range_without_cuda():
    done = subprocess.run([sys.executable, "-m", "deftx.gpucheck.kernel_cases", "--device", "cpu", "--profile-range"],
                          cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and "--profile-range needs --device cuda" in done.stderr


def test_device_events_are_classified_into_kernels_copies_and_sets():
    names = ["_band_histogram_kernel", "void at::native::vectorized_elementwise_kernel<4>(...)",
             "Memcpy HtoD (Pageable -> Device)", "Memset (Device)", "_compact_indices_kernel"]
    counts = classify_device_events(names, frozenset({"_band_histogram_kernel", "_compact_indices_kernel"}))
    assert counts == {"kernels": 3, "triton_kernels": 2, "memcpy": 1, "memset": 1}
    assert count_runtime_calls(["cudaStreamSynchronize", "cudaLaunchKernel", "cudaMemcpyAsync"]) == {
        "runtime_syncs": 1, "runtime_copies": 1}
    assert count_sync_warnings(["called a synchronizing CUDA operation", "other", "synchronizing CUDA operation"]) == 2


def test_the_device_copy_of_the_counted_range_is_no_kernel():
    """On CUDA, record_function also leaves a device-side annotation event named after the range: not a launch."""
    from types import SimpleNamespace

    cuda, cpu = torch.autograd.DeviceType.CUDA, torch.autograd.DeviceType.CPU
    events = [SimpleNamespace(name=COUNTED_RANGE, device_type=cuda, is_user_annotation=True),
              SimpleNamespace(name="my_range", device_type=cuda, is_user_annotation=True),
              SimpleNamespace(name=COUNTED_RANGE, device_type=cuda),
              SimpleNamespace(name="_band_histogram_kernel", device_type=cuda, is_user_annotation=False),
              SimpleNamespace(name="Memcpy DtoH (Device -> Pinned)", device_type=cuda),
              SimpleNamespace(name="aten::add", device_type=cpu)]
    assert device_event_names(events) == ["_band_histogram_kernel", "Memcpy DtoH (Device -> Pinned)"]


def test_host_calls_are_counted_inside_the_call_s_range_only():
    """The synchronize that waits for the counted call's kernels comes after its range: not the call's."""
    x = torch.ones(4)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        torch.mul(x, 2)
        with torch.profiler.record_function(COUNTED_RANGE):
            torch.add(x, 1)
        torch.sub(x, 1)
    inside = host_names_within(prof.events(), COUNTED_RANGE)
    assert "aten::add" in inside and not {"aten::mul", "aten::sub", COUNTED_RANGE} & set(inside), inside
    assert host_names_within(prof.events(), "no such range") == []


def test_overhead_is_not_counted_on_cpu_and_the_kernel_names_are_deftx_s():
    assert count_host_overhead(lambda: torch.ones(3).sum(), torch.device("cpu")) is None
    names = triton_kernel_names()
    assert {"_band_histogram_kernel", "_partition_kernel", "_scatter_add_kernel", "_masked_adamw_kernel",
            "_delta_matmul_kernel"} <= names
