"""Result tables: the speedup pairing and the number formats."""

from __future__ import annotations

import pytest

from deftx.perf.report import format_bytes, format_k, format_seconds, format_table, markdown_table
from deftx.perf.suite import comparisons


def _row(op, name, role, k, seconds, **extra):
    return {
        "op": op,
        "name": name,
        "role": role,
        "k_fraction": k,
        "time_s": seconds,
        "gbps": 1.0,
        "roofline_pct": 10.0,
        "roofline": "memory",
        **extra,
    }


def test_comparisons_pair_every_deftx_row_with_each_baseline_of_the_same_op_and_k() -> None:
    rows = [
        _row("topk", "deftx[native]", "deftx", 0.01, 0.5, auto=True),
        _row("topk", "deftx[torch]", "deftx", 0.01, 4.0),
        _row("topk", "torch.cat+topk", "baseline", 0.01, 2.0),
        _row("topk", "torch.cat+topk", "baseline", 0.1, 9.0),
        _row("scatter", "index_add_ loop", "baseline", 0.01, 1.0),
        {"op": "topk", "name": "torch.cat+kthvalue", "role": "baseline", "k_fraction": 0.01, "error": "boom"},
    ]
    pairs = comparisons(rows)
    assert [(p["deftx"], p["baseline"], p["speedup"]) for p in pairs] == [
        ("deftx[native]", "torch.cat+topk", 4.0),
        ("deftx[torch]", "torch.cat+topk", 0.5),
    ]
    assert pairs[0]["auto"] is True and pairs[1]["auto"] is False


@pytest.mark.parametrize(
    ("seconds", "text"), [(2.345, "2.35 s"), (0.0123, "12.3 ms"), (4.5e-5, "45 us"), (None, "-"), (float("nan"), "-")]
)
def test_format_seconds(seconds, text) -> None:
    assert format_seconds(seconds) == text


def test_format_seconds_with_more_digits_for_the_static_report() -> None:
    assert format_seconds(2.3456, digits=(3, 3, 1)) == "2.346 s"
    assert format_seconds(4.56e-5, digits=(3, 3, 1)) == "45.6 us"


@pytest.mark.parametrize(
    ("nbytes", "text"), [(512, "512 B"), (3 * 2**20 + 2**19, "3.5 MiB"), (1.5 * 2**30, "1.50 GiB"), (None, "-")]
)
def test_format_bytes(nbytes, text) -> None:
    assert format_bytes(nbytes) == text


def test_format_k_and_tables() -> None:
    assert format_k(0.001) == "0.1%" and format_k(None) == "-"
    text = format_table(("a", "bb"), [["xyz", "1"]])
    assert text.splitlines() == ["a    bb", "---  --", "xyz  1 "]
    assert markdown_table(("a", "b"), [["1", "2"]]).splitlines() == ["| a | b |", "|---|---|", "| 1 | 2 |"]
    assert markdown_table(("a", "b"), [["1", "2"]], "lr").splitlines()[1] == "|---|---:|"


def test_ratios_never_round_a_slowdown_to_even_or_a_tiny_ratio_to_zero():
    from deftx.perf.anchor import times_faster
    from deftx.perf.report import _times

    assert [_times(x) for x in (0.004321, 0.0996, 0.96, 1.29, 3162.4, None)] == [
        "0.0043x", "0.1x", "0.96x", "1.29x", "3,162x", "-"]
    assert [times_faster(x) for x in (0.96, 1.0, 4.0, 12.34)] == ["0.96×", "1.00×", "4.00×", "12.3×"]


def _suite_doc(results):
    return {"shape_set": {"name": "tiny"}, "results": results, "comparisons": comparisons(results)}


def test_the_table_holds_every_row_measured_failed_or_skipped() -> None:
    from deftx.perf.report import table_rows

    results = [
        _row("topk", "deftx[native]", "deftx", 0.01, 0.5, auto=True),
        {"op": "topk", "name": "torch.cat+topk", "role": "baseline", "k_fraction": 0.01,
         "error": "OutOfMemoryError: CUDA out of memory"},
        _row("rsvd", "deftx[torch]", "deftx", None, 0.2),
        _row("rsvd", "torch.svd_lowrank", "baseline", None, 0.1),
        {"op": "rsvd", "name": "deftx[triton]", "role": "deftx", "k_fraction": None, "error": "wrong output: x",
         "wrong_output": True},
        {"op": "step", "name": "torch.optim.AdamW", "role": "baseline", "k_fraction": 0.05,
         "skipped": "not run: the suite's time budget was spent"},
    ]
    rows = table_rows(_suite_doc(results))
    cells = [(r[0], r[2], r[3], r[4], r[5], r[6], r[7]) for r in rows]
    assert cells == [
        ("topk", "1%", "deftx[native] (auto)", "500.0 ms", "-", "-", "-"),
        ("topk", "1%", "-", "-", "torch.cat+topk", "failed", "-"),
        ("rsvd", "-", "deftx[torch]", "200.0 ms", "torch.svd_lowrank", "100.0 ms", "0.50x"),
        ("rsvd", "-", "deftx[triton]", "wrong output", "-", "-", "-"),
        ("step", "5%", "-", "-", "torch.optim.AdamW", "skipped", "-"),
    ]


def test_the_table_never_rounds_a_small_rate_or_share_of_the_roof_to_zero() -> None:
    from deftx.perf.report import table_rows

    results = [
        {**_row("topk", "deftx[torch]", "deftx", 0.01, 2.0), "gbps": 0.004, "roofline_pct": 0.03},
        _row("topk", "torch.cat+topk", "baseline", 0.01, 1.0),
    ]
    row = table_rows(_suite_doc(results))[0]
    assert (row[8], row[9]) == ("0.004", "0.03")


def test_the_summary_says_how_many_timed_calls_each_median_is_of_and_the_warm_up() -> None:
    from deftx.perf.report import summary_lines

    results = [
        {**_row("rsvd", "deftx[torch]", "deftx", None, 12.0), "samples_s": [12.0]},
        {**_row("rsvd", "torch.linalg.svd", "baseline", None, 2.0), "samples_s": [2.0, 2.1, 1.9, 2.0]},
    ]
    doc = {
        **_suite_doc(results),
        "device": "cpu",
        "machine": {"cpu": "x", "torch_threads": 2, "torch": "2", "load_average_at_start": [1.0],
                    "load_average_at_end": [1.0]},
        "roofline": {"copy_gbps": 10.0, "matmul_gflops": 100.0},
        "shape_set": {"name": "tiny", "parameters": 10, "tensors": 1, "note": "full set"},
        "config": {"dtype": "fp32", "rank": 32, "timing": {"warmup": 1}},
    }
    text = "\n".join(summary_lines(doc))
    assert "time = median of 1 to 4 timed calls per row (1 untimed warm-up call first)" in text


def test_the_scaling_table_holds_the_k_sweep_and_never_shows_a_small_set_as_0m() -> None:
    from deftx.perf.report import SCALING_COLUMNS, scaling_table

    def point(shape_set, parameters, k, seconds):
        return {"op": "topk", "shape_set": shape_set, "parameters": parameters, "k_fraction": k, "chunks": 1,
                "deftx": "deftx[native]", "deftx_time_s": seconds, "deftx_gbps": 1.0, "baseline": "torch.cat+topk",
                "baseline_time_s": 2 * seconds}

    doc = {"size_sweep": [point("xlmr-base", 278_000_000, 0.01, 1.0)],
           "k_sweep": [point("tiny", 38_272, 0.001, 0.002), point("tiny", 38_272, 0.1, 0.004)]}
    rows = [dict(zip(SCALING_COLUMNS, row, strict=True)) for row in scaling_table(doc)]
    assert [(r["sweep"], r["shape set"], r["params"], r["K"], r["deftx time"], r["speedup"]) for r in rows] == [
        ("size", "xlmr-base", "278M", "1%", "1.00 s", "2.00x"),
        ("K", "tiny", "0.038M", "0.1%", "2.0 ms", "2.00x"),
        ("K", "tiny", "0.038M", "10%", "4.0 ms", "2.00x"),
    ]


def test_a_cell_holding_a_pipe_stays_one_markdown_cell() -> None:
    table = markdown_table(("baseline", "time"), [["torch.svd_lowrank + |U S Vh|", "45.5 ms"]])
    row = table.splitlines()[2]
    assert row == r"| torch.svd_lowrank + \|U S Vh\| | 45.5 ms |"
    assert len(row.replace(r"\|", "").split("|")) - 2 == 2
