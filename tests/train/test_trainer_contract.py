"""SparseFineTuner and the user's Trainer (issue #19): what it overrides it names; what it is given it gives back.

* One :class:`TrainerOverrideWarning` names each ``TrainingArguments`` field a phase sets where
  the user's value differs (yours -> the phase's); ``PhaseConfig.from_training_arguments`` keeps
  the user's phase-1 length and learning rate.
* An optimizer instance is refused (it cannot be rebuilt per phase); a class given through
  ``optimizer_cls_and_kwargs`` drives phase 1 at phase 1's learning rate.
* After ``fit()`` the Trainer is as given: arguments, optimizer, scheduler, state, control,
  callbacks, model weights; its own ``train()`` then trains as the user configured it, in the
  user's ``output_dir``, which ``fit()`` never wrote to nor deleted.
"""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from transformers import Trainer, TrainerCallback, TrainingArguments

from deftx.train.config import PhaseConfig, SparseFineTuningConfig
from deftx.train.sparse_finetuner import SparseFineTuner
from deftx.train.trainer_contract import TrainerOverrideWarning, override_message
from tests.helpers import assert_bitwise_equal, assert_same_entries
from tests.train.conftest import tiny_dataset, tiny_model

ELIGIBLE = ("word_embeddings", "embeddings", "attention", "ffn")


def config(full: PhaseConfig | None = None) -> SparseFineTuningConfig:
    return SparseFineTuningConfig(
        k=0.1, full=full or PhaseConfig(steps=3, learning_rate=1e-2), sparse=PhaseConfig(steps=2, learning_rate=1e-2),
        eligible=ELIGIBLE, selections={"lt-sft": None}, train_head=True, ship_head=True,
    )


def user_arguments(tmp_path, **overrides) -> TrainingArguments:
    settings = dict(output_dir=str(tmp_path / "yours"), num_train_epochs=2, learning_rate=2e-5,
                    per_device_train_batch_size=8, report_to=[], disable_tqdm=True, use_cpu=True, seed=3,
                    save_strategy="steps", save_steps=2, logging_steps=1)
    settings.update(overrides)
    return TrainingArguments(**settings)


class RecordOptimizer(TrainerCallback):
    """The optimizer each train() call started with, and its learning rate."""

    def __init__(self):
        self.seen: list[tuple[type, float]] = []

    def on_train_begin(self, args, state, control, optimizer=None, **kwargs):
        inner = getattr(optimizer, "optimizer", optimizer)
        self.seen.append((type(inner), inner.param_groups[0].get("initial_lr", inner.param_groups[0]["lr"])))


def fit_with_warnings(tuner: SparseFineTuner):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = tuner.fit()
    return result, [w for w in caught if issubclass(w.category, TrainerOverrideWarning)]


def test_one_warning_names_each_overridden_field_with_both_values(tmp_path):
    trainer = Trainer(model=tiny_model(), args=user_arguments(tmp_path), train_dataset=tiny_dataset())
    _, caught = fit_with_warnings(SparseFineTuner(trainer, config(), tmp_path / "work", progress=False))
    assert len(caught) == 1
    message = str(caught[0].message)
    phase1 = message.split("phase 1 (config.full): ")[1].split(";")[0]
    assert "max_steps -1 -> 3 (instead of num_train_epochs 2)" in phase1
    assert "learning_rate 2e-05 -> 0.01" in phase1
    assert f"output_dir '{tmp_path / 'yours'}' -> '{tmp_path / 'work' / 'phase1'}'" in phase1
    assert "phase 3 (config.sparse): max_steps -1 -> 2" in message and "MaskedAdamW" in message
    assert "neither written to nor deleted" in message and "from_training_arguments" in message


def test_from_training_arguments_runs_phase_one_with_your_length_and_rate(tmp_path):
    args = user_arguments(tmp_path, max_steps=4, learning_rate=3e-3)
    recorder = RecordOptimizer()
    trainer = Trainer(model=tiny_model(), args=args, train_dataset=tiny_dataset(), callbacks=[recorder])
    tuner = SparseFineTuner(trainer, config(PhaseConfig.from_training_arguments(args)), tmp_path / "work",
                            progress=False)
    _, caught = fit_with_warnings(tuner)
    phase1 = str(caught[0].message).split("phase 1 (config.full): ")[1].split(";")[0]
    assert "learning_rate" not in phase1 and "max_steps" not in phase1 and phase1.startswith("output_dir")
    records = [json.loads(line) for line in (tmp_path / "work" / "log.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in records if r["phase"] == "full" and "loss" in r) == 4, "your max_steps"
    assert recorder.seen[0][1] == pytest.approx(3e-3), "your learning rate"
    assert PhaseConfig.from_training_arguments(user_arguments(tmp_path)) == PhaseConfig(epochs=2.0,
                                                                                         learning_rate=2e-5)


def test_a_phase_whose_settings_are_yours_is_not_named(tmp_path):
    args = user_arguments(tmp_path, output_dir=str(tmp_path / "work" / "phase1"))
    trainer = Trainer(model=tiny_model(), args=args, train_dataset=tiny_dataset())
    full = PhaseConfig.from_training_arguments(args)
    message = override_message(trainer, full, full, tmp_path / "work")
    assert "phase 1" not in message and "phase 3 (config.sparse): output_dir" in message


@pytest.mark.parametrize("how", ["optimizers", "earlier train()"])
def test_an_optimizer_instance_is_refused(tmp_path, how):
    model = tiny_model()
    if how == "optimizers":
        trainer = Trainer(model=model, args=user_arguments(tmp_path), train_dataset=tiny_dataset(),
                          optimizers=(torch.optim.SGD(model.parameters(), lr=0.1), None))
    else:
        trainer = Trainer(model=model, args=user_arguments(tmp_path, max_steps=1), train_dataset=tiny_dataset())
        trainer.train()
    with pytest.raises(ValueError, match=r"optimizer.*instance.*optimizer_cls_and_kwargs"):
        SparseFineTuner(trainer, config(), tmp_path / "work", progress=False)


def test_a_trainer_with_model_init_is_refused(tmp_path):
    """Trainer(model_init=...) builds a fresh model at every train(): each phase would train a new model with
    every parameter trainable (the frozen ones too), not the tuner's θ0 / θ1 with the eligible ones."""
    trainer = Trainer(model_init=lambda: tiny_model(), args=user_arguments(tmp_path), train_dataset=tiny_dataset())
    with pytest.raises(ValueError, match=r"model_init.*Trainer\(model="):
        SparseFineTuner(trainer, config(), tmp_path / "work", progress=False)
    assert not (tmp_path / "work").exists()


def test_optimizer_cls_and_kwargs_drive_phase_one_at_its_learning_rate(tmp_path):
    recorder = RecordOptimizer()
    chosen = (torch.optim.SGD, {"lr": 0.5, "momentum": 0.9})
    trainer = Trainer(model=tiny_model(), args=user_arguments(tmp_path), train_dataset=tiny_dataset(),
                      callbacks=[recorder], optimizer_cls_and_kwargs=chosen)
    _, caught = fit_with_warnings(SparseFineTuner(trainer, config(), tmp_path / "work", progress=False))
    assert "optimizer_cls_and_kwargs (SGD) lr 0.5 -> 0.01" in str(caught[0].message)
    (phase1_cls, phase1_lr), (phase3_cls, _) = recorder.seen
    assert phase1_cls is torch.optim.SGD and phase1_lr == pytest.approx(1e-2)
    assert phase3_cls.__name__ == "MaskedAdamW"
    assert trainer.optimizer_cls_and_kwargs == chosen and chosen[1] == {"lr": 0.5, "momentum": 0.9}


def test_after_fit_the_trainer_is_as_given_and_trains_as_configured(tmp_path):
    (tmp_path / "yours").mkdir()
    (tmp_path / "yours" / "notes.txt").write_text("mine")
    args = user_arguments(tmp_path, max_steps=3, num_train_epochs=1)
    trainer = Trainer(model=tiny_model(), args=args, train_dataset=tiny_dataset(), eval_dataset=tiny_dataset(8, 4))
    before = {
        "args": args.to_dict(), "state": trainer.state, "control": trainer.control,
        "callbacks": [type(c) for c in trainer.callback_handler.callbacks],
        "weights": {n: p.detach().clone() for n, p in trainer.model.named_parameters()},
        "flags": {n: p.requires_grad for n, p in trainer.model.named_parameters()},
    }
    SparseFineTuner(trainer, config(), tmp_path / "work", progress=False).fit()
    assert trainer.args.to_dict() == before["args"]
    assert trainer.state is before["state"] and trainer.control is before["control"]
    assert trainer.optimizer is None and trainer.lr_scheduler is None
    assert [type(c) for c in trainer.callback_handler.callbacks] == before["callbacks"]
    for name, param in trainer.model.named_parameters():
        assert_bitwise_equal(param.detach(), before["weights"][name], what=f"{name} back at θ0")
        assert param.requires_grad == before["flags"][name]
    assert sorted(p.name for p in (tmp_path / "yours").iterdir()) == ["notes.txt"], "nothing written, nothing deleted"

    assert "eval_loss" in trainer.evaluate()
    trainer.train()
    assert trainer.state.global_step == 3, "the user's max_steps"
    assert (tmp_path / "yours" / "checkpoint-2").is_dir(), "checkpoints in the user's output_dir"
    assert (tmp_path / "yours" / "notes.txt").read_text() == "mine"


def test_after_fit_every_module_is_in_the_mode_it_was_given_in(tmp_path):
    """``trainer.train()`` switches the model to train mode; a model given in eval mode (one module
    left training) comes back so, and computes θ0's logits with dropout off, as before."""
    model = tiny_model().eval()
    model.bert.encoder.layer[0].train()
    before = {name: module.training for name, module in model.named_modules()}
    ids = torch.stack([row["input_ids"] for row in tiny_dataset(4, 9)])
    model.bert.encoder.layer[0].eval()
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    model.bert.encoder.layer[0].train()
    trainer = Trainer(model=model, args=user_arguments(tmp_path), train_dataset=tiny_dataset())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrainerOverrideWarning)
        SparseFineTuner(trainer, config(), tmp_path / "work", progress=False).fit()
    assert {name: module.training for name, module in model.named_modules()} == before
    model.bert.encoder.layer[0].eval()
    with torch.no_grad():
        assert_bitwise_equal(model(input_ids=ids).logits, expected, what="θ0's logits in eval mode")


def test_after_fit_with_bf16_the_model_computes_in_float32_as_before(tmp_path):
    """``train()`` with ``bf16`` wraps the model's ``forward`` in autocast (accelerate) and leaves it so:
    after ``fit()`` the model's forward is its own again, and θ0's logits are float32's, bit for bit."""
    model = tiny_model().eval()
    ids = torch.stack([row["input_ids"] for row in tiny_dataset(4, 9)])
    with torch.no_grad():
        expected = model(input_ids=ids).logits
    trainer = Trainer(model=model, args=user_arguments(tmp_path, bf16=True), train_dataset=tiny_dataset())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TrainerOverrideWarning)
        SparseFineTuner(trainer, config(), tmp_path / "work", progress=False).fit()
    assert "forward" not in vars(model) and "_original_forward" not in vars(model)
    with torch.no_grad():
        assert_bitwise_equal(model(input_ids=ids).logits, expected, what="θ0's logits after a bf16 fit")


def test_a_second_fit_of_a_model_built_from_its_config_returns_the_finished_sfts(tmp_path):
    """A Trainer checkpoint (``save_pretrained``) writes the model's dtype and class into its config; ``fit()``
    puts the config back, so a second ``fit()`` (or one after a kill in the same process) sees the run's own
    identity and returns the finished SFTs instead of refusing its own work as another run's."""
    model = tiny_model()
    assert model.config.dtype is None, "a model built from its config records no dtype"
    before = (model.config.dtype, model.config.architectures)
    trainer = Trainer(model=model, args=user_arguments(tmp_path, save_steps=1), train_dataset=tiny_dataset())
    tuner = SparseFineTuner(trainer, config(), tmp_path / "work", progress=False, warn_overrides=False)
    first = tuner.fit()
    assert (model.config.dtype, model.config.architectures) == before
    again = tuner.fit()
    assert_same_entries(again.diffs["lt-sft"], first.diffs["lt-sft"])
