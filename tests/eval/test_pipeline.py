from __future__ import annotations

from deftx.eval.pipeline import head_curve_table, head_report_line

METRICS = {
    "steps": 20, "seconds": 90.0, "heldout_seconds": 6.0, "cache_hit": False, "corpora": ["nusax", "americasnlp"],
    "initial_accuracy": 0.0125, "final_accuracy": 0.25,
    "train_curve": [{"step": 10, "loss": 7.0, "accuracy": 0.1}, {"step": 20, "loss": 6.0, "accuracy": 0.2345}],
    "heldout_curve": [
        {"step": 0, "seconds": 3.0, "groups": {"nusax": {"accuracy": 0.01}, "americasnlp": {"accuracy": 0.0}}},
        {"step": 10, "seconds": 45.0, "groups": {"nusax": {"accuracy": 0.12}, "americasnlp": {"accuracy": 0.05}}},
        {"step": 20, "seconds": 90.0, "groups": {"nusax": {"accuracy": 0.2}, "americasnlp": {"accuracy": 0.0625}}},
    ],
}


def test_head_curve_table_one_row_per_heldout_point():
    assert head_curve_table(METRICS).splitlines() == [
        "| step | min | training accuracy | held out nusax | held out americasnlp |",
        "|---:|---:|---:|---:|---:|",
        "| 0 | 0.1 |  | 0.010 | 0.000 |",
        "| 10 | 0.8 | 0.100 | 0.120 | 0.050 |",
        "| 20 | 1.5 | 0.234 | 0.200 | 0.062 |",
    ]


def test_head_curve_table_empty_without_heldout_text():
    assert head_curve_table({**METRICS, "heldout_curve": []}) == ""


def test_head_report_line_names_cost_and_first_last_accuracy():
    line = head_report_line(METRICS)
    assert line.startswith("MLM head warm-up (trained): 20 steps on nusax+americasnlp text, 90 s when trained "
                           "(6 s of it held-out scoring)")
    assert "training batches 0.013 -> 0.250" in line
    assert "held out: nusax 0.010 -> 0.200, americasnlp 0.000 -> 0.062" in line
