"""composable-sft import: files written here in its documented ``pytorch_diff.bin`` layout, converted exactly.

The writer below follows the layout described in deftx.sft.composable (from composable-sft's
source): ``{"diffs": {name: {"size", "index_steps", "values"}}, "abs": {name: tensor}}``,
positions counted first-dimension-fastest (NumPy's ``order="F"``), the first step a NumPy
int64 scalar and the others Python ints.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch

from deftx.sft import SparseDiff, SparseDiffFormatError
from deftx.sft.composable import ComposableSFTFormatError
from deftx.sft.format import ForeignFormatError
from tests.helpers import assert_bitwise_equal
from tests.hub_cache import place_in_hub_cache
from tests.sft.tiny import tiny_bert


def encode(dense: torch.Tensor) -> dict:
    """One ``diffs`` entry of composable-sft's layout for a dense difference tensor."""
    coordinates = np.nonzero(dense.numpy())
    positions = np.sort(np.ravel_multi_index(coordinates, dense.shape, order="F")) if dense.dim() else \
        np.flatnonzero(dense.numpy().reshape(-1))
    values = torch.from_numpy(dense.numpy().reshape(-1, order="F")[positions].copy())
    steps = [positions[0], *np.diff(positions).tolist()] if len(positions) else []
    return {"size": dense.shape, "index_steps": steps, "values": values}


def sparse_delta(shape, seed, density=0.3, dtype=torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    keep = torch.rand(shape, generator=gen) < density
    return torch.where(keep, torch.randn(shape, generator=gen), 0.0).to(dtype)


def write_sft(folder, diffs: dict[str, torch.Tensor], absolute: dict[str, torch.Tensor] | None = None,
              config: dict | None = None, **save_options) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"diffs": {name: encode(d) for name, d in diffs.items()}, "abs": absolute or {}}
    torch.save(payload, folder / "pytorch_diff.bin", **save_options)
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))


def test_conversion_is_exact_for_every_rank(tmp_path):
    deltas = {"matrix": sparse_delta((7, 5), 0), "vector": sparse_delta((9,), 1), "cube": sparse_delta((3, 4, 2), 2),
              "half": sparse_delta((4, 6), 3, dtype=torch.float16)}
    write_sft(tmp_path, deltas)
    diff = SparseDiff.from_composable_sft(tmp_path / "pytorch_diff.bin")
    for name, delta in deltas.items():
        assert diff.params[name].shape == tuple(delta.shape) and diff.params[name].dtype == delta.dtype
        assert_bitwise_equal(diff.delta(name), delta.float(), what=name)
        assert diff.indices[name].numel() == int((delta != 0).sum())
    assert diff.method == "lt-sft" and diff.info["source"] == "composable-sft"


def test_applies_like_composable_sft_adds_its_tensors(tmp_path):
    """composable-sft's apply is ``param += diff`` and ``param.copy_(abs)``: the same weights, bit for bit."""
    model = tiny_bert()
    base = {n: p.detach().clone() for n, p in model.named_parameters()}
    deltas = {n: sparse_delta(base[n].shape, i, density=0.05) for i, n in enumerate(base)
              if n.startswith("bert.encoder")}
    head = {n: torch.randn(base[n].shape) for n in base if n.startswith("classifier")}
    write_sft(tmp_path, deltas, head, {"_name_or_path": "xlm-roberta-base", "architectures": ["XLMRobertaForMaskedLM"]})
    diff = SparseDiff.from_composable_sft(tmp_path)
    diff.apply(model, check_base=False)
    for name, param in model.named_parameters():
        expected = head.get(name, base[name] + deltas[name] if name in deltas else base[name])
        assert_bitwise_equal(param.detach(), expected, what=name)
    assert diff.base_model == "xlm-roberta-base" and diff.info["architecture"] == "XLMRobertaForMaskedLM"


def test_task_config_gives_labels_and_abs_can_be_left_out(tmp_path):
    config = {"_name_or_path": "xlm-roberta-base", "architectures": ["XLMRobertaForSequenceClassification"],
              "id2label": {"1": "neutral", "0": "negative", "2": "positive"}}
    write_sft(tmp_path, {"w": sparse_delta((3, 3), 0)}, {"classifier.weight": torch.ones(3, 2)}, config)
    diff = SparseDiff.from_composable_sft(tmp_path)
    assert diff.info["labels"] == ["negative", "neutral", "positive"] and diff.info["num_labels"] == 3
    assert sorted(diff.dense) == ["classifier.weight"]
    assert SparseDiff.from_composable_sft(tmp_path, with_abs=False).dense == {}


def test_numpy_1_scalar_names_load_and_legacy_serialization_too(tmp_path):
    """Files written under NumPy 1 name the scalar ``numpy.core.multiarray.scalar``."""
    delta = sparse_delta((5, 4), 4)
    write_sft(tmp_path, {"w": delta}, _use_new_zipfile_serialization=False)
    path = tmp_path / "pytorch_diff.bin"
    raw = path.read_bytes()
    assert b"numpy._core.multiarray" in raw
    path.write_bytes(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    assert_bitwise_equal(SparseDiff.from_composable_sft(path).delta("w"), delta, what="w")


def test_repo_id_through_the_hub_cache(tmp_path):
    """Offline path only: files placed in a Hub cache layout, loaded with local_files_only."""
    delta = sparse_delta((6, 2), 5)
    write_sft(tmp_path / "repo", {"w": delta}, config={"_name_or_path": "xlm-roberta-base"})
    place_in_hub_cache(tmp_path / "cache", "cambridgeltl/xlmr-lang-sft-xx-small", tmp_path / "repo")
    diff = SparseDiff.from_composable_sft("cambridgeltl/xlmr-lang-sft-xx-small", cache_dir=tmp_path / "cache",
                                          local_files_only=True)
    assert_bitwise_equal(diff.delta("w"), delta, what="w")
    assert diff.base_model == "xlm-roberta-base"


def test_arbitrary_objects_are_refused_by_weights_only_unpickling(tmp_path):
    torch.save({"diffs": {}, "abs": {}, "trap": argparse.Namespace(x=1)}, tmp_path / "pytorch_diff.bin")
    with pytest.raises(ComposableSFTFormatError, match="refused by weights-only unpickling"):
        SparseDiff.from_composable_sft(tmp_path / "pytorch_diff.bin")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ({"weights": {}}, "expected a dict with 'diffs' and/or 'abs'"),
        ({"diffs": {"w": {"size": torch.Size([2, 2]), "values": torch.ones(1)}}}, "expected the keys"),
        ({"diffs": {"w": {"size": torch.Size([2, 2]), "index_steps": [1, 0], "values": torch.ones(2)}}},
         "steps >= 1"),
        ({"diffs": {"w": {"size": torch.Size([2, 2]), "index_steps": [3, 1], "values": torch.ones(2)}}},
         "outside the shape"),
        ({"diffs": {"w": {"size": torch.Size([2, 2]), "index_steps": [1], "values": torch.ones(2)}}},
         "one value per index step"),
        ({"diffs": {"w": {"size": torch.Size([4]), "index_steps": [0],
                          "values": torch.tensor([0.1], dtype=torch.float64)}}},
         "float32 cannot hold exactly"),
        ({"abs": {"head": torch.ones(2, dtype=torch.int64)}}, "not a floating-point tensor"),
    ],
)
def test_malformed_files_get_their_own_error(tmp_path, payload, message):
    torch.save(payload, tmp_path / "pytorch_diff.bin")
    with pytest.raises(ComposableSFTFormatError, match=message):
        SparseDiff.from_composable_sft(tmp_path / "pytorch_diff.bin")


@pytest.mark.parametrize(("config", "message"), [
    (b"\xff\xfe{}", r"config\.json: not valid JSON .*can't decode byte 0xff"),
    (json.dumps({"id2label": {"neg": "negative", "pos": "positive"}}).encode(), "map the class ids 0 to 1"),
    (json.dumps({"id2label": {"0": "negative", "2": "positive"}}).encode(), r"it maps \['0', '2'\]"),
])
def test_a_model_config_that_is_not_a_config_is_a_format_error(tmp_path, config, message):
    write_sft(tmp_path, {"w": sparse_delta((3, 3), 0)}, {"classifier.weight": torch.ones(2, 3)})
    (tmp_path / "config.json").write_bytes(config)
    with pytest.raises(ComposableSFTFormatError, match=message):
        SparseDiff.from_composable_sft(tmp_path)


def test_a_safetensors_file_is_not_a_composable_sft(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(2)}, str(tmp_path / "pytorch_diff.bin"))
    with pytest.raises(ComposableSFTFormatError, match=r"not a torch\.save file"):
        SparseDiff.from_composable_sft(tmp_path / "pytorch_diff.bin")


def test_sparse_diff_load_names_a_composable_sft_as_foreign(tmp_path):
    write_sft(tmp_path / "zip", {"w": sparse_delta((3, 3), 0)})
    write_sft(tmp_path / "legacy", {"w": sparse_delta((3, 3), 0)}, _use_new_zipfile_serialization=False)
    for folder in ("zip", "legacy"):
        expected = r"a composable-sft SFT .*SparseDiff\.from_composable_sft"
        with pytest.raises(ForeignFormatError, match=expected) as caught:
            SparseDiff.load(tmp_path / folder / "pytorch_diff.bin")
        assert "corrupt" not in str(caught.value) and isinstance(caught.value, SparseDiffFormatError)
    with pytest.raises(ForeignFormatError, match="composable-sft SFT folder"):
        SparseDiff.load(tmp_path / "zip")


def test_open_sft_reads_a_composable_sft_file_under_any_name(tmp_path):
    """``deftx compose --sft sw-lang.bin`` (composable-sft's file, renamed on download) was refused with 'convert it
    with SparseDiff.from_composable_sft(path)', a Python call the command's user cannot make: open_sft, which
    reads composable-sft files, chose its reader by the file's name alone. It reads the file by what it holds."""
    from deftx.sft.sources import open_sft

    delta = sparse_delta((5, 3), 6)
    for folder, options in (("zip", {}), ("legacy", {"_use_new_zipfile_serialization": False})):
        write_sft(tmp_path / folder, {"w": delta}, config={"_name_or_path": "xlm-roberta-base"}, **options)
        renamed = (tmp_path / folder / "pytorch_diff.bin").rename(tmp_path / folder / "sw-lang.bin")
        diff = open_sft(renamed)
        assert_bitwise_equal(diff.delta("w"), delta, what=folder)
        assert diff.base_model == "xlm-roberta-base" and diff.info["source"] == "composable-sft"


def write_language_sft(folder, base_model: str, *, vocab: int = 64, hidden: int = 16, seed: int = 7) -> tuple[
        dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """A composable-sft *language* SFT folder as its run_mlm.py writes one: sparse body diffs, the fully trained
    masked-LM head (BERT's ``cls.predictions.*``) in ``abs``, and the BertForMaskedLM ``config.json`` (with
    transformers' default two ``id2label`` entries). Returns (diffs, abs)."""
    diffs = {"bert.encoder.layer.0.attention.self.query.weight": sparse_delta((hidden, hidden), seed, density=0.1),
             "bert.encoder.layer.0.output.dense.bias": sparse_delta((hidden,), seed + 1, density=0.5)}
    gen = torch.Generator().manual_seed(seed)
    absolute = {"cls.predictions.bias": torch.randn(vocab, generator=gen),
                "cls.predictions.transform.dense.weight": torch.randn(hidden, hidden, generator=gen),
                "cls.predictions.transform.LayerNorm.weight": torch.randn(hidden, generator=gen)}
    config = {"_name_or_path": base_model, "architectures": ["BertForMaskedLM"], "model_type": "bert",
              "id2label": {"0": "LABEL_0", "1": "LABEL_1"}, "label2id": {"LABEL_0": 0, "LABEL_1": 1}}
    write_sft(folder, diffs, absolute, config)
    return diffs, absolute


def test_a_language_sft_is_not_read_as_a_classifier_and_its_mlm_head_is_left_out(tmp_path, capsys):
    """The MLM head in ``abs`` used to give info num_labels=2 (the MLM config's default id2label) and dense
    tensors no classifier has; by default it is left out, as composable-sft applies language SFTs."""
    from deftx.sft.sources import open_sft

    diffs, absolute = write_language_sft(tmp_path / "lang", "bert-base-multilingual-cased")
    diff = open_sft(tmp_path / "lang")
    assert diff.dense == {}
    assert not {"num_labels", "labels", "pooling"} & set(diff.info)
    assert diff.info["architecture"] == "BertForMaskedLM" and diff.info["abs_left_out"] == sorted(absolute)
    for name, delta in diffs.items():
        assert_bitwise_equal(diff.delta(name), delta, what=name)
    note = capsys.readouterr().err.splitlines()
    assert len(note) == 1 and "left out the masked-LM head" in note[0] and "cls.predictions.bias" in note[0]
    kept = SparseDiff.from_composable_sft(tmp_path / "lang", with_abs=True)
    assert sorted(kept.dense) == sorted(absolute) and "num_labels" not in kept.info
    for name, tensor in absolute.items():
        assert_bitwise_equal(kept.dense[name], tensor, what=name)


@pytest.mark.parametrize(
    ("abs_names", "architecture"),
    [(["classifier.weight", "classifier.bias"], "BertForMaskedLM"),
     (["classifier.out_proj.weight"], "XLMRobertaForTokenClassification"),
     (["head.weight"], "XLMRobertaForSequenceClassification")],
)
def test_a_classifier_head_in_abs_gives_labels(tmp_path, abs_names, architecture):
    config = {"architectures": [architecture], "id2label": {"0": "no", "1": "yes"}}
    write_sft(tmp_path, {"w": sparse_delta((3, 3), 0)}, {n: torch.ones(2, 3) for n in abs_names}, config)
    diff = SparseDiff.from_composable_sft(tmp_path)
    assert sorted(diff.dense) == sorted(abs_names)
    assert diff.info["labels"] == ["no", "yes"] and diff.info["num_labels"] == 2 and "abs_left_out" not in diff.info
