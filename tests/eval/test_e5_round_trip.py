"""save -> load -> compose -> revert on the real multilingual-e5-small classifier."""

from __future__ import annotations

import pytest
import torch

from deftx.models.classifier import build_classifier
from deftx.sft import SparseDiff, apply_diffs
from tests.helpers import assert_bitwise_equal

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def e5_classifier():
    from deftx.models.e5 import ensure_e5_small

    try:
        folder = ensure_e5_small()
    except ModuleNotFoundError as err:
        pytest.skip(f"multilingual-e5-small is not available: {err}")
    return folder, build_classifier(folder, 3, seed=0)


def sparse_diff(model, names, seed, dense=()) -> SparseDiff:
    """Random values at random sorted positions of ``names`` (+ dense tensors), as SparseDiff."""
    generator = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    base = {n: params[n].detach() for n in [*names, *dense]}
    tuned = {n: t + 0.01 * torch.randn(t.shape, generator=generator) for n, t in base.items()}
    indices = {n: torch.randperm(base[n].numel(), generator=generator)[:2000].sort().values for n in names}
    return SparseDiff.from_states(base, tuned, indices, dense, base_model=model.config._name_or_path,
                                  method="test")


def test_round_trip(e5_classifier, tmp_path):
    folder, model = e5_classifier
    shared = "bert.encoder.layer.3.intermediate.dense.weight"
    task = sparse_diff(model, [shared, "bert.encoder.layer.0.attention.self.query.weight"], 1,
                       dense=("classifier.weight", "classifier.bias"))
    lang = sparse_diff(model, [shared, "bert.embeddings.word_embeddings.weight"], 2)
    task.save(tmp_path / "task.safetensors")
    lang.save(tmp_path / "lang.safetensors")
    task, lang = SparseDiff.load(tmp_path / "task.safetensors"), SparseDiff.load(tmp_path / "lang.safetensors")

    original = {n: p.detach().clone() for n, p in model.named_parameters()}
    handle = apply_diffs(model, [task, lang], [1.0, 0.5])
    params = dict(model.named_parameters())
    for name in (shared, "bert.embeddings.word_embeddings.weight"):
        expected = original[name].flatten().clone()
        for diff, scale in ((task, 1.0), (lang, 0.5)):
            if name in diff.indices:
                idx = diff.indices[name]
                expected[idx] = expected[idx] + torch.tensor(scale, dtype=torch.float32) * diff.values[name]
        assert_bitwise_equal(params[name].detach().flatten(), expected, what=name)
    assert_bitwise_equal(params["classifier.weight"].detach(), task.dense["classifier.weight"])
    untouched = "bert.encoder.layer.11.output.dense.weight"
    assert_bitwise_equal(params[untouched].detach(), original[untouched], what=untouched)

    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder))
    batch = tokenizer(["Makanannya enak sekali.", "Pelayanannya buruk."], padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits
    assert logits.shape == (2, 3) and bool(torch.isfinite(logits).all())

    handle.revert()
    for name, param in model.named_parameters():
        assert_bitwise_equal(param.detach(), original[name], what=f"after revert: {name}")
