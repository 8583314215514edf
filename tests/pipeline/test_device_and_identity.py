"""The run's device (config ``device``, ``--device``) and step identities computed from the calls' own inputs."""

from __future__ import annotations

import csv
import os
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml

from deftx.cli import main
from deftx.pipeline import ablation
from deftx.pipeline.ablation import AblationRun, head_for
from deftx.pipeline.config import ConfigError, parse_config
from deftx.pipeline.head import head_call
from deftx.pipeline.workspace import Workspace, resolve_device, training_settings
from deftx.train.config import to_plain
from deftx.train.identity import digest
from deftx.train.store import LinkedStepStore
from deftx.train.trainer_args import result_arguments, training_arguments
from tests.pipeline.test_pipeline import tiny_mapping, tiny_pipeline


def no_cuda(monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_device_resolution(monkeypatch):
    config = parse_config({"targets": ["madurese"]})
    assert config.device == "auto"
    no_cuda(monkeypatch)
    assert resolve_device(config) == "cpu"
    assert resolve_device(replace(config, device="cpu")) == "cpu"
    with pytest.raises(ValueError, match=r"device cuda asked for, but torch.cuda.is_available\(\) is false"):
        resolve_device(replace(config, device="cuda"))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device(config) == "cuda"
    assert resolve_device(parse_config({"targets": ["m"], "training": {"use_cpu": True}})) == "cpu"
    with pytest.raises(ValueError, match=r"contradicts training\.use_cpu"):
        resolve_device(parse_config({"targets": ["m"], "device": "cuda", "training": {"use_cpu": True}}))


def test_cuda_on_several_visible_gpus_is_refused_outside_a_distributed_launch(monkeypatch):
    """A Trainer on N > 1 visible GPUs trains with DataParallel on batch_size x N examples per step (another
    recipe under the same identity): the pipeline refuses it, naming CUDA_VISIBLE_DEVICES."""
    config = parse_config({"targets": ["madurese"], "device": "cuda"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for asked in (config, replace(config, device="auto")):
        with pytest.raises(ValueError, match=r"2 visible GPUs.*batch_size x 2.*CUDA_VISIBLE_DEVICES"):
            resolve_device(asked)
    assert resolve_device(replace(config, device="cpu")) == "cpu"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_device(config) == "cuda", "a distributed launch gives each process one GPU"
    monkeypatch.delenv("WORLD_SIZE")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device(config) == "cuda"


def test_a_bad_device_value_is_a_config_error():
    with pytest.raises(ConfigError, match=r"device: expected one of \['auto', 'cpu', 'cuda'\], got 'gpu'"):
        parse_config({"targets": ["madurese"], "device": "gpu"})


@pytest.mark.parametrize("how", ["flag", "config"])
def test_cuda_without_cuda_is_one_line_and_exit_2_before_any_work(tmp_path, monkeypatch, capsys, how):
    no_cuda(monkeypatch)
    output = tmp_path / "run"
    config = {"targets": ["madurese"], "model": str(tmp_path / "no-such-model"), "output_dir": str(output)}
    if how == "config":
        config["device"] = "cuda"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["pipeline", str(path), *(["--device", "cuda"] if how == "flag" else [])]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("deftx pipeline: error: device cuda asked for, but "
                                                   "torch.cuda.is_available() is false"), err
    assert not output.exists(), "nothing was made (the model, checked later, is not even looked up)"


def test_a_bad_device_flag_is_exit_2(tmp_path, capsys):
    path = tmp_path / "config.yaml"
    path.write_text("targets: [madurese]\n")
    assert main(["pipeline", str(path), "--device", "tpu"]) == 2
    assert "--device: expected one of ['auto', 'cpu', 'cuda'], got 'tpu'" in capsys.readouterr().err


def test_the_device_is_part_of_every_training_steps_identity(tmp_path):
    """It reaches the Trainer as use_cpu (result_arguments), which sets the device the run identity records."""
    config = parse_config({"targets": ["madurese"]})

    def identity(device: str) -> dict:
        return result_arguments(training_arguments(training_settings(config, device, 0), tmp_path))

    assert identity("cpu")["use_cpu"] is True and identity("cuda")["use_cpu"] is False
    assert {k for k in identity("cpu") if identity("cpu")[k] != identity("cuda")[k]} == {"use_cpu"}


def test_device_cpu_is_todays_default(tmp_path, tiny_model_dir, monkeypatch):
    """`deftx pipeline CONFIG --device cpu` after `deftx pipeline CONFIG` on a machine without CUDA:
    the same identities (every step is resumed, none retrained) and the same results."""
    monkeypatch.setenv("DEFTX_CACHE", str(tmp_path / "cache"))
    no_cuda(monkeypatch)
    config = {**tiny_mapping(tmp_path, tiny_model_dir, "run", {"lt-sft": None}), "step_store": None}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["pipeline", str(path), "--quiet"]) == 0
    out = tmp_path / "run"
    sfts = sorted(out.rglob("sft.safetensors"))
    stamps = {p: os.stat(p).st_mtime_ns for p in sfts}
    first = (out / "results.csv").read_text()
    assert main(["pipeline", str(path), "--quiet", "--device", "cpu"]) == 0
    assert sorted(out.rglob("sft.safetensors")) == sfts and len(sfts) == 3
    assert {p: os.stat(p).st_mtime_ns for p in sfts} == stamps, "no step was retrained"
    assert (out / "results.csv").read_text() == first
    with (out / "results.csv").open() as handle:
        assert {row["method"] for row in csv.DictReader(handle)} == {"full-ft", "lt-sft", "lt-sft (no lang SFT)"}


def old_head_key(ws: Workspace) -> str:
    """The hand-kept list the ablation keyed its heads by before the key was computed from the call."""
    return digest([str(ws.model_dir), str(ws.data_dir), to_plain(ws.config.mlm_head),
                   list(ws.config.language_text_splits)])


def test_a_head_is_recomputed_for_a_setting_the_old_hand_kept_key_left_out(tmp_path, tiny_model_dir, monkeypatch):
    """The device never was in the old list: a head warmed on the CPU would have been reused on CUDA. The
    key is now the digest of the call the warm-up gets, so it cannot miss an input; equal calls still share."""
    calls = []

    def fake_ensure_head(ws, call):
        calls.append(call)
        ws.head_metrics = {"key": call.key()}
        return Path(f"head-{len(calls)}.safetensors")

    monkeypatch.setattr(ablation, "ensure_head", fake_ensure_head)
    config = tiny_pipeline(tmp_path, tiny_model_dir, "run", {"lt-sft": None})
    run = AblationRun(ablation=None, store=LinkedStepStore(tmp_path / "store"))
    on_cpu = Workspace.open(config, log=lambda _: None)
    again = Workspace.open(config, log=lambda _: None, tokenizer=on_cpu.tokenizer)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    on_cuda = Workspace.open(replace(config, device="cuda"), log=lambda _: None, tokenizer=on_cpu.tokenizer)

    assert old_head_key(on_cpu) == old_head_key(on_cuda), "the old key could not tell them apart"
    assert head_for(run, on_cpu) == head_for(run, again) == Path("head-1.safetensors"), "equal inputs: one warm-up"
    assert head_for(run, on_cuda) == Path("head-2.safetensors"), "another device: warmed again"
    assert [call.device for call in calls] == ["cpu", "cuda"]
    assert head_call(on_cuda).identity()["device"] == "cuda" and calls[1] == head_call(on_cuda)


def test_seeds_run_apart_and_merge_in_deftx_paired(tmp_path, tiny_model_dir, monkeypatch, capsys):
    """Each subset of seeds is its own invocation with its own small results file; deftx paired merges them."""
    monkeypatch.setenv("DEFTX_CACHE", str(tmp_path / "cache"))
    config = {**tiny_mapping(tmp_path, tiny_model_dir, "run", {"lt-sft": None}), "step_store": None}
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    for seed in (0, 1):
        assert main(["pipeline", str(path), "--quiet", "--seeds", str(seed),
                     "--results-dir", str(tmp_path / f"seed-{seed}")]) == 0
        with (tmp_path / f"seed-{seed}" / "results.csv").open() as handle:
            assert {row["seed"] for row in csv.DictReader(handle)} == {str(seed)}
    capsys.readouterr()
    assert main(["paired", str(tmp_path / "seed-0/results.csv"), str(tmp_path / "seed-1/results.csv"),
                 "--pair", "lt-sft:full-ft", "--targets", "madurese"]) == 0
    table = capsys.readouterr().out
    assert "| madurese | lt-sft − full-ft |" in table and table.splitlines()[2].endswith("| 2 |"), table


def test_an_ablation_rows_hash_holds_the_resolved_device(tmp_path, monkeypatch):
    """``auto`` is no device: the rows of a variant are keyed by the device it resolves to here."""
    raw = {"base": {"targets": ["madurese"]}, "output_dir": str(tmp_path),
           "variants": {"auto": {}, "cpu": {"device": "cpu"}, "cuda": {"device": "cuda"}}}
    no_cuda(monkeypatch)
    on_cpu = ablation.parse_ablation(raw).hashes
    assert on_cpu["auto"] == on_cpu["cpu"] != on_cpu["cuda"], "a plan for a GPU machine parses here"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    on_gpu = ablation.parse_ablation(raw).hashes
    assert on_gpu["auto"] == on_gpu["cuda"] == on_cpu["cuda"] != on_gpu["cpu"] == on_cpu["cpu"]


def test_ablate_device_cuda_without_cuda_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    no_cuda(monkeypatch)
    base = tmp_path / "base.yaml"
    mapping = tiny_mapping(tmp_path, tmp_path / "model", "unused", {"lt-sft": None})
    base.write_text(yaml.safe_dump({k: str(v) if isinstance(v, Path) else v for k, v in mapping.items()
                                    if k != "step_store"}))
    config = tmp_path / "ablation.yaml"
    config.write_text(yaml.safe_dump({"name": "a", "base": str(base), "output_dir": str(tmp_path / "runs"),
                                      "results_dir": str(tmp_path / "results"), "variants": {"reference": {}}}))
    assert main(["ablate", str(config), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("deftx ablate: error: device cuda asked for, but ")
    assert not (tmp_path / "results").exists() and not (tmp_path / "runs").exists(), "nothing was written"
    assert ablation.load_ablation(config, device="cpu").variants["reference"].device == "cpu"


def test_run_only_trainer_arguments_leave_the_recipe_alone():
    """Where a run reports (report_to, run_name, logging_first_step, save_total_limit, loader workers) is no result: the
    steps' own identities (result_arguments) leave those TrainingArguments out, and so must the recipe, or adding a
    seed to a results folder with another report_to is refused as another recipe."""
    from deftx.pipeline.identity import recipe_hash, run_identity

    def config(arguments):
        return parse_config({"targets": ["madurese"], "device": "cpu", "training": arguments})

    reporting = {"report_to": ["tensorboard"], "run_name": "x", "logging_first_step": True, "save_total_limit": 3,
                 "dataloader_num_workers": 2}
    assert recipe_hash(config(reporting)) == recipe_hash(config({}))
    accumulating = run_identity(config({**reporting, "gradient_accumulation_steps": 2}))
    assert accumulating["training"]["arguments"] == {"gradient_accumulation_steps": 2}
    assert recipe_hash(config({"gradient_accumulation_steps": 2})) != recipe_hash(config({}))


@pytest.mark.parametrize(("section", "whole", "written_as_float"), [
    ("task_sft", {"sparse": {"epochs": 4}}, {"sparse": {"epochs": 4.0}}),
    ("language_sft", {"full": {"steps": 50}}, {"full": {"steps": 50.0}}),
    ("language_sft", {"k": 4096}, {"k": 4096.0}),
    ("full_finetune", {"epochs": 2}, {"epochs": 2.0}),
])
def test_a_whole_number_written_with_a_dot_is_the_same_recipe(section, whole, written_as_float):
    """epochs: 3.0 trains as epochs: 3 (the same phase), but the recipe digest is of the JSON text, 3.0 != 3: the
    same recipe got another hash (another ablation variant folder, rows of two recipes)."""
    from deftx.pipeline.identity import recipe_hash

    first = parse_config({"targets": ["madurese"], section: whole})
    second = parse_config({"targets": ["madurese"], section: written_as_float})
    assert recipe_hash(first) == recipe_hash(second)
    assert recipe_hash(first) != recipe_hash(parse_config({"targets": ["madurese"]})), "the setting is in the recipe"


def test_a_one_scale_list_is_the_recipe_of_that_scale():
    """language_scale: [1.25] scores what language_scale: 1.25 does (one composition scale), but its recipe differed,
    so a results folder of one refused the other's seeds as another recipe."""
    from deftx.pipeline.identity import recipe_hash

    listed = parse_config({"targets": ["madurese"], "language_scale": [1.5]})
    single = parse_config({"targets": ["madurese"], "language_scale": 1.5})
    assert listed.language_scales() == single.language_scales() == (1.5,)
    assert recipe_hash(listed) == recipe_hash(single)
    assert recipe_hash(single) != recipe_hash(parse_config({"targets": ["madurese"]})), "the scale is in the recipe"


def test_use_cpu_is_the_recipe_of_device_cpu():
    """training.use_cpu: true runs every phase on the CPU, as device: cpu does (the identity records the device
    either way), but it stayed in the recipe as an argument too: the same CPU run had two hashes."""
    from deftx.pipeline.identity import recipe_hash, run_identity
    from deftx.pipeline.workspace import requested_device

    by_argument = parse_config({"targets": ["madurese"], "training": {"use_cpu": True}})
    by_device = parse_config({"targets": ["madurese"], "device": "cpu"})
    assert requested_device(by_argument) == requested_device(by_device) == "cpu"
    assert recipe_hash(by_argument) == recipe_hash(by_device)
    assert run_identity(parse_config({"targets": ["madurese"], "device": "cuda"}))["device"] == "cuda"
