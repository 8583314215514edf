"""Which classifier an SFT without metadata gets: the label count read off the head it ships."""

from __future__ import annotations

import pytest
import torch
from transformers import DistilBertConfig, DistilBertForSequenceClassification, DistilBertModel

from deftx.sft import SparseDiff
from deftx.train.architecture import resolve_classifier

LABELS = 3
HIDDEN = 16


@pytest.fixture(scope="module")
def distilbert_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distilbert")
    config = DistilBertConfig(vocab_size=64, dim=HIDDEN, n_layers=1, n_heads=2, hidden_dim=32,
                              max_position_embeddings=40, num_labels=LABELS)
    DistilBertModel(config).save_pretrained(folder)
    return folder, config


def test_a_distilbert_head_gives_its_classifier_rows_not_the_pre_classifiers(distilbert_dir, tmp_path):
    """``pre_classifier.weight`` (hidden × hidden, first in the model's order) ends with ``classifier.weight``:
    read as the head, it made the classifier one of 16 labels for a 3-label task."""
    folder, config = distilbert_dir
    torch.manual_seed(0)
    model = DistilBertForSequenceClassification(config)
    dense = {name: param.detach().clone() for name, param in model.named_parameters() if "classifier" in name}
    assert next(iter(dense)) == "pre_classifier.weight" and dense["pre_classifier.weight"].shape[0] == HIDDEN
    diff = SparseDiff({}, {}, {}, dense=dense)
    diff.save(tmp_path / "task.safetensors")
    for shipped in (diff, SparseDiff.load(tmp_path / "task.safetensors")):
        spec = resolve_classifier([shipped], folder, pooling="cls")
        assert spec.num_labels == LABELS, spec.describe()
