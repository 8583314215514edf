"""deftx.models.classifier: the mean-pooled BERT classifier against a hand computation and transformers."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForSequenceClassification

from deftx.models.classifier import BertMeanPoolClassifier, build_classifier
from tests.models.conftest import EMBEDDING_ROWS, tiny_bert


@pytest.mark.parametrize("classifier_dropout", [None, 0.0, 0.3])
def test_dropout_is_the_configs_as_in_transformers(classifier_dropout):
    config = tiny_bert(EMBEDDING_ROWS).config
    config.update({"hidden_dropout_prob": 0.1, "classifier_dropout": classifier_dropout, "num_labels": 2})
    expected = 0.1 if classifier_dropout is None else classifier_dropout
    assert BertMeanPoolClassifier(config).dropout.p == expected == BertForSequenceClassification(config).dropout.p


def test_logits_are_the_head_on_the_mean_over_unmasked_tokens():
    config = tiny_bert(EMBEDDING_ROWS).config
    config.num_labels = 3
    torch.manual_seed(0)
    model = BertMeanPoolClassifier(config).eval()
    ids = torch.tensor([[0, 5, 6, 7, 2], [0, 8, 2, 1, 1]])
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    hidden = model.bert(input_ids=ids, attention_mask=mask).last_hidden_state
    pooled = torch.stack([hidden[0].mean(0), hidden[1, :3].mean(0)])
    expected = pooled @ model.classifier.weight.T + model.classifier.bias
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask).logits, expected)


@pytest.mark.parametrize("num_labels", [1, 0, -1, 2.0])
def test_fewer_than_two_labels_are_refused(num_labels, tmp_path):
    tiny_bert(EMBEDDING_ROWS).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="num_labels must be an integer of at least 2"):
        build_classifier(tmp_path, num_labels, seed=0)
