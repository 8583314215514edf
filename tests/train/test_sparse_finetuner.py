"""The phase logic end to end on a tiny random BERT inside a real transformers.Trainer."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback

from deftx.sft import SparseDiff
from deftx.train.config import DenoiseConfig, PhaseConfig, SparseFineTuningConfig
from deftx.train.params import parameter_groups
from deftx.train.sparse_finetuner import SparseFineTuner
from tests.helpers import assert_bitwise_equal, assert_close
from tests.train.conftest import tiny_model

ELIGIBLE = ("word_embeddings", "embeddings", "attention", "ffn")


def config(k=0.1, steps=5, **overrides) -> SparseFineTuningConfig:
    settings = dict(
        k=k,
        full=PhaseConfig(steps=steps, learning_rate=1e-2, l1=0.1),
        sparse=PhaseConfig(steps=steps, learning_rate=1e-2, l1=0.1),
        eligible=ELIGIBLE,
        selections={"lt-sft": None, "deft-x": DenoiseConfig(rank=1, method="exact")},
        train_head=True,
        ship_head=True,
    )
    settings.update(overrides)
    return SparseFineTuningConfig(**settings)


class CaptureAtTrainEnd(TrainerCallback):
    """Keeps a copy of every parameter at the end of each trainer.train() call."""

    def __init__(self):
        self.states: list[dict[str, torch.Tensor]] = []

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.states.append({n: p.detach().clone() for n, p in model.named_parameters()})


class Interrupt(TrainerCallback):
    """Raises at a given step of the phase whose folder contains ``marker``."""

    def __init__(self, marker: str, step: int):
        self.marker, self.step = marker, step

    def on_step_end(self, args, state, control, **kwargs):
        if self.marker in args.output_dir and state.global_step == self.step:
            raise KeyboardInterrupt(f"simulated kill in {self.marker} at step {self.step}")


class StopEarly(TrainerCallback):
    """Stops training (the Trainer returns normally) at a given step of the phase whose folder contains ``marker``:
    what ``enable_jit_checkpoint`` does on SIGTERM, or any callback setting ``should_training_stop``."""

    def __init__(self, marker: str, step: int):
        self.marker, self.step = marker, step

    def on_step_end(self, args, state, control, **kwargs):
        if self.marker in args.output_dir and state.global_step == self.step:
            control.should_training_stop = True
        return control


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """One fit of both branches, with the trained weights of every phase captured."""
    from tests.train.conftest import tiny_trainer

    tmp = tmp_path_factory.mktemp("fit")
    capture = CaptureAtTrainEnd()
    trainer = tiny_trainer(tmp, callbacks=[capture])
    theta0 = {n: p.detach().clone() for n, p in trainer.model.named_parameters()}
    flags = {n: p.requires_grad for n, p in trainer.model.named_parameters()}
    tuner = SparseFineTuner(trainer, config(), tmp / "work", progress=False)
    result = tuner.fit()
    return tuner, result, theta0, flags, capture.states


def test_mask_has_exactly_k_entries(fitted):
    tuner, result, _, _, _ = fitted
    assert tuner.k == round(0.1 * tuner.num_eligible)
    for diff in result.diffs.values():
        assert diff.nnz == diff.k == tuner.k
        assert set(diff.indices) == set(tuner.eligible)


def test_untouched_entries_stay_bit_identical_to_theta0(fitted):
    tuner, result, theta0, _, states = fitted
    full, *sparse = states
    assert len(sparse) == 2
    groups = parameter_groups(tuner.trainer.model)
    for branch, trained in zip(result.diffs, sparse, strict=True):
        diff = result.diffs[branch]
        moved = 0
        for name, value in trained.items():
            if groups[name] == "head":
                continue
            if name not in diff.indices:
                assert_bitwise_equal(value, theta0[name], what=f"{branch}: frozen {name}")
                continue
            outside = torch.ones(value.numel(), dtype=torch.bool)
            outside[diff.indices[name]] = False
            assert_bitwise_equal(value.flatten()[outside], theta0[name].flatten()[outside],
                                 what=f"{branch}: unselected entries of {name}")
            moved += int((value.flatten() != theta0[name].flatten()).sum())
        assert 0 < moved <= tuner.k
    layer_norm = "bert.encoder.layer.0.output.LayerNorm.weight"
    assert_bitwise_equal(full[layer_norm], theta0[layer_norm], what="LayerNorm frozen in phase 1")


def test_sft_reproduces_the_trained_model(fitted):
    _, result, theta0, _, states = fitted
    trained = states[2]
    model = tiny_model()
    with torch.no_grad():
        for name, param in model.named_parameters():
            param.copy_(theta0[name])
    result.diffs["deft-x"].apply(model)
    for name, param in model.named_parameters():
        assert_close(param.detach(), trained[name], rtol=1e-6, atol=1e-7, what=name)
    assert set(result.diffs["deft-x"].dense) == {"bert.pooler.dense.weight", "bert.pooler.dense.bias",
                                                 "classifier.weight", "classifier.bias"}


def test_denoising_changes_the_mask(fitted):
    _, result, _, _, _ = fitted
    lt, dx = result.diffs["lt-sft"].indices, result.diffs["deft-x"].indices
    assert any(not torch.equal(lt[n], dx[n]) for n in lt)
    overall = result.overlap["lt-sft vs deft-x"][-1]
    assert overall["group"] == "all" and 0.0 < overall["jaccard"] < 1.0
    records = result.selections["deft-x"]["denoised"]
    assert records and all(r["rank"] == 1 for r in records)
    assert result.selections["lt-sft"]["denoised"] == []


def test_model_left_at_theta0_with_flags_restored(fitted):
    tuner, _, theta0, flags, _ = fitted
    for name, param in tuner.trainer.model.named_parameters():
        assert_bitwise_equal(param.detach(), theta0[name], what=name)
        assert param.requires_grad == flags[name]


def test_branches_share_phase_one_and_log_losses(fitted):
    tuner, result, _, _, _ = fitted
    phases = {line.split('"phase": "')[1].split('"')[0]
              for line in (tuner.work_dir / "log.jsonl").read_text().splitlines()}
    assert phases == {"full", "sparse:lt-sft", "sparse:deft-x"}
    assert set(result.seconds) == {"full", "sparse:lt-sft", "sparse:deft-x"}


def _fit(tmp_path, work, callbacks=(), **arguments):
    from tests.train.conftest import tiny_trainer

    trainer = tiny_trainer(tmp_path, callbacks=list(callbacks), **arguments)
    return SparseFineTuner(trainer, config(selections={"deft-x": DenoiseConfig(rank=1, method="exact")}),
                           work, progress=False).fit()


@pytest.mark.parametrize("marker", ["phase1", "phase3"])
def test_killed_run_resumes_in_its_phase_bit_exactly(tmp_path, marker):
    reference = _fit(tmp_path / "a", tmp_path / "a" / "work").diffs["deft-x"]
    work = tmp_path / "b" / "work"
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "b", work, [Interrupt(marker, 3)])
    assert (work / "theta1.safetensors").is_file() == (marker == "phase3")
    assert not (work / "theta0.safetensors").exists(), "θ0 is the model: never copied"
    resumed = _fit(tmp_path / "b", work).diffs["deft-x"]
    for name in reference.indices:
        assert torch.equal(resumed.indices[name], reference.indices[name]), name
        assert_bitwise_equal(resumed.values[name], reference.values[name], what=name)
    assert SparseDiff.load(work / "deft-x" / "sft.safetensors").nnz == reference.nnz


@pytest.mark.parametrize("marker", ["phase1", "phase3"])
def test_a_phase_stopped_before_its_last_step_is_not_taken_as_finished(tmp_path, marker):
    """A Trainer stopped early returns normally (SIGTERM under enable_jit_checkpoint, a callback): the phase's
    result must not be saved as finished (nor an SFT built on it); the next fit resumes to the reference."""
    reference = _fit(tmp_path / "a", tmp_path / "a" / "work").diffs["deft-x"]
    work = tmp_path / "b" / "work"
    with pytest.raises(RuntimeError, match=r"stopped at step 3 of 5"):
        _fit(tmp_path / "b", work, [StopEarly(marker, 3)])
    assert (work / "theta1.safetensors").is_file() == (marker == "phase3")
    assert not (work / "deft-x" / "sft.safetensors").exists()
    resumed = _fit(tmp_path / "b", work).diffs["deft-x"]
    for name in reference.indices:
        assert torch.equal(resumed.indices[name], reference.indices[name]), name
        assert_bitwise_equal(resumed.values[name], reference.values[name], what=name)


@pytest.mark.parametrize("marker", ["phase1", "phase3"])
def test_a_model_only_checkpoint_is_not_resumed_from(tmp_path, marker):
    """save_only_model (a run-only argument) writes checkpoints without the optimizer, scheduler and RNG states:
    the Trainer resumes from one with fresh Adam moments and a restarted schedule. Such a checkpoint is no
    place to resume from: the killed phase starts again and ends as an uninterrupted run."""
    reference = _fit(tmp_path / "a", tmp_path / "a" / "work").diffs["deft-x"]
    work = tmp_path / "b" / "work"
    with pytest.raises(KeyboardInterrupt):
        _fit(tmp_path / "b", work, [Interrupt(marker, 3)], save_only_model=True)
    folder = work / "phase1" if marker == "phase1" else work / "deft-x" / "phase3"
    assert [p.name for p in folder.glob("checkpoint-*")] == ["checkpoint-2"]
    resumed = _fit(tmp_path / "b", work, save_only_model=True).diffs["deft-x"]
    for name in reference.indices:
        assert torch.equal(resumed.indices[name], reference.indices[name]), name
        assert_bitwise_equal(resumed.values[name], reference.values[name], what=name)


def test_resume_refuses_another_base_model(tmp_path):
    from tests.train.conftest import tiny_trainer

    work = tmp_path / "work"
    _fit(tmp_path, work)
    trainer = tiny_trainer(tmp_path, tiny_model(seed=5))
    with pytest.raises(ValueError, match=r"phase 1: theta0: \w+… -> \w+… \(.*not the base this run started from"):
        SparseFineTuner(trainer, config(selections={"deft-x": DenoiseConfig(rank=1, method="exact")}), work,
                        progress=False).fit()


def test_k_larger_than_eligible_is_refused(make_trainer):
    with pytest.raises(ValueError, match="exceeds"):
        SparseFineTuner(make_trainer(), config(k=10**7), "unused", progress=False)


@pytest.mark.parametrize("skip", [True, False])
def test_no_final_checkpoint(make_trainer, tmp_path, skip):
    from deftx.train.finetune import phase_arguments
    from deftx.train.sparse_finetuner import NoFinalCheckpoint

    trainer = make_trainer(save_steps=100)
    if skip:
        trainer.add_callback(NoFinalCheckpoint())
    with phase_arguments(trainer, PhaseConfig(steps=2, learning_rate=1e-3), str(tmp_path / "phase")):
        trainer.train()
    written = sorted(p.name for p in (tmp_path / "phase").glob("checkpoint-*"))
    assert written == ([] if skip else ["checkpoint-2"])


def test_a_diverged_phase_one_is_refused_naming_a_parameter(tmp_path):
    from tests.train.conftest import tiny_trainer

    trainer = tiny_trainer(tmp_path, max_grad_norm=0.0)
    diverging = config(full=PhaseConfig(steps=3, learning_rate=1e38), selections={"lt-sft": None})
    with pytest.raises(ValueError, match=r"phase 1 diverged: parameter '.+' holds \d+ NaN/Inf"):
        SparseFineTuner(trainer, diverging, tmp_path / "work", progress=False).fit()
    assert not (tmp_path / "work" / "theta1.safetensors").exists()


def test_shipping_a_head_nothing_trains_is_refused_before_training(make_trainer):
    """``ship_head`` with ``train_head=False`` (and no ``dense_names``) would write SFTs whose info records
    the classifier head while shipping none of its tensors."""
    with pytest.raises(ValueError, match=r"ship_head.*train_head"):
        SparseFineTuner(make_trainer(), config(train_head=False, ship_head=True), "unused", progress=False)
    head = ["classifier.weight", "classifier.bias"]
    chosen = SparseFineTuner(make_trainer(), config(train_head=False, ship_head=True), "unused",
                             dense_names=head, progress=False)
    assert chosen.dense == head


def test_dense_names_that_are_also_eligible_are_refused_not_trained_sparsely(make_trainer):
    """``dense_names=[word embeddings]`` asked for the matrix to be trained on every entry; it was dropped
    from the dense list without a word and trained (and shipped) as K-sparse entries."""
    embeddings = "bert.embeddings.word_embeddings.weight"
    with pytest.raises(ValueError, match=r"dense_names .*word_embeddings.* also eligible"):
        SparseFineTuner(make_trainer(), config(), "unused", dense_names=[embeddings, "classifier.weight"],
                        progress=False)
    eligible = [n for n in SparseFineTuner(make_trainer(), config(), "unused", progress=False).eligible
                if n != embeddings]
    chosen = SparseFineTuner(make_trainer(), config(), "unused", eligible_names=eligible,
                             dense_names=[embeddings, "classifier.weight"], progress=False)
    assert chosen.dense == [embeddings, "classifier.weight"] and embeddings not in chosen.eligible


def test_a_head_parameter_made_eligible_leaves_the_default_dense_head(make_trainer):
    eligible = [*SparseFineTuner(make_trainer(), config(), "unused", progress=False).eligible, "classifier.weight"]
    chosen = SparseFineTuner(make_trainer(), config(), "unused", eligible_names=eligible, progress=False)
    assert "classifier.weight" not in chosen.dense and "classifier.bias" in chosen.dense
