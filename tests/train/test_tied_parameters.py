"""A tied parameter (a masked-LM decoder sharing the word embeddings) is named by its place in the body,
whichever module registered it first: XLM-R's masked LM (``lm_head`` registered before ``roberta``) gets
the same groups, eligibility, K and SFT names as BERT's, and an SFT touching the embeddings applies once."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    XLMRobertaConfig,
    XLMRobertaForMaskedLM,
    XLMRobertaForSequenceClassification,
    XLMRobertaModel,
)

from deftx.models.parameters import named_parameter_map, parameter_aliases
from deftx.sft import SparseDiff, apply_diffs
from deftx.sft.diff import ParamInfo
from deftx.train.config import DEFAULT_ELIGIBLE
from deftx.train.params import canonical_names, eligible_parameter_names, parameter_groups

EMBEDDINGS = "roberta.embeddings.word_embeddings.weight"


def xlmr_config() -> XLMRobertaConfig:
    return XLMRobertaConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                            intermediate_size=32, max_position_embeddings=40, pad_token_id=1, num_labels=3)


def xlmr_mlm() -> XLMRobertaForMaskedLM:
    torch.manual_seed(0)
    model = XLMRobertaForMaskedLM(xlmr_config())
    assert model.lm_head.decoder.weight is model.get_input_embeddings().weight, "the test needs a tied decoder"
    return model


def test_the_tied_embeddings_are_named_inside_the_body_whatever_the_registration_order():
    model = xlmr_mlm()
    params = named_parameter_map(model)
    assert params[EMBEDDINGS] is model.get_input_embeddings().weight
    assert "lm_head.decoder.weight" not in params
    assert len(params) == len({id(p) for p in model.parameters()}), "each parameter once"
    assert parameter_aliases(model) == {"lm_head.decoder.weight": EMBEDDINGS, "lm_head.decoder.bias": "lm_head.bias"}
    bert = BertForMaskedLM(BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                      intermediate_size=32, max_position_embeddings=40))
    assert list(named_parameter_map(bert)) == [name for name, _ in bert.named_parameters()], "BERT's names as before"


def test_an_untied_model_keeps_named_parameters_names_and_order():
    model = XLMRobertaForSequenceClassification(xlmr_config())
    assert list(named_parameter_map(model)) == [name for name, _ in model.named_parameters()]
    assert parameter_aliases(model) == {}


def test_groups_and_eligibility_of_the_masked_lm_equal_the_bare_body():
    mlm, body = xlmr_mlm(), XLMRobertaModel(xlmr_config(), add_pooling_layer=False)
    groups = parameter_groups(mlm)
    assert groups[EMBEDDINGS] == "word_embeddings"
    eligible = eligible_parameter_names(mlm, DEFAULT_ELIGIBLE)
    body_eligible = eligible_parameter_names(body, DEFAULT_ELIGIBLE)
    assert [canonical_names(mlm)[n] for n in eligible] == [canonical_names(body)[n] for n in body_eligible]
    assert eligible_parameter_names(mlm, ["word_embeddings"]) == [EMBEDDINGS]
    head = [n for n, g in groups.items() if g == "head"]
    assert sorted(head) == ["lm_head.bias", "lm_head.dense.bias", "lm_head.dense.weight", "lm_head.layer_norm.bias",
                            "lm_head.layer_norm.weight"], "the tied matrix is not trained densely as head"


def sparse_diff(entries: dict[str, list[int]], value: float) -> SparseDiff:
    """A diff adding ``value`` at the given flat entries of word-embedding-shaped parameters."""
    shape = (xlmr_config().vocab_size, xlmr_config().hidden_size)
    return SparseDiff({n: torch.tensor(e, dtype=torch.int64) for n, e in entries.items()},
                      {n: torch.full((len(e),), value) for n, e in entries.items()},
                      {n: ParamInfo(shape, torch.float32) for n in entries}, base_model=None)


@pytest.mark.parametrize("name", [EMBEDDINGS, "lm_head.decoder.weight"])
def test_an_sft_on_the_tied_matrix_applies_once_under_either_name(name):
    model = xlmr_mlm()
    before = model.get_input_embeddings().weight.detach().clone()
    hidden = xlmr_config().hidden_size
    handle = apply_diffs(model, [sparse_diff({name: [2 * hidden, 5 * hidden]}, 0.25)], check_base=False)
    expected = before.clone()
    expected[[2, 5], 0] += 0.25
    assert torch.equal(model.get_input_embeddings().weight, expected)
    assert torch.equal(model.lm_head.decoder.weight, expected)
    handle.revert()
    assert torch.equal(model.get_input_embeddings().weight, before)


def test_an_sft_naming_both_names_of_the_tied_matrix_is_refused():
    diff = sparse_diff({EMBEDDINGS: [0], "lm_head.decoder.weight": [16]}, 1.0)
    model = xlmr_mlm()
    before = model.get_input_embeddings().weight.detach().clone()
    with pytest.raises(ValueError, match=r"names parameter 'roberta\.embeddings\.word_embeddings\.weight' twice"):
        apply_diffs(model, [diff], check_base=False)
    assert torch.equal(model.get_input_embeddings().weight, before), "nothing written"


def test_a_sparse_finetuner_on_the_masked_lm_selects_from_the_embeddings_and_ships_no_dense_copy(tmp_path):
    from transformers import Trainer, TrainingArguments

    from deftx import SparseFineTuner, task_sft_config

    model = xlmr_mlm()
    args = TrainingArguments(str(tmp_path / "out"), report_to=[], use_cpu=True, save_strategy="no")
    tuner = SparseFineTuner(Trainer(model=model, args=args), task_sft_config(), tmp_path / "work")
    assert EMBEDDINGS in tuner.eligible
    assert tuner.stored_names[EMBEDDINGS] == EMBEDDINGS
    assert all(model.get_input_embeddings().weight is not named_parameter_map(model)[n] for n in tuner.dense)
