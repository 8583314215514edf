"""Shape sets: built-in parameter counts, --scale, streaming chunks, the custom JSON format."""

from __future__ import annotations

import json

import pytest

from deftx.perf.shapes import (
    BUILTIN_SHAPE_SETS,
    LLAMA_2_70B,
    TINY,
    ShapeSet,
    TensorShape,
    load_shape_set,
    shape_set_from_json,
)


def _bert_params(vocab: int, positions: int, types: int, h: int, ffn: int, layers: int) -> int:
    embeddings = (vocab + positions + types) * h + 2 * h
    attention = 4 * (h * h + h) + 2 * h
    feed_forward = ffn * h + ffn + h * ffn + h + 2 * h
    return embeddings + layers * (attention + feed_forward)


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("xlmr-base", _bert_params(250002, 514, 1, 768, 3072, 12)),
        ("mbert", _bert_params(119547, 512, 2, 768, 3072, 12)),
        ("e5-small", _bert_params(250037, 512, 2, 384, 1536, 12)),
        ("llama-7b", 6_738_415_616),  # the published LLaMA-7B parameter count
    ],
)
def test_builtin_parameter_counts(name: str, expected: int) -> None:
    assert BUILTIN_SHAPE_SETS[name].numel == expected


def test_builtin_sets_are_ordered_by_size_from_100m_to_7b() -> None:
    sizes = [s.numel for s in BUILTIN_SHAPE_SETS.values()]
    assert sizes == sorted(sizes)
    assert 100e6 < sizes[0] < 130e6 and 6.5e9 < sizes[-1] < 7e9


def test_xlmr_base_layout() -> None:
    xlmr = BUILTIN_SHAPE_SETS["xlmr-base"]
    flat = xlmr.flat()
    assert flat[0] == TensorShape("embeddings.word_embeddings.weight", (250002, 768), vocab=True)
    assert len(xlmr.matrices()) == 3 + 12 * 6  # word, position, token type; q/k/v/o + 2 ffn per layer
    assert sum(1 for t in flat if t.name.endswith("intermediate.dense.weight")) == 12


def test_norm_weights_are_frozen_and_every_other_tensor_eligible() -> None:
    xlmr, llama = BUILTIN_SHAPE_SETS["xlmr-base"], BUILTIN_SHAPE_SETS["llama-7b"]
    assert {t.name for t in xlmr.flat() if t.frozen} == {t.name for t in xlmr.flat() if "LayerNorm" in t.name}
    assert {t.name for t in llama.flat() if t.frozen} == {t.name for t in llama.flat() if "norm" in t.name}
    assert llama.numel - sum(t.numel for t in llama.eligible()) == (2 * 32 + 1) * 4096
    assert all(len(t.shape) == 2 and not t.frozen for t in llama.matrices())


def test_the_other_model_shapes() -> None:
    # Llama-2-70B: 68,976,648,192 parameters (grouped-query attention: k/v projections 1024 x 8192)
    assert LLAMA_2_70B.numel == 68_976_648_192 and len(LLAMA_2_70B.matrices()) == 2 + 7 * 80
    assert TINY.numel == _bert_params(1000, 128, 2, 64, 256, 2)


def test_scaled_keeps_a_fraction_of_layers_and_vocab_rows() -> None:
    xlmr = BUILTIN_SHAPE_SETS["xlmr-base"]
    quarter = xlmr.scaled(0.25)
    assert quarter.num_layers == 3
    assert quarter.tensors[0].shape == (62500, 768)  # round(0.25 * 250002)
    assert quarter.tensors[1].shape == (514, 768)  # positions are not vocabulary
    assert "3 of 12 layers" in quarter.note
    assert xlmr.scaled(1.0) is xlmr
    assert xlmr.scaled(0.01).num_layers == 1  # at least one layer


@pytest.mark.parametrize("fraction", [0.0, -0.5, 1.5])
def test_scaled_rejects_fractions_outside_0_1(fraction: float) -> None:
    with pytest.raises(ValueError, match="scale must be in"):
        BUILTIN_SHAPE_SETS["mbert"].scaled(fraction)


def test_chunks_cover_the_set_in_order_within_the_budget() -> None:
    llama = BUILTIN_SHAPE_SETS["llama-7b"]
    chunks = llama.chunks(1_000_000_000)
    assert [t for c in chunks for t in c.flat()] == list(llama.flat())
    assert all(c.numel <= 1_000_000_000 for c in chunks)
    assert len(chunks) == 7


def test_a_tensor_larger_than_the_chunk_is_a_chunk_of_its_own() -> None:
    s = ShapeSet("s", (TensorShape("a", (10,)), TensorShape("big", (100,)), TensorShape("b", (5,))))
    assert [[t.name for t in c.flat()] for c in s.chunks(12)] == [["a"], ["big"], ["b"]]
    with pytest.raises(ValueError, match="positive"):
        s.chunks(0)


def test_json_round_trip(tmp_path) -> None:
    original = BUILTIN_SHAPE_SETS["e5-small"].scaled(0.5)
    path = tmp_path / "e5.json"
    path.write_text(json.dumps(original.to_json()))
    loaded = load_shape_set(str(path))
    assert loaded.flat() == original.flat()
    assert loaded.name == "e5-small"
    assert any(t.frozen for t in loaded.flat())


def test_json_defaults_num_layers_to_one_and_name_to_the_file_stem(tmp_path) -> None:
    path = tmp_path / "mine.json"
    path.write_text(json.dumps({"layer_tensors": [{"name": "w", "shape": [3, 4]}]}))
    loaded = load_shape_set(str(path))
    assert loaded.name == "mine"
    assert [t.name for t in loaded.flat()] == ["layers.0.w"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ([], "must be a JSON object"),
        ({"tensors": []}, "no tensors"),
        ({"tensors": [{"name": "a"}]}, "a string 'name' and a 'shape'"),
        ({"tensors": [{"name": 3, "shape": [1]}]}, "a string 'name'"),
        ({"tensors": [{"name": "a", "shape": [2.5]}]}, "non-empty list of integers >= 0"),
        ({"tensors": [{"name": "a", "shape": []}]}, "non-empty list of integers >= 0"),
        ({"tensors": [{"name": "a", "shape": [4, -2]}]}, "non-empty list of integers >= 0"),
        ({"tensors": [{"name": "a", "shape": [True]}]}, "non-empty list of integers >= 0"),
        ({"tensors": [{"name": "a", "shape": [2], "vocab": "false"}]}, "'vocab' must be true or false"),
        ({"tensors": [{"name": "a", "shape": [2], "frozen": 1}]}, "'frozen' must be true or false"),
        ({"tensors": [{"name": "a", "shape": [2]}], "name": 7}, "'name' must be a string"),
        ({"layer_tensors": [{"name": "a", "shape": [1]}], "num_layers": -1}, "num_layers must be an integer >= 0"),
        ({"tensors": [{"name": "a", "shape": [-1, 3]}]}, "integers >= 0"),
        ({"tensors": [{"name": "a", "shape": [1]}, {"name": "a", "shape": [2]}]}, "appears twice"),
        ({"tensors": [{"name": "a", "shape": [1], "dtype": "fp32"}]}, "unknown keys"),
        ({"tensors": [{"name": "a", "shape": [1]}], "layers": 3}, "unknown keys"),
        ({"layer_tensors": [{"name": "a", "shape": [1]}], "num_layers": "2"}, "num_layers must be an integer"),
    ],
)
def test_bad_json_is_rejected_with_a_clear_error(data, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        shape_set_from_json(data, "bad.json")
