"""Bad input to ``deftx bench``, ``deftx profile``, ``deftx gpu-check`` and ``deftx doctor``: refused
before any work with one ``deftx <command>: error: ...`` line and exit status 2 (no traceback); a
bench run whose every measurement failed exits nonzero; an invalid ``$DEFTX_BACKEND`` is the
doctor's error; the help texts state real defaults and ranges."""

from __future__ import annotations

import json
import warnings

import pytest

from deftx.cli import main
from deftx.perf.shapes import load_shape_set

TINY = {
    "name": "tiny",
    "tensors": [{"name": "embed", "shape": [300, 16], "vocab": True}],
    "num_layers": 1,
    "layer_tensors": [{"name": "q", "shape": [16, 16]}],
}
PROFILE_FORM = {
    "name": "flat",
    "dtype": "bf16",
    "parameters": {"embed": [300, 16], "q": [16, 16], "norm.weight": [16]},
    "frozen": ["norm.weight"],
    "settings": {"k_fraction": 0.05, "rank": 4},
}
FAST = ["--device", "cpu", "--ops", "topk", "--k", "0.1", "--repeats", "1", "--no-memory", "--no-progress"]


def exit_status(argv: list[str]) -> int:
    """``deftx ARGV``'s exit status, whether argparse exits or the command returns."""
    try:
        return main(argv)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 1


def error_line(capsys, command: str) -> str:
    """The one error line the command wrote to stderr (argparse's usage lines aside)."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith(f"deftx {command}: error: ")]
    assert len(errors) == 1, err
    return errors[0]


@pytest.fixture
def tiny_shapes(tmp_path):
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(TINY))
    return str(path)


@pytest.fixture
def no_measurement(monkeypatch):
    """Fail the test if the suite or the scaling study starts measuring."""

    def refuse(*args, **kwargs):
        raise AssertionError("measured although the input is bad")

    monkeypatch.setattr("deftx.perf.suite.run_suite", refuse)
    monkeypatch.setattr("deftx.perf.scaling.run_scaling", refuse)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--rank", "-1"], "--rank: expected an integer >= 1"),
        (["--rank", "0"], "--rank: expected an integer >= 1"),
        (["--oversample", "-1"], "--oversample: expected an integer >= 0"),
        (["--n-iter", "-1"], "--n-iter: expected an integer >= 0"),
        (["--repeats", "0"], "--repeats: expected an integer >= 1"),
        (["--seed", "-3"], "--seed: expected an integer >= 0"),
        (["--backends", "bogus"], "unknown backend 'bogus'"),
        (["--ops", "topk,sort"], "unknown op 'sort'"),
        (["--k", "0,0.1"], "expected a fraction in (0, 1]"),
        (["--scale", "0"], "--scale: expected a fraction in (0, 1]"),
        (["--device", "tpu"], "expected cpu, cuda, cuda:N or auto"),
        (["--predict-target", "sm_70"], "unknown target 'sm_70'"),
        (["--scaling", "--scaling-k", "0"], "--scaling-k: expected a fraction in (0, 1]"),
        (["--scaling", "--chunk-params", "0"], "--chunk-params: expected a number >= 1"),
        (["--scaling", "--chunk-params", "-5"], "--chunk-params: expected a number >= 1"),
        (["--scaling", "--baseline-max-params", "nan"], "--baseline-max-params: expected a number >= 0"),
    ],
)
def test_bench_refuses_impossible_values_at_argparse(args, message, tmp_path, capsys, no_measurement) -> None:
    assert exit_status(["bench", "--out", str(tmp_path), *args]) == 2
    assert message in error_line(capsys, "bench")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backends", "triton"], "--backends triton: not timed on cpu for topk,rsvd,scatter,step (the Triton "
                                   "interpreter on CPU is a correctness tool, never timed); timed here: native, torch"),
        (["--ops", "topk,rsvd", "--backends", "native"],
         "--ops rsvd: not timed under --backends native on cpu (rsvd is timed here under torch)"),
        (["--scaling", "--backends", "torch"], "--backends applies to the suite, not to --scaling"),
        (["--scaling", "--scale", "0.5"], "--scale applies to the suite"),
        (["--scaling", "--predict-target", "sm_90"], "--predict-target applies to the suite"),
        (["--chunk-params", "5"], "--chunk-params applies to --scaling only"),
        (["--scaling", "--ops", "compose"], "--scaling times topk, rsvd, scatter, step, not compose"),
        (["--model-shapes", "no-such-model"], "unknown shape set"),
    ],
)
def test_bench_refuses_inputs_the_run_cannot_use(args, message, tmp_path, capsys, no_measurement) -> None:
    assert exit_status(["bench", "--out", str(tmp_path), "--device", "cpu", "--no-progress", *args]) == 2
    assert message in error_line(capsys, "bench")


def test_bench_default_ops_leave_out_what_the_given_backends_do_not_time_and_say_so(tmp_path, capsys,
                                                                                   monkeypatch) -> None:
    """``--backends native`` on CPU with the default ops: rsvd (timed under torch only) is left out with a
    note, not measured for its baselines alone and dropped from the table without a word."""
    asked = []

    def stop(config, **kwargs):
        asked.append(config.ops)
        raise KeyboardInterrupt

    monkeypatch.setattr("deftx.perf.suite.run_suite", stop)
    assert main(["bench", "--out", str(tmp_path), "--device", "cpu", "--backends", "native", "--no-progress"]) == 130
    assert asked == [("topk", "scatter", "step")]
    err = capsys.readouterr().err
    assert "deftx bench: note: rsvd left out: not timed under --backends native on cpu" in err
    assert err.splitlines()[-1].startswith("deftx: interrupted (Ctrl-C)") and "Traceback" not in err


def test_bench_refuses_an_output_path_that_is_a_file_before_measuring(tmp_path, capsys, no_measurement) -> None:
    existing = tmp_path / "existingfile"
    existing.write_text("keep me\n")
    assert exit_status(["bench", *FAST, "--out", str(existing)]) == 2
    assert f"--out {existing}: exists and is not a folder" in error_line(capsys, "bench")
    assert existing.read_text() == "keep me\n"
    assert exit_status(["bench", *FAST, "--out", str(existing / "below")]) == 2
    assert "is not a folder" in error_line(capsys, "bench")


def test_bench_run_where_every_measurement_failed_exits_nonzero(tiny_shapes, tmp_path, capsys, monkeypatch) -> None:
    import deftx.perf.suite as suite

    monkeypatch.setattr(suite, "run_case", lambda spec, impls, *rest: [
        suite._error_row(spec, impl, RuntimeError("no luck")) for impl in impls
    ])
    monkeypatch.setattr(suite, "measure_roofline", lambda device, **kw: suite.Roofline(1.0, 1.0, 1, 1))
    assert main(["bench", "--model-shapes", tiny_shapes, "--out", str(tmp_path), *FAST]) == 1
    line = error_line(capsys, "bench")
    assert "every measurement failed" in line and "no luck" in line
    assert json.loads((tmp_path / "cpu_tiny.json").read_text())["results"], "the errors are recorded"


def test_bench_help_states_real_defaults_and_ranges(capsys) -> None:
    assert exit_status(["bench", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for absent in ("(default: None)", "('topk'", "1000000000.0", "format in deftx.perf.shapes"):
        assert absent not in text
    for present in ("rank kept, >= 1 (default 32)", ">= 0 (default 8)", "power iterations, >= 0 (default 2)",
                    "timed calls per measurement, >= 1", "(default 1e9)", "{cpu,cuda,cuda:N,auto}",
                    '"layer_tensors"', '"parameters"',
                    "(default topk,rsvd,scatter,step, less those --backends does not time here;"):
        assert present in text, present


def test_bench_and_profile_read_the_same_shape_file(tmp_path, capsys, monkeypatch) -> None:
    path = tmp_path / "flat.json"
    path.write_text(json.dumps(PROFILE_FORM))
    shapes = load_shape_set(str(path))
    assert [(t.name, t.shape, t.frozen) for t in shapes.flat()] == [
        ("embed", (300, 16), False), ("q", (16, 16), False), ("norm.weight", (16,), True)
    ]
    from deftx.perf.workload import load_workload

    assert load_workload(str(path)).shapes.flat() == shapes.flat(), "profile reads the same shapes"
    reads = count_reads(monkeypatch, path)
    assert main(["bench", "--model-shapes", str(path), "--out", str(tmp_path / "out"), *FAST]) == 0
    assert reads == [str(path)], "bench reads its shape file once"
    err = capsys.readouterr().err
    assert "dtype and settings are deftx profile's, not read here" in err
    assert (tmp_path / "out" / "cpu_flat.json").is_file()


def count_reads(monkeypatch, path) -> list[str]:
    """The reads of ``path`` (through ``Path.read_bytes`` / ``read_text``) from now on, as a growing list."""
    from pathlib import Path

    reads: list[str] = []
    for method in ("read_bytes", "read_text"):
        original = getattr(Path, method)

        def counted(self, *args, _original=original, **kwargs):
            if self == path:
                reads.append(str(self))
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(Path, method, counted)
    return reads


@pytest.mark.parametrize(
    ("shape", "message"),
    [([], "non-empty list of integers >= 0"), ([16, -1], "non-empty list of integers >= 0"),
     ([2.5], "non-empty list of integers >= 0")],
)
@pytest.mark.parametrize("form", ["layered", "flat"])
def test_bench_and_profile_refuse_the_same_bad_shapes(form, shape, message, tmp_path, capsys) -> None:
    """One reader, one rule: a shape file bench refuses, profile refuses with the same words."""
    data = ({"tensors": [{"name": "w", "shape": shape}]} if form == "layered"
            else {"parameters": {"w": shape}})
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    assert exit_status(["bench", "--model-shapes", str(path), "--out", str(tmp_path / "b"), *FAST]) == 2
    assert message in error_line(capsys, "bench")
    assert exit_status(["profile", "--static", "--shapes", str(path), "--out", str(tmp_path / "p")]) == 2
    assert message in error_line(capsys, "profile")
    assert not (tmp_path / "b").exists() and not (tmp_path / "p").exists()


def test_bench_scaling_reads_each_shape_file_once(tmp_path, monkeypatch) -> None:
    """The sets checked before measuring are the sets measured: no second read a changed file could slip into."""
    import deftx.perf.scaling as scaling

    path = tmp_path / "mine.json"
    path.write_text(json.dumps(TINY))
    reads = count_reads(monkeypatch, path)
    measured = {}

    def record(config, *, progress, command, read):
        measured.update(sets=config.sets, read=read)
        raise SystemExit(0)

    monkeypatch.setattr(scaling, "run_scaling", record)
    spec = f"{tmp_path}/./mine.json"
    assert exit_status(["bench", "--scaling", "--device", "cpu", "--scaling-sets", f"e5-small,{spec}",
                        "--model-shapes", spec, "--out", str(tmp_path / "out")]) == 0
    assert reads == [str(path)], "read once, though named twice"
    assert measured["sets"] == ("e5-small", spec) and measured["read"][spec] == load_shape_set(str(path))


def test_bench_scaling_refuses_a_bad_scaling_set_before_measuring(tmp_path, capsys, no_measurement) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"tensors": [{"name": "w", "shape": [4], "vocab": "yes"}]}))
    args = ["bench", "--scaling", "--device", "cpu", "--scaling-sets", f"e5-small,{bad}", "--out", str(tmp_path)]
    assert exit_status(args) == 2
    assert "'vocab' must be true or false, got 'yes'" in error_line(capsys, "bench")


def test_a_shape_file_mixing_both_forms_is_refused(tmp_path) -> None:
    path = tmp_path / "mixed.json"
    path.write_text(json.dumps({**TINY, "parameters": {"x": [2, 2]}}))
    with pytest.raises(ValueError, match="either 'parameters' or 'tensors'"):
        load_shape_set(str(path))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--static", "--device", "cuda"], "--device only applies to a runtime TARGET, not to --static"),
        (["--static", "--backend", "torch", "--iterations", "3"], "--backend, --iterations only apply"),
        (["topk", "--arch", "sm_80"], "--arch only applies to --static"),
        (["topk", "--workers", "2"], "--workers only applies to --static"),
        (["--static", "--workers", "-1"], "--workers: expected an integer >= 1"),
        (["--static", "--workers", "0"], "--workers: expected an integer >= 1"),
        (["topk", "--iterations", "0"], "--iterations: expected an integer >= 1"),
    ],
)
def test_profile_refuses_bad_values_and_the_other_modes_options(args, message, tmp_path, capsys) -> None:
    assert exit_status(["profile", *args, "--out", str(tmp_path)]) == 2
    assert message in error_line(capsys, "profile")
    assert not any(tmp_path.iterdir()), "nothing ran"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"target": "topk", "iterations": "3"}', "iterations must be an integer >= 1, got '3'"),
        ('{"target": "topk", "iterations": 2.5}', "iterations must be an integer >= 1, got 2.5"),
        ('{"target": "topk", "iterations": true}', "iterations must be an integer >= 1, got True"),
        ('{"target": "topk", "warmup": -1}', "warmup must be an integer >= 0, got -1"),
        ('{"target": "topk", "seed": -1}', "seed must be an integer >= 0, got -1"),
        ('{"target": "topk", "target": "rsvd"}', "duplicate key 'target'"),
        ("not json", "not valid JSON (Expecting value: line 1 column 1 (char 0))"),
        (b"\xff", "not UTF-8 text (byte 0xff at offset 0)"),
    ],
)
def test_profile_refuses_a_bad_config_file_naming_it(text, message, tmp_path, capsys) -> None:
    """A string or float count was a TypeError traceback (a float one after the warm-up had run), a bool or a
    negative seed ran, and a file that is not JSON was the decoder's message without the file's name."""
    config = tmp_path / "trace.json"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    out = tmp_path / "out"
    assert exit_status(["profile", str(config), "--out", str(out)]) == 2
    assert error_line(capsys, "profile").startswith(f"deftx profile: error: {config}: {message}")
    assert not out.exists(), "nothing ran"


def test_profile_help_says_which_options_belong_to_which_mode(capsys) -> None:
    assert exit_status(["profile", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for present in ("static mode only", "runtime mode only", "refused in the other",
                    "deftx bench --model-shapes reads the same files", "layer_tensors L times"):
        assert present in text, present


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "install", "--skip", "install"], "no stage left to run (install: skipped (--skip))"),
        (["--only", "ncu"], "no stage left to run (ncu: needs CUDA)"),
        (["--budget", "nan"], "--budget: expected a finite number"),
        (["--budget", "0"], "--budget: expected a number > 0"),
        (["--pytest-workers", "-1"], "--pytest-workers: expected an integer >= 0"),
        (["--only", "bench-gpt"], "unknown stage(s) bench-gpt"),
        (["--only", "environment"], "--out DIR is required"),
    ],
)
def test_gpu_check_usage_errors_exit_2(args, message, capsys) -> None:
    assert exit_status(["gpu-check", "--device", "cpu", *args]) == 2
    assert message in error_line(capsys, "gpu-check")


def test_gpu_check_refuses_an_output_path_that_is_a_file_before_any_stage(tmp_path, capsys, monkeypatch) -> None:
    import deftx.gpucheck.cli as gpucheck_cli

    monkeypatch.setattr(gpucheck_cli, "execute", lambda *a, **k: pytest.fail("a stage ran"))
    existing = tmp_path / "existingfile"
    existing.write_text("keep me\n")
    assert exit_status(["gpu-check", "--device", "cpu", "--only", "environment", "--out", str(existing)]) == 2
    assert f"--out {existing}: exists and is not a folder" in error_line(capsys, "gpu-check")
    assert existing.read_text() == "keep me\n"


def test_gpu_check_help_states_defaults(capsys) -> None:
    assert exit_status(["gpu-check", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for present in ("(default 480)", "(default tests)", "(0: none; default 4)", "2 on a usage error"):
        assert present in text, present


def test_doctor_reports_an_invalid_backend_override(monkeypatch, capsys) -> None:
    monkeypatch.setenv("DEFTX_BACKEND", "bogus")
    assert main(["doctor"]) == 1
    out, err = capsys.readouterr()
    assert "backend override: INVALID: $DEFTX_BACKEND is 'bogus'" in out
    assert "torch:" in out and "ops:" in out, "the rest of the report is still printed"
    assert err.startswith("deftx doctor: error: $DEFTX_BACKEND is 'bogus'") and len(err.splitlines()) == 1


def test_doctor_accepts_a_valid_backend_override(monkeypatch, capsys) -> None:
    monkeypatch.setenv("DEFTX_BACKEND", "torch")
    assert main(["doctor"]) == 0
    assert "backend override: $DEFTX_BACKEND=torch" in capsys.readouterr().out


def doctor_rows(out: str) -> dict[tuple[str, str], tuple[str, str]]:
    """(op, device) -> (backend, why) of ``deftx doctor``'s backend table."""
    lines = out.split("\n\nop ", 1)[1].split("\n\n", 1)[0].splitlines()[1:]
    rows = {}
    for line in lines:
        op, rest = line.split(None, 1)
        device, rest = ("cuda (none here)", rest[len("cuda (none here)"):]) if rest.startswith("cuda (") \
            else rest.split(None, 1)
        backend, why = rest.split(None, 1)
        rows[op, device] = (backend, why)
    return rows


@pytest.mark.parametrize("override", ["torch", "triton"])
def test_doctor_names_the_backend_an_override_makes_cpu_calls_run(monkeypatch, capsys, override) -> None:
    """The table is the backend a call runs: the dispatcher's choice under $DEFTX_BACKEND, not auto's."""
    import torch

    from deftx.ops.dispatch import resolve
    from deftx.ops.registry import OPS

    monkeypatch.setenv("DEFTX_BACKEND", override)
    assert main(["doctor"]) == 0
    rows = doctor_rows(capsys.readouterr().out)
    for op in OPS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runs = resolve(op, torch.device("cpu"))
        assert rows[op, "cpu"][0] == runs, (op, rows[op, "cpu"])


def test_doctor_says_an_override_that_cannot_run_on_cuda_makes_its_calls_fail(monkeypatch, capsys) -> None:
    monkeypatch.setenv("DEFTX_BACKEND", "native")
    assert main(["doctor"]) == 0
    rows = doctor_rows(capsys.readouterr().out)
    cuda = next(device for _, device in rows if device.startswith("cuda"))
    backend, why = rows["topk", cuda]
    assert backend == "native" and "raise" in why and "CPU tensors" in why, (backend, why)
    assert rows["rsvd", "cpu"][0] == "torch" and "does not implement" in rows["rsvd", "cpu"][1]
