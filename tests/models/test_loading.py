"""Every model deftx loads is the plain torch modules, whatever transformers' default, and every
weight of its body comes from the checkpoint.

transformers 5.25 (the lock's) kernelizes a model in ``from_pretrained`` by default (Hub kernels
for GELU and the like); 5.17 (the GPU machine's) does not. deftx asks for the plain modules on
every load, so the same run computes the same thing on either release.
"""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file, save_file

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


LOADERS = {
    "mean classifier": lambda folder: build_classifier(folder, 3, seed=0, pooling="mean"),
    "cls classifier": lambda folder: build_classifier(folder, 3, seed=0, pooling="cls"),
    "spec classifier": lambda folder: build_from_spec(
        folder, ClassifierSpec("BertForSequenceClassification", "cls", 2, None, "test"), seed=0),
    "mlm body": lambda folder: build_mlm_model(folder).body,
}
QUERY = "encoder.layer.1.attention.self.query.weight"


@pytest.fixture(scope="module")
def partial_body_dir(tmp_path_factory):
    """A body folder whose checkpoint lacks one attention weight (a file saved in part)."""
    folder = tmp_path_factory.mktemp("partial")
    tiny_bert(EMBEDDING_ROWS).save_pretrained(folder)
    state = load_file(folder / "model.safetensors")
    del state[QUERY]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    return folder


@pytest.mark.parametrize("loader", list(LOADERS))
def test_a_body_weight_missing_from_the_checkpoint_is_refused(partial_body_dir, loader):
    """transformers would start it at random and only log it among the new head's keys."""
    with pytest.raises(ValueError, match=rf"no values for 1 weights of the \w+ body \((bert\.)?{QUERY}\)"):
        LOADERS[loader](partial_body_dir)


@pytest.mark.parametrize("loader", list(LOADERS))
def test_a_whole_body_loads_with_its_saved_weights(body_dir, loader):
    saved = load_file(body_dir / "model.safetensors")
    params = dict(LOADERS[loader](body_dir).named_parameters())
    for key, value in saved.items():
        name = key if key in params else f"bert.{key}"
        assert torch.equal(params[name].detach(), value), key


@pytest.mark.parametrize("loader", list(LOADERS))
@pytest.mark.parametrize("saved_dtype", [torch.bfloat16, torch.float16])
def test_a_half_precision_checkpoint_loads_as_float32(tmp_path, loader, saved_dtype):
    """transformers 5 would keep the saved dtype: a bf16 body trained in bf16 loses most small AdamW steps."""
    tiny_bert(EMBEDDING_ROWS, dtype=saved_dtype).save_pretrained(tmp_path)
    saved = load_file(tmp_path / "model.safetensors")
    params = dict(LOADERS[loader](tmp_path).named_parameters())
    assert {param.dtype for param in params.values()} == {torch.float32}
    for key, value in saved.items():
        assert value.dtype == saved_dtype
        assert torch.equal(params[key if key in params else f"bert.{key}"].detach(), value.float()), key
