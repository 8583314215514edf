"""The static report: rendering, and the committed reports checked against a fresh compile.

The committed ``benchmarks/results/static_*.json`` must describe the kernels as they are
now: every declared specialisation, with the registers, spills, shared memory, SASS counts
and violations a fresh compile gives, the occupancy those numbers imply, and the roofline
rows the current models give. A kernel change without ``deftx profile --static`` rerun
fails here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import triton

from deftx.perf.report import static_markdown, write_static_report
from deftx.perf.roofline import OPS, predict
from deftx.perf.static.analysis import LABEL, build_static_report, kernel_row, occupancy_of
from deftx.perf.static.compile import BuildFailure, DeclaredSpec, Registry, compile_all, declared_specializations
from deftx.perf.static.occupancy import theoretical_occupancy
from deftx.perf.targets import get_target
from deftx.perf.workload import load_workload
from tests.kernels.bad_kernels import BAD, GOOD

RESULTS = Path(__file__).resolve().parents[3] / "benchmarks" / "results"
REQUIRED = ("static_sm90_xlmr-base.json", "static_sm90_llama-7b.json")
COMMITTED = sorted(RESULTS.glob("static_*.json"))


@pytest.fixture(scope="module")
def small_report():
    specs = [GOOD[1], BAD[1][0]]
    registry = Registry([DeclaredSpec("bad_kernels", i, s) for i, s in enumerate(specs)], ["absent_op"], {}, [])
    return build_static_report("sm_90", load_workload("tiny"), registry=registry, workers=1)


def test_report_structure(small_report):
    assert small_report["label"] == LABEL and "PREDICTED" in LABEL
    assert [k["name"] for k in small_report["kernels"]] == ["good_block_local_histogram", "bad_float_atomic_fp32"]
    assert small_report["kernels"][0]["violations"] == []
    assert small_report["kernels"][1]["violations"][0].startswith("no_float_atomics")
    assert small_report["kernel_modules"]["absent"] == ["absent_op"]
    assert [r["op"] for r in small_report["roofline"]] == list(OPS)
    assert small_report["target"]["arch"] == "sm_90"


def test_markdown_rendering(small_report, tmp_path):
    json_path, md_path = write_static_report(small_report, tmp_path)
    assert (json_path.name, md_path.name) == ("static_sm90_tiny.json", "static_sm90_tiny.md")
    assert json.loads(json_path.read_text()) == small_report
    text = md_path.read_text()
    assert text.splitlines()[2] == f"**{LABEL}.**"
    assert "`good_block_local_histogram`" in text and "`bad_float_atomic_fp32`" in text
    assert "no_float_atomics: 8 floating-point atomics" in text
    assert "absent: absent_op" in text
    for op in OPS:
        assert f"| {op} |" in text
    assert "2 specialisations compiled, 0 failed to compile, 1 violate a check." in text


def test_kernel_row_occupancy_follows_resources(small_report):
    row = small_report["kernels"][0]
    occupancy = theoretical_occupancy(get_target("sm_90"), num_warps=row["num_warps"],
                                      registers_per_thread=row["registers"], user_shared_bytes=row["shared_bytes"])
    assert row["occupancy"]["warps_per_sm"] == occupancy.warps_per_sm
    assert row["occupancy"]["limiter"] == occupancy.limiter


def test_occupancy_of_a_block_that_cannot_be_resident():
    from tests.perf.static.test_checks import make_build

    row = occupancy_of(make_build(num_warps=32, registers=255))
    assert row["warps_per_sm"] == 0 and row["limiter"].startswith("not resident")
    over = occupancy_of(make_build(arch="sm_80", dynamic_shared_bytes=10**6))
    assert over["blocks_per_sm"] == 1 and over["limiter"] == "shared_memory"


def test_required_reports_are_committed():
    names = {p.name for p in COMMITTED}
    missing = [name for name in REQUIRED if name not in names]
    assert not missing, f"missing committed reports: {missing} (run `deftx profile --static`)"
    for name in REQUIRED:
        assert (RESULTS / name).with_suffix(".md").exists()


@pytest.mark.parametrize("path", COMMITTED, ids=[p.stem for p in COMMITTED])
def test_committed_report_matches_fresh_compile(path):
    report = json.loads(path.read_text())
    if report["versions"]["triton"] != triton.__version__:
        pytest.skip(f"{path.name} made with Triton {report['versions']['triton']}, installed {triton.__version__}")
    assert report["label"] == LABEL
    assert path.with_suffix(".md").read_text() == static_markdown(report), "markdown not rendered from the JSON"
    registry = declared_specializations()
    fresh = {r.name: r for r in compile_all(registry.specs, report["target"]["arch"])}
    failures = sorted(n for n, r in fresh.items() if isinstance(r, BuildFailure))
    assert [f["name"] for f in report["compile_failures"]] == failures
    rows = {k["name"]: k for k in report["kernels"]}
    assert sorted(rows) == sorted(n for n in fresh if n not in failures), "report and declared specs differ"
    stale = []
    for name, row in rows.items():
        expected = kernel_row(fresh[name])
        stale += [f"{name}.{key}: report {row[key]!r} != fresh {expected[key]!r}"
                  for key in expected if row[key] != expected[key]]
    assert not stale, "committed report is stale (rerun `deftx profile --static`):\n" + "\n".join(stale[:20])


@pytest.mark.parametrize("path", COMMITTED, ids=[p.stem for p in COMMITTED])
def test_committed_report_numbers_are_consistent(path):
    report = json.loads(path.read_text())
    target = get_target(report["target"]["arch"])
    assert report["target"]["hbm_bytes_per_s"] == target.hbm_bytes_per_s
    for row in report["kernels"]:
        occupancy = theoretical_occupancy(target, num_warps=row["num_warps"], registers_per_thread=row["registers"],
                                          user_shared_bytes=min(row["shared_bytes"], target.max_shared_per_block))
        assert row["occupancy"]["warps_per_sm"] == occupancy.warps_per_sm, row["name"]
        assert row["spill_bytes"] == row["stack_bytes"] + row["local_bytes"]
        sass = row["sass"]
        assert sum(sass["classes"].values()) == sass["total"]
        assert sum(sass["global_load_bits"].values()) == sass["classes"]["global_load"]
        assert sum(sass["global_atomics"].values()) == sass["classes"]["global_atomic"]
        assert sum(sass["mma"].values()) == sass["classes"]["mma"]
        assert bool(row["spill_bytes"] or sass["classes"]["local"]) == any(
            v.startswith("spill") for v in row["violations"])
    shapes = report["shape_set"]
    workload = load_workload(shapes["name"], **shapes["settings"])
    assert workload.summary() == shapes
    predictions, _ = predict(workload, tuple(r["op"] for r in report["roofline"]))
    for row, prediction in zip(report["roofline"], predictions, strict=True):
        assert row["op"] == prediction.op
        fresh = prediction.as_dict(target)
        for side in ("deftx", "baseline"):
            assert row[side]["bytes"] == fresh[side]["bytes"] and row[side]["flops"] == fresh[side]["flops"]
            assert row[side]["time_s"] == pytest.approx(fresh[side]["time_s"], rel=1e-12)
            precision = row[side]["flop_precision"]
            compute = row[side]["flops"] / target.peak_flops[precision] if precision else 0.0
            memory = row[side]["bytes"] / target.hbm_bytes_per_s
            assert row[side]["time_s"] == pytest.approx(max(memory, compute), rel=1e-6)
