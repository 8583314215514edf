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
        ({"parameters": {}}, "'parameters' must be a non-empty object"),
        ({"parameters": {"w": []}}, "integers >= 0"),
        ({"tensors": [{"name": "w", "shape": [4]}], "dtype": "fp64"}, "dtype"),
        ({"parameters": {"w": [4, -1]}}, "integers >= 0"),
        ({"parameters": {"w": "4x4"}}, "integers >= 0"),
        ({"dtype": "int8", "parameters": {"w": [4]}}, "dtype"),
        ({"parameters": {"w": [4]}, "frozen": ["x"]}, "unknown parameters"),
        ({"parameters": {"w": [4]}, "frozen": ["w"]}, "every parameter is frozen"),
        ({"parameters": {"w": [4]}, "settings": {"speed": 2}}, "settings"),
        ({"parameters": {"w": [4]}, "settings": {"k_fraction": 2.0}}, "k_fraction"),
        ({"parameters": {"w": [4]}, "settings": {"rank": 0}}, "rank"),
        ({"parameters": {"w": [4]}, "settings": {"l1": "false"}}, "l1 must be true or false"),
        ({"parameters": {"w": [4]}, "settings": {"l1": 1}}, "l1 must be true or false"),
        ({"parameters": {"w": [4]}, "settings": {"k_fraction": "0.05"}}, "k_fraction"),
        ({"parameters": {"w": [4]}, "settings": {"k_fraction": True}}, "k_fraction"),
        ({"parameters": {"w": [4]}, "settings": {"rank": 16.0}}, "rank must be an integer"),
        ({"parameters": {"w": [4]}, "settings": {"rank": True}}, "rank must be an integer"),
        ({"parameters": {"w": [4]}, "settings": {"n_iter": None}}, "n_iter must be an integer"),
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


def test_a_layered_shape_file_is_a_workload_with_its_dtype_and_settings(tmp_path):
    """profile reads bench's layered form too: the same tensors as bench's reader, layers expanded."""
    path = write(tmp_path, {"name": "layered", "dtype": "fp16", "settings": {"rank": 3},
                            "tensors": [{"name": "emb", "shape": [50, 8], "vocab": True}],
                            "num_layers": 2,
                            "layer_tensors": [{"name": "w", "shape": [8, 8]},
                                              {"name": "ln", "shape": [8], "frozen": True}]})
    s = load_workload(path)
    assert s.shapes.flat() == load_shape_set(path).flat()
    assert [p.name for p in s.eligible] == ["emb", "layers.0.w", "layers.1.w"]
    assert s.dtype == "fp16" and s.settings == OpSettings(rank=3)
    assert s.k == round(0.051 * (50 * 8 + 2 * 64))


def test_bench_only_built_in_sets_are_fp32_workloads():
    s = load_workload("e5-small")
    assert s.shapes == load_shape_set("e5-small") and s.dtype == "fp32" and s.settings == OpSettings()


def test_a_key_written_twice_is_refused(tmp_path):
    path = tmp_path / "twice.json"
    path.write_text('{"parameters": {"w": [4, 4]}, "dtype": "fp32", "dtype": "bf16"}')
    for load in (load_shape_set, load_workload):
        with pytest.raises(ValueError, match=r"twice\.json: duplicate key 'dtype'"):
            load(str(path))
