"""Workloads: hand-counted parameter totals of the built-in models, settings and the JSON format."""

from __future__ import annotations

import json

import pytest

from deftx.perf.shapes import load_shape_set
from deftx.perf.workload import BUILTIN_WORKLOADS, OpSettings, load_workload

ENCODER_LAYER = 4 * (768 * 768 + 768) + 3072 * 768 + 3072 + 768 * 3072 + 768 + 2 * 2 * 768


def test_xlmr_base_counts():
    s = load_workload("xlmr-base")
    embeddings = 250002 * 768 + 514 * 768 + 1 * 768 + 2 * 768
    assert s.shapes.numel == embeddings + 12 * ENCODER_LAYER == 277_453_056
    frozen = 2 * 768 + 12 * 4 * 768
    assert sum(p.numel for p in s.eligible) == 277_453_056 - frozen
    assert len(s.matrices) == 3 + 12 * 6
    assert s.dtype == "fp32" and s.k == round(0.051 * (277_453_056 - frozen))


def test_mbert_counts():
    s = load_workload("mbert")
    embeddings = 119547 * 768 + 512 * 768 + 2 * 768 + 2 * 768
    assert s.shapes.numel == embeddings + 12 * ENCODER_LAYER == 177_262_848


def test_llama_7b_counts():
    s = load_workload("llama-7b")
    layer = 4 * 4096 * 4096 + 3 * 11008 * 4096 + 2 * 4096
    assert s.shapes.numel == 2 * 32000 * 4096 + 32 * layer + 4096 == 6_738_415_616
    assert len(s.matrices) == 2 + 32 * 7 and s.dtype == "bf16"
    assert all("norm" not in p.name for p in s.eligible)


def test_settings_override():
    s = load_workload("tiny", rank=4, k_fraction=0.5)
    assert s.settings.rank == 4 and s.settings.sketch_columns == 4 + 8
    assert s.k == round(0.5 * sum(p.numel for p in s.eligible))
    assert BUILTIN_WORKLOADS["tiny"].settings.rank == 8


def write(tmp_path, payload) -> str:
    path = tmp_path / "set.json"
    path.write_text(json.dumps(payload))
    return str(path)


def test_json_workload(tmp_path):
    path = write(tmp_path, {"name": "mine", "dtype": "bf16", "parameters": {"w": [8, 4], "b": [4], "ln": [4]},
                            "frozen": ["ln"], "settings": {"k_fraction": 0.25, "rank": 2}})
    s = load_workload(path)
    assert s.name == "mine" and s.dtype == "bf16"
    assert [p.name for p in s.eligible] == ["w", "b"] and [p.name for p in s.matrices] == ["w"]
    assert s.k == 9 and s.settings == OpSettings(k_fraction=0.25, rank=2)
    assert s.summary()["parameters"] == 40 and s.summary()["eligible"] == 36


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        ({"parameters": {}}, "non-empty 'parameters'"),
        ({"parameters": {"w": [4, 0]}}, "positive integers"),
        ({"parameters": {"w": "4x4"}}, "positive integers"),
        ({"dtype": "int8", "parameters": {"w": [4]}}, "dtype"),
        ({"parameters": {"w": [4]}, "frozen": ["x"]}, "unknown parameters"),
        ({"parameters": {"w": [4]}, "frozen": ["w"]}, "every parameter is frozen"),
        ({"parameters": {"w": [4]}, "settings": {"speed": 2}}, "settings"),
        ({"parameters": {"w": [4]}, "settings": {"k_fraction": 2.0}}, "k_fraction"),
        ({"parameters": {"w": [4]}, "settings": {"rank": 0}}, "rank"),
    ],
)
def test_bad_json_workloads(tmp_path, payload, match):
    with pytest.raises(ValueError, match=match):
        load_workload(write(tmp_path, payload))


@pytest.mark.parametrize("load", [load_shape_set, load_workload], ids=["shape set", "workload"])
def test_unknown_name_and_bad_json(load, tmp_path):
    with pytest.raises(ValueError, match=r"unknown shape set 'gpt-5': not a built-in \(.*xlmr-base"):
        load("gpt-5")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load(str(bad))
