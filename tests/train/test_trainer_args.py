import math

import pytest
import torch
from transformers import Trainer

from deftx.train.checkpoint import read_log
from deftx.train.losses import NON_FINITE, loss_trends
from deftx.train.sparse_finetuner import PhaseLogger
from deftx.train.trainer_args import TrainingSettings, training_arguments


def test_batches_are_not_pinned_without_a_cuda_device(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert training_arguments(TrainingSettings(), tmp_path).dataloader_pin_memory is False


def test_settings_reach_the_arguments(tmp_path):
    settings = TrainingSettings(batch_size=4, seed=7, save_steps=3, logging_steps=2, weight_decay=0.01,
                                group_by_length=False, progress=False)
    args = training_arguments(settings, tmp_path / "out")
    assert (args.per_device_train_batch_size, args.seed, args.data_seed) == (4, 7, 7)
    assert (args.save_steps, args.logging_steps, args.weight_decay) == (3, 2, 0.01)
    assert args.train_sampling_strategy == "random" and args.disable_tqdm
    assert args.output_dir == str(tmp_path / "out") and args.report_to == []


def test_save_steps_zero_turns_the_trainers_checkpoints_off(tmp_path):
    args = training_arguments(TrainingSettings(save_steps=0), tmp_path)
    assert args.save_strategy == "no"
    assert training_arguments(TrainingSettings(save_steps=5), tmp_path).save_strategy == "steps"
    with pytest.raises(ValueError, match="save_steps must be an integer >= 0"):
        TrainingSettings(save_steps=-1)
    with pytest.raises(ValueError, match="logging_steps must be an integer >= 1"):
        TrainingSettings(logging_steps=0)


class LossTurnsNaN(torch.nn.Module):
    """Squared error of a linear map whose loss is NaN from the ``finite_calls + 1``-th forward on."""

    def __init__(self, finite_calls: int) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.ones(3))
        self.finite_calls = finite_calls
        self.calls = 0

    def forward(self, x, labels):
        self.calls += 1
        loss = ((x @ self.weight) - labels).pow(2).mean()
        return {"loss": loss if self.calls <= self.finite_calls else loss * math.nan}


def test_a_nan_loss_is_logged_as_nan_so_the_trend_names_the_phase_non_finite(tmp_path):
    """The Trainer's default logging_nan_inf_filter logs the mean of the finite losses since the last log
    in place of a NaN one, 0.0 once they are all NaN: a diverged phase read as one that fell by 100%."""
    settings = TrainingSettings(batch_size=2, logging_steps=2, save_steps=0, group_by_length=False, progress=False)
    args = training_arguments(settings, tmp_path / "trainer")
    args.max_steps = 8
    generator = torch.Generator().manual_seed(0)
    data = [{"x": torch.randn(3, generator=generator), "labels": torch.tensor(1.0)} for _ in range(8)]
    log = tmp_path / "log.jsonl"
    Trainer(model=LossTurnsNaN(finite_calls=4), args=args, train_dataset=data,
            callbacks=[PhaseLogger(log, "full")]).train()
    losses = [(record["step"], record["loss"]) for record in read_log(log) if "loss" in record]
    assert [step for step, _ in losses] == [2, 4, 6, 8]
    assert all(math.isfinite(loss) for _, loss in losses[:2]) and all(math.isnan(loss) for _, loss in losses[2:])
    (trend,) = loss_trends(read_log(log))
    assert trend.verdict == NON_FINITE
