"""Every model deftx loads is the plain torch modules, whatever transformers' default.

transformers 5.25 (the lock's) kernelizes a model in ``from_pretrained`` by default (Hub kernels
for GELU and the like); 5.17 (the GPU machine's) does not. deftx asks for the plain modules on
every load, so the same run computes the same thing on either release.
"""

from __future__ import annotations

import pytest

from deftx.models.classifier import build_classifier
from deftx.models.mlm import build_mlm_model
from deftx.train.architecture import ClassifierSpec, build_from_spec
from tests.models.conftest import EMBEDDING_ROWS, tiny_bert


@pytest.fixture(scope="module")
def body_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("body")
    tiny_bert(EMBEDDING_ROWS).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("pooling", ["mean", "cls"])
def test_classifiers_load_without_hub_kernels(body_dir, pooling):
    model = build_classifier(body_dir, 3, seed=0, pooling=pooling)
    assert model.use_kernels is False


def test_a_spec_classifier_loads_without_hub_kernels(body_dir):
    spec = ClassifierSpec("BertForSequenceClassification", "cls", 2, ("neg", "pos"), "test")
    assert build_from_spec(body_dir, spec, seed=0).use_kernels is False


def test_the_mlm_body_loads_without_hub_kernels(body_dir):
    assert build_mlm_model(body_dir).body.use_kernels is False
