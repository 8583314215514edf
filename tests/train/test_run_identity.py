"""Run identity (issue #19): a work directory resumes only the run it holds; another is refused, naming the change.

A second ``fit()`` into the same work directory with the same model, data, arguments and config
resumes (trains nothing); one with another K, learning rate, seed, data set or base model is
refused before anything runs, with every changed field named, unless ``overwrite=True``, which
discards only the steps that changed. The identity module's pieces are checked on their own.
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch

from deftx.train.config import DenoiseConfig, PhaseConfig, SparseFineTuningConfig
from deftx.train.identity import (
    IDENTITY_FILE,
    IdentityMismatchError,
    claim,
    data_digest,
    describe_changes,
    digest,
    model_digest,
)
from deftx.train.sparse_finetuner import SparseFineTuner
from tests.helpers import assert_bitwise_equal
from tests.train.conftest import tiny_dataset, tiny_model, tiny_trainer


def run_config(k: float = 0.1, lr: float = 1e-2, **overrides) -> SparseFineTuningConfig:
    settings = dict(
        k=k, full=PhaseConfig(steps=3, learning_rate=lr), sparse=PhaseConfig(steps=3, learning_rate=1e-2),
        eligible=("word_embeddings", "embeddings", "attention", "ffn"),
        selections={"lt-sft": None, "deft-x": DenoiseConfig(rank=1, method="exact")},
        train_head=True, ship_head=True,
    )
    settings.update(overrides)
    return SparseFineTuningConfig(**settings)


def tuner(tmp_path, config=None, *, model=None, dataset=None, **options) -> SparseFineTuner:
    trainer = tiny_trainer(tmp_path, model, **options.pop("arguments", {}))
    if dataset is not None:
        trainer.train_dataset = dataset
    return SparseFineTuner(trainer, config or run_config(), tmp_path / "work", progress=False, **options)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One finished two-branch run (K = 10% of the eligible entries), trained once for the module."""
    root = tmp_path_factory.mktemp("trained")
    return root, tuner(root).fit()


@pytest.fixture
def finished(trained, tmp_path):
    """A copy of the finished run in ``tmp_path / "work"``, and its result."""
    root, result = trained
    shutil.copytree(root / "work", tmp_path / "work")
    return tmp_path, result


def file_bytes(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_same_run_resumes_without_training(finished):
    tmp_path, first = finished
    again = tuner(tmp_path).fit()
    assert again.seconds == {}, "nothing was trained again"
    for branch, diff in first.diffs.items():
        assert again.diffs[branch].content_hash == diff.content_hash


def test_another_k_is_refused_naming_it_and_nothing_changes(finished):
    """The issue's case: a re-run with another K returned the old run's SFTs (k=4224 for a K of 211)."""
    tmp_path, first = finished
    before = file_bytes(tmp_path / "work")
    smaller = tuner(tmp_path, run_config(k=0.01))
    with pytest.raises(IdentityMismatchError) as refused:
        smaller.fit()
    old_k, new_k = first.diffs["lt-sft"].k, smaller.k
    assert old_k != new_k
    assert f"branch lt-sft: k: {old_k} -> {new_k}" in refused.value.changes
    assert f"branch deft-x: k: {old_k} -> {new_k}" in refused.value.changes
    assert "overwrite=True" in str(refused.value) and "--overwrite" in str(refused.value)
    assert file_bytes(tmp_path / "work") == before, "a refused fit() changes nothing"


def test_overwrite_retrains_what_changed_and_returns_the_new_k(finished):
    tmp_path, first = finished
    smaller = tuner(tmp_path, run_config(k=0.01), overwrite=True)
    result = smaller.fit()
    for branch, diff in result.diffs.items():
        assert diff.k == diff.nnz == smaller.k != first.diffs[branch].k
    assert set(result.seconds) >= {"sparse:lt-sft", "sparse:deft-x"}
    log = [json.loads(line) for line in (tmp_path / "work" / "log.jsonl").read_text().splitlines()]
    sparse_steps = [r["step"] for r in log if r["phase"] == "sparse:lt-sft" and "loss" in r]
    assert sparse_steps == sorted(set(sparse_steps)), "the discarded branch's log records went with it"


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"config": run_config(lr=2e-2)}, "phase 1: full.learning_rate: 0.01 -> 0.02"),
        ({"arguments": {"seed": 8}}, "phase 1: seed: 7 -> 8"),
        ({"arguments": {"gradient_accumulation_steps": 2}}, "phase 1: training.gradient_accumulation_steps: 1 -> 2"),
        ({"dataset": tiny_dataset(seed=9)}, "phase 1: data.train: "),
        ({"model": tiny_model(seed=5)}, "phase 1: theta0: "),
        ({"model": tiny_model(hidden_dropout_prob=0.0)}, "phase 1: model.config.hidden_dropout_prob: 0.1 -> 0.0"),
        ({"model": tiny_model(hidden_act="relu")}, 'phase 1: model.config.hidden_act: "gelu" -> "relu"'),
        ({"model": tiny_model(layer_norm_eps=1e-3)}, "phase 1: model.config.layer_norm_eps: 1e-12 -> 0.001"),
        ({"config": run_config(eligible=("attention", "ffn"))}, "phase 1: eligible: "),
    ],
)
def test_what_changed_is_named(finished, change, field):
    tmp_path, _ = finished
    with pytest.raises(IdentityMismatchError) as refused:
        tuner(tmp_path, **change).fit()
    assert any(line.startswith(field) for line in refused.value.changes), refused.value.changes
    assert all(line.startswith("phase 1") for line in refused.value.changes), "branches follow phase 1"


@pytest.mark.parametrize(("world_size", "n_gpu"), [(2, 1), (1, 3)])
def test_the_number_of_model_replicas_is_part_of_the_identity(finished, monkeypatch, world_size, n_gpu):
    """A launch of two processes (DistributedDataParallel) or a Trainer on three visible GPUs (DataParallel) trains
    on that many times the batch per step, from the same arguments: another run than the one-process run the
    folder holds. One replica records nothing (identities of before stay valid)."""
    from transformers import TrainingArguments

    tmp_path, _ = finished
    recorded = json.loads((tmp_path / "work" / IDENTITY_FILE).read_text())
    assert "replicas" not in recorded
    assert tuner(tmp_path).identity().phase1 == recorded, "one replica: the identity is unchanged"
    monkeypatch.setattr(TrainingArguments, "world_size", property(lambda self: world_size))
    monkeypatch.setattr(TrainingArguments, "n_gpu", property(lambda self: n_gpu))
    with pytest.raises(IdentityMismatchError) as refused:
        tuner(tmp_path).fit()
    assert refused.value.changes == [f"phase 1: replicas: added ({world_size * n_gpu})"]


def test_reporting_arguments_are_not_part_of_the_identity(finished):
    tmp_path, _ = finished
    reporting = {"logging_steps": 3, "save_steps": 5, "report_to": ["none"], "run_name": "x", "disable_tqdm": False}
    assert tuner(tmp_path, arguments=reporting).fit().seconds == {}


def test_model_settings_that_train_nothing_differently_are_not_part_of_the_identity(finished):
    """The problem type a classifier's forward sets itself from its labels, label names (which only the
    SFTs' info records) and the base model a config names (a path where the cache folder moves) leave
    phase 1 as it was."""
    tmp_path, _ = finished
    assert tuner(tmp_path, model=tiny_model(problem_type="single_label_classification")).fit().seconds == {}
    unchanged = tuner(tmp_path).phase1_identity()
    named = tiny_model(id2label={0: "neg", 1: "neu", 2: "pos"})
    assert tuner(tmp_path, model=named).phase1_identity() == unchanged
    moved = tiny_model(deftx_base_model="/elsewhere/.cache/deftx/models/tiny")
    assert tuner(tmp_path, model=moved).phase1_identity() == unchanged


def test_a_folder_from_before_identities_is_refused(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "theta0.safetensors").write_bytes(b"old run")
    with pytest.raises(IdentityMismatchError, match=r"have no identity\.json"):
        tuner(tmp_path).fit()
    tuner(tmp_path, overwrite=True).fit()
    assert not (work / "theta0.safetensors").exists()


@pytest.mark.parametrize(("damage", "said"), [(lambda text: text[:40], "unreadable"),
                                             (lambda text: "[1]", "not a JSON object")])
def test_a_damaged_identity_is_named_in_one_line(finished, damage, said):
    tmp_path, first = finished
    record = tmp_path / "work" / IDENTITY_FILE
    record.write_text(damage(record.read_text()))
    with pytest.raises(IdentityMismatchError) as refused:
        tuner(tmp_path).fit()
    assert refused.value.changes == [f"phase 1: its identity.json is {said} (damaged, or edited by hand), so what "
                                     "its results (log.jsonl, deft-x, lt-sft) depend on is unknown"]
    again = tuner(tmp_path, overwrite=True).fit()
    assert again.diffs["lt-sft"].content_hash == first.diffs["lt-sft"].content_hash


def test_a_new_branch_is_added_to_a_finished_run(finished):
    tmp_path, first = finished
    more = run_config(selections={"lt-sft": None, "deft-x": DenoiseConfig(rank=1, method="exact"),
                                  "deft-x-r2": DenoiseConfig(rank=2, method="exact")})
    result = tuner(tmp_path, more).fit()
    assert result.diffs["lt-sft"].content_hash == first.diffs["lt-sft"].content_hash
    assert "sparse:deft-x-r2" in result.seconds and "sparse:lt-sft" not in result.seconds


def test_every_work_directory_records_its_identity(finished):
    tmp_path, _ = finished
    phase1 = json.loads((tmp_path / "work" / IDENTITY_FILE).read_text())
    assert {"theta0", "eligible", "dense", "seed", "data", "training", "full", "format"} <= set(phase1)
    assert phase1["format"]["run"] >= 2 and phase1["seed"] == 7
    branch = json.loads((tmp_path / "work" / "lt-sft" / IDENTITY_FILE).read_text())
    assert branch["phase1"] == digest(phase1) and branch["k"] == round(0.1 * tuner(tmp_path).num_eligible)


def test_model_digest_covers_every_bit_and_name():
    model = tiny_model()
    reference = model_digest(model)
    assert model_digest(tiny_model()) == reference, "deterministic"
    with torch.no_grad():
        weight = model.bert.encoder.layer[0].output.dense.weight
        weight.view(-1)[5] = -weight.view(-1)[5] if weight.view(-1)[5] != 0 else -0.0
    assert model_digest(model) != reference


def test_data_digest_reads_examples_by_content():
    rows = tiny_dataset()
    assert data_digest(rows) == data_digest([dict(r) for r in tiny_dataset()])
    changed = tiny_dataset()
    changed[3] = {**changed[3], "labels": (changed[3]["labels"] + 1) % 3}
    assert data_digest(changed) != data_digest(rows)
    assert data_digest([{"a": torch.tensor([1, 2])}]) != data_digest([{"a": torch.tensor([1.0, 2.0])}])
    with pytest.raises(TypeError, match="data_digest="):
        data_digest(iter(rows))


def test_a_datasets_dataset_is_digested_by_content():
    datasets = pytest.importorskip("datasets")
    first = datasets.Dataset.from_dict({"input_ids": [[1, 2], [3, 4]], "labels": [0, 1]})
    second = datasets.Dataset.from_dict({"input_ids": [[1, 2], [3, 4]], "labels": [0, 1]})
    other = datasets.Dataset.from_dict({"input_ids": [[1, 2], [3, 5]], "labels": [0, 1]})
    assert data_digest(first) == data_digest(second) != data_digest(other)


def test_describe_changes_names_dotted_fields_and_summarises_lists():
    old = {"k": 4224, "full": {"learning_rate": 0.01}, "eligible": [f"p{i}" for i in range(6)], "gone": 1}
    new = {"k": 211, "full": {"learning_rate": 0.02}, "eligible": [f"p{i}" for i in range(1, 8)], "new": "x"}
    assert describe_changes(old, new) == [
        "eligible: 6 -> 7 entries, +2 (p6, p7) -1 (p0)",
        "full.learning_rate: 0.01 -> 0.02",
        "gone: removed (was 1)",
        "k: 4224 -> 211",
        'new: added ("x")',
    ]


def test_claim_records_resumes_refuses_and_overwrites(tmp_path):
    folder = tmp_path / "step"
    assert not claim(folder, {"k": 1}, ["result"])
    (folder / "result").write_text("k=1")
    assert not claim(folder, {"k": 1}, ["result"]), "the same identity: kept"
    with pytest.raises(IdentityMismatchError, match="k: 1 -> 2"):
        claim(folder, {"k": 2}, ["result"])
    assert (folder / "result").read_text() == "k=1"
    assert claim(folder, {"k": 2}, ["result"], overwrite=True)
    assert not (folder / "result").exists() and json.loads((folder / IDENTITY_FILE).read_text()) == {"k": 2}
    assert not claim(folder, {"k": 3}, ["result"]), "a record without results is no result: taken over"


def test_resumed_sfts_equal_the_first_bit_for_bit(finished):
    tmp_path, first = finished
    again = tuner(tmp_path).fit()
    for branch, diff in first.diffs.items():
        for name in diff.indices:
            assert_bitwise_equal(again.diffs[branch].values[name], diff.values[name], what=f"{branch} {name}")


def cross_entropy_sum(outputs, labels, num_items_in_batch=None):
    return torch.nn.functional.cross_entropy(outputs["logits"], labels, reduction="sum")


@pytest.mark.parametrize(
    ("given", "changed", "field"),
    [
        ({}, {"optimizer_cls_and_kwargs": (torch.optim.SGD, {"momentum": 0.9})}, "phase 1: optimizer.class: added "),
        ({"optimizer_cls_and_kwargs": (torch.optim.SGD, {"momentum": 0.0})},
         {"optimizer_cls_and_kwargs": (torch.optim.SGD, {"momentum": 0.9})}, "phase 1: optimizer.kwargs.momentum: "),
        ({}, {"compute_loss_func": cross_entropy_sum}, "phase 1: loss: added "),
    ],
)
def test_the_trainers_own_optimizer_and_loss_are_part_of_the_identity(tmp_path, given, changed, field):
    """Phase 1 trains with the Trainer's ``optimizer_cls_and_kwargs`` and ``compute_loss_func``: another
    optimizer (or momentum) or loss trains another θ1, so a run with it must not resume the first's SFTs."""
    def trainer_with(options):
        trainer = tiny_trainer(tmp_path)
        for name, value in options.items():
            setattr(trainer, name, value)
        return SparseFineTuner(trainer, run_config(selections={"lt-sft": None}), tmp_path / "work", progress=False)

    trainer_with(given).fit()
    with pytest.raises(IdentityMismatchError) as refused:
        trainer_with(changed).fit()
    assert any(line.startswith(field) for line in refused.value.changes), refused.value.changes


def test_the_phase_learning_rate_in_optimizer_kwargs_is_not_part_of_the_identity(tmp_path):
    """Phase 1 replaces the ``lr`` of ``optimizer_cls_and_kwargs`` with its own: another ``lr`` there trains
    the same θ1."""
    def fitted(lr):
        trainer = tiny_trainer(tmp_path)
        trainer.optimizer_cls_and_kwargs = (torch.optim.SGD, {"lr": lr, "momentum": 0.9})
        return SparseFineTuner(trainer, run_config(selections={"lt-sft": None}), tmp_path / "work",
                               progress=False).fit()

    assert fitted(0.5).seconds and fitted(0.1).seconds == {}
