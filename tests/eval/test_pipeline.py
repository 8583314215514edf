from __future__ import annotations

import csv
import os
from pathlib import Path

from deftx.eval.config import PipelineConfig, parse_config
from deftx.eval.pipeline import head_curve_table, head_report_line, run_pipeline

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


def tiny_pipeline(tmp_path: Path, model_dir: Path, run: str, methods: dict) -> PipelineConfig:
    return parse_config({
        "name": run, "model": str(model_dir), "output_dir": str(tmp_path / run), "step_store": str(tmp_path / "store"),
        "seeds": [0], "sources": ["indonesian"], "targets": ["madurese"], "methods": methods,
        "training": {"batch_size": 8, "max_length": 32, "save_steps": 50, "logging_steps": 1, "progress": False},
        "mlm_head": {"steps": 2, "batch_size": 8, "seq_len": 32},
        "language_sft": {"k": 0.01, "full": {"steps": 2}, "sparse": {"steps": 2}},
        "task_sft": {"k": 0.05, "full": {"steps": 2}, "sparse": {"steps": 2}},
        "full_finetune": {"steps": 2}, "eval_batch_size": 128,
    })


def test_a_run_links_the_equal_finished_steps_of_a_step_store(tmp_path, tiny_model_dir, monkeypatch):
    monkeypatch.setenv("DEFTX_CACHE", str(tmp_path / "cache"))
    first = tiny_pipeline(tmp_path, tiny_model_dir, "first", {"lt-sft": None})
    run_pipeline(first, log=lambda _: None)
    deft_x = {"rank": 1, "method": "exact"}
    second = tiny_pipeline(tmp_path, tiny_model_dir, "second", {"lt-sft": None, "deft-x": deft_x})
    run_pipeline(second, log=lambda _: None)

    def same_file(relative: str) -> bool:
        return os.stat(tmp_path / "first" / relative).st_ino == os.stat(tmp_path / "second" / relative).st_ino

    for language in ("madurese", "indonesian"):
        assert same_file(f"seed-0/lang/{language}/theta1.safetensors"), f"{language}: phase 1 is linked"
        assert same_file(f"seed-0/lang/{language}/lt-sft/sft.safetensors"), f"{language}: the lt-sft branch too"
    assert same_file("seed-0/task/indonesian/lt-sft/lt-sft/sft.safetensors"), "the task SFT on an equal source SFT"
    assert same_file("seed-0/full/indonesian/final.safetensors"), "the baseline"
    assert (tmp_path / "second" / "seed-0/lang/madurese/deft-x/sft.safetensors").is_file(), "deft-x branch trained"

    def rows(run: str) -> set[tuple[str, str, str]]:
        with (tmp_path / run / "results.csv").open() as handle:
            return {(r["method"], r["target"], r["macro_f1"]) for r in csv.DictReader(handle)
                    if not r["method"].startswith("deft-x")}

    assert rows("first") == rows("second"), "linked steps give the rows they gave where they were trained"
    text = (tmp_path / "second" / "results.md").read_text()
    assert f"step store {tmp_path / 'store'}: this invocation linked 7 finished steps" in text
