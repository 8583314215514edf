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


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_a_classification_checkpoints_head_is_replaced_by_a_seeded_new_one(pooling, tmp_path):
    """A sequence-classification checkpoint's own head (3 classes named positive, neutral, negative) was loaded
    as the "seeded new head": every seed started from it and the model kept its class names, which name other
    classes than the pipeline trains (NusaX: negative, neutral, positive)."""
    from transformers import BertConfig

    config = BertConfig(vocab_size=EMBEDDING_ROWS, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32, num_labels=3,
                        id2label={0: "positive", 1: "neutral", 2: "negative"})
    checkpoint = BertForSequenceClassification(config)
    torch.nn.init.constant_(checkpoint.classifier.weight, 0.5)
    checkpoint.save_pretrained(tmp_path)
    seeds = [build_classifier(tmp_path, 3, seed, pooling) for seed in (0, 0, 1)]
    heads = [model.classifier.weight for model in seeds]
    assert not torch.equal(heads[0], checkpoint.classifier.weight), "the checkpoint's head is not the new one"
    assert torch.equal(heads[0], heads[1]) and not torch.equal(heads[0], heads[2]), "seeded: one head per seed"
    assert heads[0].std().item() < 0.1, "initialised as transformers initialises a new head"
    assert seeds[0].config.id2label == {0: "LABEL_0", 1: "LABEL_1", 2: "LABEL_2"}, "no names of the old classes"
    for model in seeds:
        body = {name: p for name, p in model.named_parameters() if name.startswith("bert.")}
        for name, value in checkpoint.state_dict().items():
            if name in body:
                assert torch.equal(body[name], value), f"{name}: the body is the checkpoint's"


def test_a_body_checkpoint_gets_the_same_new_head_as_before(tmp_path):
    """A checkpoint without a head (the usual base model) is loaded as it was: transformers' seeded new head,
    so every step identity recorded from it stays valid."""
    tiny_bert(EMBEDDING_ROWS).save_pretrained(tmp_path)
    torch.manual_seed(7)
    reference = BertMeanPoolClassifier.from_pretrained(str(tmp_path), num_labels=3, dtype=torch.float32)
    model = build_classifier(tmp_path, 3, 7)
    assert torch.equal(model.classifier.weight, reference.classifier.weight)
    assert torch.equal(model.classifier.bias, reference.classifier.bias)
