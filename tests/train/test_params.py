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


def modernbert_mlm():
    """deftx's masked LM on a ModernBERT body (tied input embeddings named ``tok_embeddings``)."""
    from transformers import ModernBertConfig, ModernBertModel

    from deftx.models.mlm import build_mlm_model

    special = dict(pad_token_id=0, bos_token_id=0, eos_token_id=0, cls_token_id=0, sep_token_id=0)
    config = ModernBertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                              intermediate_size=32, max_position_embeddings=40, **special)
    return build_mlm_model(ModernBertModel(config))


def gpt2_classifier():
    from transformers import GPT2Config, GPT2ForSequenceClassification

    return GPT2ForSequenceClassification(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=40,
                                                    pad_token_id=0, bos_token_id=0, eos_token_id=0))


def mt5_encoder():
    from transformers import MT5Config, MT5EncoderModel

    return MT5EncoderModel(MT5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2))


WEIGHT_BIAS = ("weight", "bias")
# Every parameter of one layer, by its module (read off each architecture's modeling code).
GROUPS_BY_ARCHITECTURE = {
    modernbert_mlm: {
        "body.embeddings.tok_embeddings.weight": "word_embeddings",
        "body.embeddings.norm.weight": "layer_norm",
        "body.layers.0.attn.Wqkv.weight": "attention",
        "body.layers.0.attn.Wo.weight": "attention",
        "body.layers.0.mlp_norm.weight": "layer_norm",
        "body.layers.0.mlp.Wi.weight": "ffn",
        "body.layers.0.mlp.Wo.weight": "ffn",
        "body.final_norm.weight": "layer_norm",
        "head.dense.weight": "head", "head.dense.bias": "head", "head.layer_norm.weight": "head",
        "head.layer_norm.bias": "head", "head.bias": "head",
    },
    gpt2_classifier: {
        "transformer.wte.weight": "word_embeddings",
        "transformer.wpe.weight": "embeddings",
        **{f"transformer.h.0.{ln}.{kind}": "layer_norm" for ln in ("ln_1", "ln_2") for kind in WEIGHT_BIAS},
        **{f"transformer.h.0.attn.{c}.{kind}": "attention" for c in ("c_attn", "c_proj") for kind in WEIGHT_BIAS},
        **{f"transformer.h.0.mlp.{c}.{kind}": "ffn" for c in ("c_fc", "c_proj") for kind in WEIGHT_BIAS},
        "transformer.ln_f.weight": "layer_norm", "transformer.ln_f.bias": "layer_norm",
        "score.weight": "head",
    },
    mt5_encoder: {
        "shared.weight": "word_embeddings",
        **{f"encoder.block.0.layer.0.SelfAttention.{p}.weight": "attention" for p in "qkvo"},
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight": "embeddings",
        "encoder.block.0.layer.0.layer_norm.weight": "layer_norm",
        **{f"encoder.block.0.layer.1.DenseReluDense.{p}.weight": "ffn" for p in ("wi_0", "wi_1", "wo")},
        "encoder.block.0.layer.1.layer_norm.weight": "layer_norm",
        "encoder.final_layer_norm.weight": "layer_norm",
    },
}


@pytest.mark.parametrize("build", list(GROUPS_BY_ARCHITECTURE), ids=lambda build: build.__name__)
def test_groups_of_bodies_whose_embeddings_are_not_named_like_berts(build):
    """The input embeddings are ``word_embeddings`` and the other tables ``embeddings`` whatever their names
    (ModernBERT's ``tok_embeddings`` was ``embeddings``: trained by a language SFT that freezes the word
    embeddings); T5's attention and feed-forward blocks are no longer ``other`` (never denoised by DeFT-X)."""
    torch.manual_seed(0)
    model, expected = build(), GROUPS_BY_ARCHITECTURE[build]
    assert parameter_groups(model) == expected
    word = next(name for name, group in expected.items() if group == "word_embeddings")
    assert word not in eligible_parameter_names(model, ("embeddings", "attention", "ffn")), "word embeddings frozen"
