"""The full TrainingArguments from a config (through HfArgumentParser), step identities, and pipeline --dry-run."""

from __future__ import annotations

import pytest
import yaml

from deftx.cli import main
from deftx.pipeline.config import ConfigError, parse_config
from deftx.train.trainer_args import TrainingSettings, result_arguments, training_arguments
from tests.helpers import nusax_plan_root

TRAINING = {"batch_size": 4, "bf16": True, "use_cpu": True, "gradient_accumulation_steps": 4,
            "report_to": ["none"], "lr_scheduler_type": "cosine"}


def test_any_trainer_argument_reaches_the_trainer(tmp_path):
    config = parse_config({"targets": ["madurese"], "training": TRAINING})
    assert config.training.arguments == {k: v for k, v in TRAINING.items() if k != "batch_size"}
    args = training_arguments(config.training, tmp_path)
    assert (args.bf16, args.use_cpu, args.gradient_accumulation_steps) == (True, True, 4)
    assert args.lr_scheduler_type == "cosine" and args.per_device_train_batch_size == 4
    assert args.report_to in (["none"], [], "none")


def test_a_nested_arguments_mapping_is_the_same(tmp_path):
    flat = parse_config({"targets": ["m"], "training": {"gradient_accumulation_steps": 2}})
    nested = parse_config({"targets": ["m"], "training": {"arguments": {"gradient_accumulation_steps": 2}}})
    assert flat.training == nested.training


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"bf17": True}, "unknown keys \\['bf17'\\]: neither deftx settings"),
        ({"learning_rate": 1e-3}, "'learning_rate' is set by each phase's learning_rate"),
        ({"max_steps": 5}, "'max_steps' is set by each phase's steps"),
        ({"per_device_train_batch_size": 8}, "'per_device_train_batch_size' is set by training.batch_size"),
        ({"arguments": {"seed": 3}}, "'seed' is set by training.seed"),
    ],
)
def test_arguments_deftx_sets_or_that_do_not_exist_are_refused(training, message):
    with pytest.raises(ConfigError, match=message):
        parse_config({"targets": ["m"], "training": training})


def test_transformers_validates_the_combination(tmp_path):
    """bf16 without a bf16 device and without use_cpu: transformers' own error, at argument time."""
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device supports bf16")
    with pytest.raises(ValueError, match="bf16"):
        training_arguments(TrainingSettings(arguments={"bf16": True}), tmp_path)


def test_step_identity_changes_with_results_not_with_reporting(tmp_path):
    """The run identity every step records holds the arguments that change results, not the reporting ones."""
    def identity(training):
        return result_arguments(training_arguments(parse_config({"targets": ["m"], "training": training}).training,
                                                   tmp_path))

    plain = identity({})
    assert "output_dir" not in plain and "learning_rate" not in plain, "paths and per-phase fields are not in it"
    assert identity({"report_to": ["tensorboard"], "run_name": "x", "logging_steps": 3, "save_steps": 7}) == plain
    changed = identity({"gradient_accumulation_steps": 4})
    assert changed["gradient_accumulation_steps"] == 4 and changed != plain


def test_dry_run_prints_the_plan_and_trains_nothing(tmp_path, capsys):
    config = {"name": "plan", "model": "org/some-encoder", "data_dir": str(nusax_plan_root(tmp_path)),
              "output_dir": str(tmp_path / "run"), "targets": ["madurese", "buginese"],
              "training": {"gradient_accumulation_steps": 4},
              "methods": {"lt-sft": None, "deft-x": None, "deft-x-r8": {"rank": 8, "method": "exact"}}}
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["pipeline", str(path), "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert "model: org/some-encoder: Hugging Face Hub model id" in printed
    assert "methods (the selection rule of each):\n" in printed
    assert "\n  lt-sft: magnitude |theta1 - theta0| (LT-SFT)\n" in printed
    assert "\n  deft-x: denoised |low-rank Delta| (DeFT-X: energy 0.9, randomized SVD of " in printed
    assert "  deft-x-r8: denoised |low-rank Delta| (DeFT-X: rank 8, exact SVD of " in printed
    assert "  gradient_accumulation_steps = 4" in printed and "max_steps" not in printed
    assert "on nusax text (NusaX train+valid); cached by model, text and settings" in printed, "the head's key"
    sft = tmp_path / "run" / "seed-0" / "lang" / "madurese" / "lt-sft" / "sft.safetensors"
    assert f"lt-sft: {sft} (to run)" in printed
    assert "full fine-tuning baseline on indonesian" in printed and "task SFT on indonesian" in printed
    assert "not evaluated (no NusaX test split" in printed and "['buginese']" in printed
    assert not (tmp_path / "run").exists()
    sft.parent.mkdir(parents=True)
    sft.write_bytes(b"")
    assert main(["pipeline", str(path), "--dry-run"]) == 0
    assert (f"lt-sft: {sft} (results there, checked when the run reaches them: model 'org/some-encoder' is not "
            "on this machine yet)") in capsys.readouterr().out, "a file there is not a step done: its identity is"


@pytest.mark.parametrize(
    ("training", "message"),
    [
        ({"bf16": "false"}, r"'bf16' must be true or false, got 'false'"),
        ({"gradient_accumulation_steps": 2.5}, r"'gradient_accumulation_steps' must be an integer, got 2\.5"),
        ({"gradient_accumulation_steps": True}, r"'gradient_accumulation_steps' must be an integer, got True"),
        ({"adam_epsilon": "1e-8"}, r"'adam_epsilon' must be a number, got '1e-8' \(YAML reads"),
        ({"eval_steps": "10"}, r"'eval_steps' must be a number or null, got '10'"),
    ],
)
def test_a_trainer_argument_of_the_wrong_type_is_refused(tmp_path, training, message):
    """HfArgumentParser.parse_dict converts nothing: the string 'false' reached TrainingArguments as bf16 = 'false',
    which is truthy, so the phases trained in bf16 while the config (and its identity) said false."""
    with pytest.raises(ConfigError, match=rf"^config training: TrainingSettings\.arguments: {message}"):
        parse_config({"targets": ["m"], "training": {**training, "use_cpu": True}})


def test_trainer_arguments_of_their_own_type_pass(tmp_path):
    training = {"bf16": False, "adam_epsilon": 1e-8, "adam_beta2": 1, "eval_steps": None, "fsdp": None,
                "gradient_accumulation_steps": 2}
    args = training_arguments(parse_config({"targets": ["m"], "training": training}).training, tmp_path)
    assert (args.bf16, args.adam_epsilon, args.adam_beta2, args.gradient_accumulation_steps) == (False, 1e-8, 1, 2)


def test_a_trainer_argument_given_both_flat_and_under_arguments_is_refused():
    """training: {gradient_accumulation_steps: 2, arguments: {gradient_accumulation_steps: 8}} kept 2 and dropped 8
    without a word, as a key written twice in one mapping (which is refused) would."""
    training = {"gradient_accumulation_steps": 2, "bf16": False,
                "arguments": {"gradient_accumulation_steps": 8, "bf16": False}}
    with pytest.raises(ConfigError, match=r"^config training: \['bf16', 'gradient_accumulation_steps'\] given both "
                                          r"beside deftx's settings and under training\.arguments"):
        parse_config({"targets": ["m"], "training": training})
