"""A task SFT's head goes only where it means what it meant in training: the classifier class, pooling and
label order it records must be the model's; a head (a dense replacement) takes no scale but 1 and, with
``strict_dtype``, no dtype but its own. Each refusal writes nothing; ``check_base=False`` skips the
classifier check."""

from __future__ import annotations

import pytest
import torch
from transformers import BertForSequenceClassification

from deftx.models.classifier import BertMeanPoolClassifier
from deftx.sft import ClassifierMismatchError, SparseDiff, apply_diffs, compose, prepare_composition
from deftx.train.architecture import describe_model
from tests.sft.helpers import random_sft, snapshot, tiny_config

LABELS = ["negative", "neutral", "positive"]


def classifier(labels: list[str] | None = None, cls=BertForSequenceClassification) -> torch.nn.Module:
    torch.manual_seed(0)
    config = tiny_config()
    if labels is not None:
        config.id2label, config.label2id = dict(enumerate(labels)), {name: i for i, name in enumerate(labels)}
    return cls(config).eval()


def task_sft(trained_in: torch.nn.Module) -> SparseDiff:
    """A task SFT shipping ``trained_in``'s head, recording its class, pooling and labels as training does."""
    diff = random_sft(trained_in, 200, head=True)
    diff.info.update(describe_model(trained_in, head=True))
    return diff


def assert_refused_and_untouched(model, diffs, match, **options) -> None:
    before = snapshot(model)
    with pytest.raises(ClassifierMismatchError, match=match):
        apply_diffs(model, diffs, **options)
    after = snapshot(model)
    assert all(torch.equal(before[n], after[n]) for n in before), "nothing written"


def test_labels_in_another_order_are_refused_and_check_base_false_applies():
    diff = task_sft(classifier(LABELS))
    reversed_labels = classifier(LABELS[::-1])
    assert_refused_and_untouched(reversed_labels, [diff], r"its classes are \['negative', 'neutral', 'positive'\] "
                                 r"in id order, the model's \['positive', 'neutral', 'negative'\]")
    handle = apply_diffs(reversed_labels, [diff], check_base=False)
    assert torch.equal(reversed_labels.classifier.weight, diff.dense["classifier.weight"])
    handle.revert()


@pytest.mark.parametrize("labels", [LABELS, None], ids=["the same names", "a model naming none"])
def test_the_same_labels_or_unnamed_ones_apply(labels):
    diff = task_sft(classifier(LABELS))
    model = classifier(labels)
    with apply_diffs(model, [diff]):
        assert torch.equal(model.classifier.bias, diff.dense["classifier.bias"])


def test_a_head_trained_with_mean_pooling_is_refused_on_a_cls_classifier():
    mean_pool = classifier(LABELS, BertMeanPoolClassifier)
    mean_pool.config.deftx_pooling = "mean"
    diff = task_sft(mean_pool)
    assert diff.info["architecture"] == "BertMeanPoolClassifier"
    assert_refused_and_untouched(classifier(LABELS), [diff],
                                 "trained in BertMeanPoolClassifier, the model is BertForSequenceClassification")
    other_pooling = classifier(LABELS, BertMeanPoolClassifier)
    other_pooling.config.deftx_pooling = "cls"
    assert_refused_and_untouched(other_pooling, [diff], "trained with mean pooling, the model pools by cls")


def test_a_diff_without_a_head_is_not_checked_against_the_classifier():
    language = random_sft(classifier(LABELS), 200)
    language.info.update(architecture="FrozenDecoderMLM")
    model = classifier(LABELS[::-1])
    with apply_diffs(model, [language]):
        pass


@pytest.mark.parametrize("scale", [0.0, -1.0, 0.5])
def test_a_diff_shipping_a_head_takes_no_scale_but_1(scale):
    model = classifier(LABELS)
    diff, language = task_sft(model), random_sft(model, 100, seed=4)
    before = snapshot(model)
    message = rf"SparseDiff 1 ships dense tensors \(classifier.bias, classifier.weight\).*its scale is {scale:g}"
    for call in (lambda: apply_diffs(model, [language, diff], [0.5, scale]),
                 lambda: prepare_composition(model, [language, diff], [0.5, scale]),
                 lambda: compose(language, diff, scales=[0.5, scale])):
        with pytest.raises(ValueError, match=message):
            call()
    assert all(torch.equal(before[n], t) for n, t in snapshot(model).items())
    with apply_diffs(model, [language, diff], [0.5, 1.0]):
        assert torch.equal(model.classifier.weight, diff.dense["classifier.weight"])


def test_a_head_of_another_dtype_is_refused_under_strict_dtype():
    model = classifier(LABELS).to(torch.bfloat16)
    head_only = SparseDiff({}, {}, {}, dense={"classifier.weight": torch.randn(3, 16)})
    before = snapshot(model)
    with pytest.raises(TypeError, match=r"dense\['classifier.weight'\]: torch.float32, model parameter is "
                                        r"torch.bfloat16 \(pass strict_dtype=False"):
        apply_diffs(model, [head_only])
    assert all(torch.equal(before[n], t) for n, t in snapshot(model).items())
    with apply_diffs(model, [head_only], strict_dtype=False):
        assert torch.equal(model.classifier.weight, head_only.dense["classifier.weight"].to(torch.bfloat16))
