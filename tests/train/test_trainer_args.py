import pytest
import torch

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
