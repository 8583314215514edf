"""The summary: the issue's goals read from benchmark documents, and its markdown."""

from __future__ import annotations

import json

import pytest

from deftx.gpucheck.summary import (
    build_summary,
    console_lines,
    evaluate_goals,
    kernels_document,
    kernels_markdown,
    render_markdown,
)


def deftx_row(op, k, **fields):
    return {"op": op, "k_fraction": k, "role": "deftx", "auto": True, "name": "deftx[triton]", "impl": "deftx:triton",
            "time_s": 1e-3, **fields}


def comparison(op, k, baseline, speedup, **fields):
    return {"op": op, "k_fraction": k, "deftx": "deftx[triton]", "auto": True, "baseline": baseline,
            "speedup": speedup, **fields}


def document(name, dtype, rows, comparisons):
    return {"shape_set": {"name": name}, "config": {"dtype": dtype}, "device": "cuda", "results": rows,
            "comparisons": comparisons}


LLAMA = document(
    "llama-7b", "bf16",
    [deftx_row("topk", 0.01, roofline_pct=40.0), deftx_row("compose", 0.01, roofline_pct=65.0),
     {"op": "compose", "k_fraction": 0.01, "role": "baseline", "impl": "deftx_prepared", "time_s": 1e-3,
      "roofline_pct": 75.0},
     deftx_row("step", 0.05, host_overhead={"syncs": 2, "kernels": 3, "memcpy": 0, "memset": 0}),
     {"op": "step", "k_fraction": 0.05, "role": "baseline", "impl": "deftx_prepared", "time_s": 2e-3},
     {"op": "step", "k_fraction": 0.05, "role": "baseline", "impl": "adamw_fused", "time_s": 5e-3},
     {"op": "scores", "k_fraction": None, "role": "baseline", "impl": "deftx_tensor_cores", "time_s": 0.25,
      "score_error": 0.104},
     {"op": "scores", "k_fraction": None, "role": "baseline", "impl": "svd_lowrank_abs", "time_s": 1.0,
      "score_error": 0.1}],
    [comparison("topk", 0.01, "torch.cat+topk", 6.0), comparison("step", 0.05, "AdamW(fused=True)", 3.5),
     comparison("scores", None, "torch.svd_lowrank + |U S Vh|", 2.0, deftx_score_error=0.2,
                baseline_score_error=0.1)],
)
XLMR = document(
    "xlmr-base", "fp32",
    [deftx_row("topk", 0.01, host_overhead={"syncs": 1, "kernels": 12, "memcpy": 3, "memset": 2}),
     deftx_row("step", 0.05, host_overhead={"syncs": 0, "kernels": 1, "memcpy": 0, "memset": 0})],
    [comparison("scores", None, "torch.svd_lowrank + |U S Vh|", 1.6, deftx_score_error=0.1,
                baseline_score_error=0.1)],
)


@pytest.fixture
def work(tmp_path):
    for stage, doc in (("bench-llama", LLAMA), ("bench-xlmr", XLMR)):
        folder = tmp_path / stage
        folder.mkdir()
        path = folder / f"h200_{doc['shape_set']['name']}.json"
        path.write_text(json.dumps(doc))
        path.with_suffix(".md").write_text(f"# deftx bench: {doc['shape_set']['name']}\n\ntable\n")
        (folder / "result.json").write_text(json.dumps({"status": "ok", "headline": "h", "document": str(path)}))
    (tmp_path / "histogram").mkdir()
    rows = [{"role": "pass", "dtype": "fp32", "data": "weight-diff", "kernel": "count", "gbps": 3000.0,
             "pct_of_copy": 70.0},
            {"role": "pass", "dtype": "bf16", "data": "spread", "kernel": "partition", "gbps": 2000.0,
             "pct_of_copy": 45.0},
            {"role": "fallback", "dtype": "bf16", "data": "spread", "kernel": "fallback pass 1", "gbps": 1000.0,
             "pct_of_copy": 20.0},
            {"role": "probe", "dtype": "bf16", "data": "spread", "kernel": "probe: read + digit sum", "gbps": 4000.0,
             "pct_of_copy": 95.0}]
    (tmp_path / "histogram" / "result.json").write_text(json.dumps({"status": "ok", "rows": rows, "copy_gbps": 4300}))
    return tmp_path


def by_goal(goals):
    return {(g["goal"].split(" ")[0], g["where"].split(" ")[0]): g for g in goals}


def test_goals_are_met_missed_or_not_measured_from_the_documents(work):
    goals = evaluate_goals(work)
    statuses = [(g["goal"], g["where"], g["status"]) for g in goals]
    assert ("top-k (public topk_mask) >= 5x cat + torch.topk", "llama-7b bf16 on cuda, K = 1%", "met") in statuses
    assert ("top-k within 3x of the floor (one read + index writes at the copy bandwidth)",
            "llama-7b bf16 on cuda, K = 1%", "met") in statuses
    radix = next(g for g in goals if g["goal"].startswith("each pass over the data"))
    assert (radix["status"], radix["shown"]) == ("missed", "45.0%")
    syncs = [g for g in goals if g["goal"].startswith("no device->host sync")]
    assert [(g["where"], g["status"]) for g in syncs] == [("xlmr-base fp32 on cuda, K = 5%", "met"),
                                                          ("llama-7b bf16 on cuda, K = 5%", "missed")]
    launches = next(g for g in goals if g["goal"].startswith("topk_mask over"))
    assert (launches["measured"], launches["status"]) == (17, "met")
    compose = [g for g in goals if g["goal"].startswith("compose")]
    assert [g["status"] for g in compose] == ["not measured", "not measured", "missed", "met"]
    assert compose[3]["goal"].startswith("compose 2 SFTs prepared once") and compose[3]["shown"] == "75.0%"
    assert compose[0]["where"] == "xlmr-base fp32 on cuda, K = 1%"
    step = [g for g in goals if g["goal"].startswith("masked AdamW")]
    assert [g["status"] for g in step] == ["not measured", "not measured", "met", "missed"]
    assert step[3]["goal"].startswith("masked AdamW as MaskedAdamW steps") and step[3]["shown"] == "2.50x"
    scores = [g for g in goals if g["goal"].startswith("DeFT-X scores")]
    assert [(g["where"].split(" ")[0], g["status"], g["shown"]) for g in scores] == [
        ("xlmr-base", "met", "1.60x, error ratio 1.000"),
        ("xlmr-base", "not measured", "-"),  # no tensor-core row in this document
        ("llama-7b", "missed", "2.00x, error ratio 2.000"),
        ("llama-7b", "met", "4.00x, error ratio 1.040"),
    ]
    assert scores[3]["goal"].endswith("(tensor-core products)") and not scores[2]["goal"].endswith(")")


def test_goals_without_any_result_are_all_not_measured_and_name_the_issue_sets(tmp_path):
    goals = evaluate_goals(tmp_path)
    assert {g["status"] for g in goals} == {"not measured"}
    assert goals[0]["where"] == "llama-7b bf16, K = 1%"


def test_summary_markdown_and_console_carry_stages_goals_and_tables(work):
    records = [{"stage": "bench-llama", "budget_s": 100, "seconds": 50.0, "status": "ok", "headline": "8 rows"},
               {"stage": "ncu", "budget_s": 40, "seconds": 0.0, "status": "skipped", "headline": "needs CUDA"}]
    summary = build_summary({"command": "python -m deftx.gpucheck --out x", "device": "cuda"}, records, work)
    assert summary["schema"] == "deftx-gpucheck/1"
    assert set(summary["results"]) == {"bench-llama"}
    text = render_markdown(summary, work)
    assert "| bench-llama | ok | 50.0 s | 100 s | 8 rows |" in text
    assert "## Benchmark: llama-7b" in text
    assert "| top-k (public topk_mask) >= 5x cat + torch.topk | llama-7b bf16 on cuda, K = 1% | >= 5x | 6.00x | met |" \
        in text
    lines = console_lines(summary)
    assert any(line.startswith("  ncu          skipped") for line in lines)
    assert any("missed       each pass over the data" in line for line in lines)
    assert kernels_document(summary, work)["schema"] == "deftx-gpucheck-kernels/1"
    kernels = kernels_markdown(summary, work)
    assert kernels.startswith("# deftx kernels on the GPU (measured)")
    assert "Machine: not recorded." in kernels
