"""Fixtures of the SparseDiff tests."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForSequenceClassification

from tests.sft.helpers import tiny_config


@pytest.fixture
def model():
    """A tiny random BertForSequenceClassification (fp32) whose base model id is "tiny-bert"."""
    torch.manual_seed(0)
    m = BertForSequenceClassification(tiny_config())
    m.config.deftx_base_model = "tiny-bert"
    return m
