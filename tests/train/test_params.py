"""Parameter groups and eligibility on real transformers BERT names."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForMaskedLM, BertModel

from deftx.train.params import (
    body_prefix,
    eligible_parameter_names,
    load_values_,
    parameter_group,
    parameter_groups,
    snapshot,
)
from tests.helpers import assert_bitwise_equal
from tests.train.conftest import tiny_config, tiny_model

EXPECTED = {
    "bert.embeddings.word_embeddings.weight": "word_embeddings",
    "bert.embeddings.position_embeddings.weight": "embeddings",
    "bert.embeddings.token_type_embeddings.weight": "embeddings",
    "bert.embeddings.LayerNorm.weight": "layer_norm",
    "bert.encoder.layer.0.attention.self.query.weight": "attention",
    "bert.encoder.layer.0.attention.self.value.bias": "attention",
    "bert.encoder.layer.0.attention.output.dense.weight": "attention",
    "bert.encoder.layer.0.attention.output.LayerNorm.bias": "layer_norm",
    "bert.encoder.layer.1.intermediate.dense.weight": "ffn",
    "bert.encoder.layer.1.output.dense.bias": "ffn",
    "bert.encoder.layer.1.output.LayerNorm.weight": "layer_norm",
    "bert.pooler.dense.weight": "head",
    "classifier.weight": "head",
    "classifier.bias": "head",
}


def test_groups_of_bert_sequence_classification():
    groups = parameter_groups(tiny_model())
    for name, group in EXPECTED.items():
        assert groups[name] == group, name
    assert "other" not in groups.values()


def test_body_prefix_of_wrappers_and_bare_body():
    assert body_prefix(tiny_model()) == "bert"
    assert body_prefix(BertForMaskedLM(tiny_config())) == "bert"
    assert body_prefix(BertModel(tiny_config(), add_pooling_layer=False)) == ""


def test_body_prefix_of_plain_module_holding_a_body():
    class Wrapper(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder_model = BertModel(tiny_config(), add_pooling_layer=False)
            self.head = torch.nn.Linear(12, 5)

    wrapper = Wrapper()
    assert body_prefix(wrapper) == "encoder_model"
    assert parameter_group("head.weight", "encoder_model") == "head"


def test_body_prefix_without_body_raises():
    with pytest.raises(ValueError, match="no transformers base model"):
        body_prefix(torch.nn.Linear(3, 3))


def test_mlm_head_is_head():
    groups = parameter_groups(BertForMaskedLM(tiny_config()))
    assert groups["cls.predictions.transform.dense.weight"] == "head"
    assert groups["cls.predictions.bias"] == "head"


def test_eligible_excludes_layer_norm_and_head():
    model = tiny_model()
    names = eligible_parameter_names(model, ("word_embeddings", "attention", "ffn"))
    groups = parameter_groups(model)
    assert names and all(groups[n] in ("word_embeddings", "attention", "ffn") for n in names)
    expected = [n for n, _ in model.named_parameters() if groups[n] in ("word_embeddings", "attention", "ffn")]
    assert names == expected


@pytest.mark.parametrize("groups, match", [
    (("attention", "nonsense"), "unknown parameter groups"),
    (("head",), "'head' is trained densely"),
    (("other",), "no parameter"),
])
def test_eligible_rejects_bad_groups(groups, match):
    with pytest.raises(ValueError, match=match):
        eligible_parameter_names(tiny_model(), groups)


def test_snapshot_and_load_values_round_trip_bitwise():
    model = tiny_model()
    names = ["classifier.weight", "bert.encoder.layer.0.attention.self.query.weight"]
    saved = snapshot(model, names)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    load_values_(model, saved)
    params = dict(model.named_parameters())
    for name in names:
        assert_bitwise_equal(params[name].detach(), saved[name], what=name)


def test_load_values_rejects_unknown_names_and_shapes():
    model = tiny_model()
    with pytest.raises(KeyError, match="no parameter"):
        load_values_(model, {"nope": torch.zeros(1)})
    with pytest.raises(ValueError, match="stored shape"):
        load_values_(model, {"classifier.bias": torch.zeros(7)})


def test_canonical_names_of_wrappers():
    from deftx.models.mlm import build_mlm_model
    from deftx.train.params import canonical_names

    classifier = canonical_names(tiny_model())
    assert all(key == value for key, value in classifier.items())
    mlm = canonical_names(build_mlm_model(BertModel(tiny_config(), add_pooling_layer=False)))
    assert mlm["body.encoder.layer.0.attention.self.query.weight"] == "bert.encoder.layer.0.attention.self.query.weight"
    assert mlm["head.dense.weight"] == "head.dense.weight"
    bare = canonical_names(BertModel(tiny_config(), add_pooling_layer=False))
    assert bare["embeddings.word_embeddings.weight"] == "bert.embeddings.word_embeddings.weight"


@pytest.mark.parametrize("groups, match", [
    (("attention", "nonsense"), r"eligible: unknown parameter groups \['nonsense'\]; known: \['word_embeddings', "
                                r"'embeddings', 'attention', 'ffn', 'layer_norm', 'other'\]"),
    (("head",), "eligible: 'head' is trained densely beside every SFT"),
    ((), r"eligible: expected at least one of the parameter groups"),
    ("attention", r"eligible: expected a list of parameter group names, got the string 'attention'"),
])
def test_the_config_refuses_groups_no_model_can_have(groups, match):
    """Checked when the config is made (as a pipeline config file's ``eligible:`` is), not when a model is built."""
    from deftx.train.config import PhaseConfig, SparseFineTuningConfig

    with pytest.raises(ValueError, match=rf"SparseFineTuningConfig: {match}"):
        SparseFineTuningConfig(k=0.1, full=PhaseConfig(steps=1), sparse=PhaseConfig(steps=1), eligible=groups)
