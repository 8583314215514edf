"""Phase 1 helpers: the L1 pull's gradient and the per-phase TrainingArguments."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainerCallback, TrainingArguments

from deftx.train.config import PhaseConfig
from deftx.train.finetune import L1Pull, l1_gradient_scale, phase_arguments, run_full_finetuning
from tests.helpers import assert_close, tolerance


def linear_with_offset(seed: int = 0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Linear(3, 2))
    theta0 = {name: p.detach().clone() for name, p in model.named_parameters()}
    with torch.no_grad():
        model[0].weight.add_(torch.randn(3, 5) * 0.1)
        model[0].weight[0, 0] = theta0["0.weight"][0, 0]  # Δ = 0 -> sign 0
    return model, theta0


def loss_of(model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 5, generator=generator)
    return model(x).square().mean()


def test_l1_gradient_scale_counts_every_parameter():
    model = torch.nn.Linear(4, 3)
    model.bias.requires_grad_(False)
    assert l1_gradient_scale(0.1, model) == pytest.approx(0.1 / 15)


@pytest.mark.parametrize("accumulation", [1, 2])
def test_l1_pull_matches_autograd_of_the_reference_penalty(accumulation):
    l1 = 0.3
    anchors = ["0.weight", "0.bias"]
    model, theta0 = linear_with_offset()
    n_params = sum(p.numel() for p in model.parameters())
    penalty = sum((p - theta0[n]).abs().sum() for n, p in model.named_parameters() if n in anchors)
    (loss_of(model) + l1 * penalty / n_params).backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}

    model, theta0 = linear_with_offset()
    with L1Pull(model, {n: theta0[n] for n in anchors}, l1_gradient_scale(l1, model), accumulation):
        for _ in range(accumulation):
            (loss_of(model) / accumulation).backward()
    for name, param in model.named_parameters():
        assert_close(param.grad, expected[name], rtol=tolerance(torch.float32, 8), atol=1e-7, what=name)
    assert float(model[0].weight.grad[0, 0]) == pytest.approx(float(expected["0.weight"][0, 0]))


def test_l1_pull_hooks_are_removed_on_exit():
    model, theta0 = linear_with_offset()
    with L1Pull(model, theta0, 1.0):
        pass
    loss_of(model).backward()
    plain = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss_of(model).backward()
    for name, param in model.named_parameters():
        assert torch.equal(param.grad, plain[name])


def test_l1_pull_rejects_unknown_names():
    model, _ = linear_with_offset()
    with pytest.raises(KeyError, match="no parameters"):
        L1Pull(model, {"missing": torch.zeros(1)}, 1.0)


class _FakeTrainer:
    def __init__(self, tmp_path):
        self.args = TrainingArguments(output_dir=str(tmp_path / "user"), max_steps=77, learning_rate=1e-3,
                                      num_train_epochs=9, report_to=[])


@pytest.mark.parametrize("phase", [PhaseConfig(steps=5, learning_rate=2e-5), PhaseConfig(epochs=1.5)])
def test_phase_arguments_set_and_restore(tmp_path, phase):
    trainer = _FakeTrainer(tmp_path)
    with phase_arguments(trainer, phase, str(tmp_path / "phase")):
        assert trainer.args.learning_rate == phase.learning_rate
        assert trainer.args.output_dir == str(tmp_path / "phase")
        if phase.steps is not None:
            assert trainer.args.max_steps == 5
        else:
            assert trainer.args.max_steps == -1 and trainer.args.num_train_epochs == 1.5
    assert (trainer.args.max_steps, trainer.args.learning_rate, trainer.args.num_train_epochs) == (77, 1e-3, 9)
    assert trainer.args.output_dir == str(tmp_path / "user")


class GradientsBeforeStep(TrainerCallback):
    """The gradient of one parameter at every optimizer step (after clipping, before the step)."""

    def __init__(self, param: torch.Tensor):
        self.param, self.seen = param, []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        self.seen.append(self.param.grad.detach().clone())


def test_the_l1_pull_counts_once_in_an_epochs_short_last_accumulation(make_trainer, tmp_path):
    """24 rows in batches of 4 are 6 micro-batches an epoch: with 4 accumulated, the epoch's second step holds
    2. The pull is counted once per step either way (the Trainer averages the loss over the micro-batches a
    step holds): word-embedding rows 0-3, which no example uses, get exactly ``scale · sign(θ − θ0)``."""
    trainer = make_trainer(
        per_device_train_batch_size=4, gradient_accumulation_steps=4, max_grad_norm=0.0, save_strategy="no",
        weight_decay=0.0,
    )
    embedding = trainer.model.bert.embeddings.word_embeddings.weight
    theta0 = {"bert.embeddings.word_embeddings.weight": embedding.detach() - 1.0}  # sign(θ − θ0) = +1 throughout
    record = GradientsBeforeStep(embedding)
    trainer.add_callback(record)
    run_full_finetuning(trainer, PhaseConfig(epochs=2, learning_rate=1e-3, l1=0.3), theta0, str(tmp_path / "p1"))
    scale = l1_gradient_scale(0.3, trainer.model)
    assert len(record.seen) == 4, "two steps an epoch: 4 micro-batches, then 2"
    for step, grad in enumerate(record.seen):
        assert_close(grad[:4], torch.full_like(grad[:4], scale), rtol=tolerance(torch.float32), what=f"step {step}")
