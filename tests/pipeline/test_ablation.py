"""deftx.pipeline.ablation: override merging, validation, step sharing, and a tiny end-to-end ablation."""

from __future__ import annotations

import csv
import errno
import gc
import json
import os
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

import deftx.train.sparse_finetuner as sparse_finetuner
from deftx.eval.report import append_invocation
from deftx.pipeline.ablation import (
    average_by_method,
    invocation_lines,
    language_phase1_signature,
    load_ablation,
    merge_overrides,
    nest_overrides,
    parse_ablation,
    read_rows,
    recorded_head_metrics,
    run_ablation,
    seed_tables,
    seeds_sentence,
    summary_rows,
    variant_folder,
    variant_tables,
)
from deftx.pipeline.config import BASELINE, NO_LANGUAGE_SFT, ConfigError
from deftx.pipeline.steps import language_tuner, task_tuner
from deftx.pipeline.workspace import Workspace
from deftx.train.config import DenoiseConfig
from deftx.train.identity import digest
from deftx.train.store import LinkedStepStore

REPO = Path(__file__).resolve().parents[2]
# Pipeline settings the shared steps' identities depend on, besides the methods and the task and
# baseline recipes: where two configs agree on them, one links the other's steps from the store.
PHASE_1_SETTINGS = ("training", "mlm_head", "language_sft", "language_text_splits", "task_on_source_sft", "pooling")


def test_nest_overrides_expands_dotted_and_nested_keys():
    nested = nest_overrides({"language_sft.full.l1": 0, "language_sft": {"k": 0.01, "sparse.steps": 3},
                             "baseline": False}, "v")
    assert nested == {"language_sft": {"full": {"l1": 0}, "k": 0.01, "sparse": {"steps": 3}}, "baseline": False}
    assert nest_overrides(None, "v") == {}


@pytest.mark.parametrize("overrides, match", [
    ({"a.b": 1, "a": {"b": 2}}, r"v\.a: b is set twice"),
    ({"a": 1, "a.b": 2}, "a is set twice"),
    ({"a..b": 1}, "bad key"),
    ([1], "expected a mapping"),
])
def test_nest_overrides_refuses_conflicts(overrides, match):
    with pytest.raises(ConfigError, match=match):
        nest_overrides(overrides, "v")


def test_merge_keeps_unset_keys_switches_steps_and_epochs_and_replaces_methods():
    base = {"targets": ["x"], "methods": {"lt-sft": None, "deft-x": {"energy": 0.9}},
            "task_sft": {"k": 0.05, "full": {"epochs": 3, "learning_rate": 3e-5}},
            "language_sft": {"full": {"steps": 100, "l1": 0.1}}}
    merged = merge_overrides(base, {"task_sft.full.steps": 40, "language_sft.full.epochs": 2,
                                    "methods": {"deft-x": {"rank": 1}}})
    assert merged["task_sft"] == {"k": 0.05, "full": {"steps": 40, "learning_rate": 3e-5}}
    assert merged["language_sft"]["full"] == {"epochs": 2, "l1": 0.1}
    assert merged["methods"] == {"deft-x": {"rank": 1}}
    assert base["task_sft"]["full"] == {"epochs": 3, "learning_rate": 3e-5}, "the base is not modified"


def ablation_raw(tmp_path, base, variants, **extra) -> dict:
    return {"name": "tiny", "base": base, "variants": variants, "output_dir": str(tmp_path / "runs"),
            "results_dir": str(tmp_path / "results"), **extra}


BASE = {"targets": ["madurese"], "methods": {"lt-sft": None}}


def test_base_overrides_act_like_the_same_override_in_every_variant(tmp_path):
    staged = parse_ablation(ablation_raw(tmp_path, BASE, {"a": {}, "b": {"language_sft.k": 0.01}},
                                         base_overrides={"task_sft.sparse.learning_rate": 3e-4}))
    spelled = parse_ablation(ablation_raw(tmp_path, BASE, {
        "a": {"task_sft.sparse.learning_rate": 3e-4},
        "b": {"task_sft": {"sparse": {"learning_rate": 3e-4}}, "language_sft.k": 0.01}}))
    assert staged.hashes == spelled.hashes
    assert staged.variants["b"].task_sft.sparse.learning_rate == 3e-4
    assert staged.variants["b"].task_sft.sparse.epochs == spelled.variants["b"].task_sft.sparse.epochs
    plain = parse_ablation(ablation_raw(tmp_path, BASE, {"a": {}}))
    assert plain.hashes["a"] != staged.hashes["a"]
    with pytest.raises(ConfigError, match=r"task_sft: unknown keys \['nope'\]"):
        parse_ablation(ablation_raw(tmp_path, BASE, {"a": {}}, base_overrides={"task_sft.nope": 1}))
    with pytest.raises(ConfigError, match="base_overrides"):
        parse_ablation(ablation_raw(tmp_path, BASE, {"a": {}}, base_overrides=[1]))


def test_variants_are_forced_onto_valid_with_train_text(tmp_path):
    ablation = parse_ablation(ablation_raw(tmp_path, BASE, {"a": {}, "b": {"language_sft.k": 0.01}}))
    assert ablation.seeds == (0, 1, 2) and list(ablation.variants) == ["a", "b"]
    for name, config in ablation.variants.items():
        assert config.eval_split == "valid" and config.language_text_splits == ("train",)
        assert Path(config.output_dir).parent == tmp_path / "runs" / "variants"
        assert Path(config.output_dir).name == f"{name}-{ablation.hashes[name][:8]}"
    assert ablation.variants["b"].language_sft.k == 0.01 and ablation.variants["a"].language_sft.k == 0.028
    assert ablation.hashes["a"] != ablation.hashes["b"]
    same = parse_ablation(ablation_raw(tmp_path, BASE, {"a": {}, "c": {"training.save_steps": 7}}, seeds=[4]))
    assert same.hashes["a"] == same.hashes["c"] == ablation.hashes["a"], "paths, seeds, intervals are not in the hash"


@pytest.mark.parametrize("variant, match", [
    ({"language_sft.fulll.l1": 0}, r"variant 'bad'.*unknown keys \['fulll'\]"),
    ({"trainng": {}}, r"variant 'bad'.*unknown keys \['trainng'\]"),
    ({"language_sft.k": 2.5}, "variant 'bad'.*language_sft.k"),
    ({"eval_split": "test"}, "variant 'bad': eval_split 'test' refused"),
    ({"language_text_splits": ["train", "valid"]}, "variant 'bad'.*valid sentences' text"),
    ({"seeds": [1]}, "variant 'bad'.*set by the ablation"),
    ({"output_dir": "x"}, "variant 'bad'.*set by the ablation"),
    ({"step_store": "x"}, "variant 'bad'.*set by the ablation"),
    ({"americasnli": {"train_languages": ["aym"], "test_languages": ["bzd"]}}, "variant 'bad'.*NusaX valid"),
])
def test_bad_variants_name_themselves_and_the_key(tmp_path, variant, match):
    with pytest.raises(ConfigError, match=match):
        parse_ablation(ablation_raw(tmp_path, BASE, {"good": {}, "bad": variant}))


@pytest.mark.parametrize("raw, match", [
    ({"variants": {"a": {}}, "output_dir": "x"}, "'base' is required"),
    ({"base": BASE, "output_dir": "x"}, "'variants' is required"),
    ({"base": BASE, "variants": {}, "output_dir": "x"}, "at least one variant"),
    ({"base": BASE, "variants": {"a": {}}, "output_dir": "x", "seeds": [0, 0]}, "seeds"),
    ({"base": BASE, "variants": {"a": {}}, "output_dir": "x", "language_sft": {}}, "unknown keys"),
    ({"base": BASE, "variants": {"a/b": {}}, "output_dir": "x"}, "plain folder name"),
    ({"base": 3, "variants": {"a": {}}, "output_dir": "x"}, "'base' must be"),
    ({"base": {**BASE, "step_store": "s"}, "variants": {"a": {}}, "output_dir": "x"}, "drop step_store"),
])
def test_bad_ablation_configs(raw, match):
    with pytest.raises(ConfigError, match=match):
        parse_ablation(raw)


def test_a_base_asking_for_test_is_refused_for_every_variant(tmp_path):
    with pytest.raises(ConfigError, match="eval_split 'test' refused"):
        parse_ablation(ablation_raw(tmp_path, {**BASE, "eval_split": "test"}, {"a": {}}))


def test_base_path_is_found_beside_the_ablation_file(tmp_path):
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({**BASE, "seeds": [7], "output_dir": "elsewhere"}))
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(ablation_raw(tmp_path, "base.yaml", {"a": {}}, seeds=[1])))
    ablation = load_ablation(path, seeds=[2, 3], data_dir=str(tmp_path))
    assert ablation.seeds == (2, 3) and ablation.variants["a"].data_dir == str(tmp_path)
    assert ablation.variants["a"].targets == ("madurese",)


def test_command_line_data_dir_and_device_win_over_base_overrides_and_variants(tmp_path):
    """--data-dir and --device set every variant's, also where base_overrides or a variant set their own."""
    path = tmp_path / "ablation.yaml"
    path.write_text(yaml.safe_dump(ablation_raw(
        tmp_path, BASE, {"a": {}, "b": {"data_dir": "/data/variant", "device": "auto"}},
        base_overrides={"data_dir": "/data/stage-1", "device": "cuda"})))
    ablation = load_ablation(path, data_dir=str(tmp_path / "data"), device="cpu")
    assert {(c.data_dir, c.device) for c in ablation.variants.values()} == {(str(tmp_path / "data"), "cpu")}
    assert ablation.hashes["a"] == ablation.hashes["b"]
    as_written = load_ablation(path)
    assert [(c.data_dir, c.device) for c in as_written.variants.values()] == [("/data/stage-1", "cuda"),
                                                                              ("/data/variant", "auto")]


def test_shipped_ablation_configs_parse_and_stage_2_starts_from_stage_1s_winner():
    stage1 = load_ablation(REPO / "configs" / "ablation-nusax-e5-small.yaml")
    stage2 = load_ablation(REPO / "configs" / "ablation-nusax-e5-small-language.yaml")
    assert stage1.seeds == stage2.seeds == (0, 1, 2) and stage1.output_dir == stage2.output_dir
    assert stage1.results_dir != stage2.results_dir
    reference = stage1.variants["reference"]
    assert reference.eval_split == "valid" and reference.language_text_splits == ("train",)
    assert reference.language_sft.full.l1 == 0.1 and len(reference.language_scales()) > 1
    assert reference.mlm_head.texts == ("nusax", "americasnlp") and reference.mlm_head.eval_sequences > 0
    assert stage1.variants["task-off-source-sft"].task_on_source_sft is False
    winner = stage2.variants["reference"]
    assert winner.task_sft == stage1.variants["task-sparse-lr-1e-4"].task_sft
    assert winner.full_finetune == stage1.variants["full-ft-lr-1e-4"].full_finetune
    variants = stage2.variants
    assert variants["l1-0"].language_sft.full.l1 == variants["l1-0"].language_sft.sparse.l1 == 0.0
    assert variants["word-embeddings-in"].language_sft.eligible[0] == "word_embeddings"
    assert variants["seq-64"].language_sft.max_length == 64
    assert variants["head-nusax-1000"].mlm_head.texts == ("nusax",)
    signature = {name: language_phase1_signature(config) for name, config in variants.items()}
    assert signature["k-1pct"] == signature["reference"] == language_phase1_signature(reference)
    for name in ("l1-0", "lr-2e-5", "lr-1e-4", "steps-50", "steps-200", "word-embeddings-in", "seq-64"):
        assert signature[name] != signature["reference"], name
    paired = variants["head-nusax-1000-deft-x"]
    assert set(paired.methods) == {"lt-sft", "deft-x"} and set(variants["head-nusax-1000"].methods) == {"lt-sft"}
    assert signature["head-nusax-1000-deft-x"] == signature["head-nusax-1000"] != signature["reference"]


def test_final_config_is_stage_1s_winner_on_test_and_links_the_ablations_steps():
    from deftx.pipeline.config import load_config

    stage1 = load_ablation(REPO / "configs" / "ablation-nusax-e5-small.yaml")
    final = load_config(REPO / "configs" / "nusax-e5-small-final.yaml")
    assert final.eval_split == "test" and final.seeds == (0, 1, 2) and len(final.targets) == 7
    assert Path(final.step_store) == stage1.output_dir / "shared"
    task_winner, bar = stage1.variants["task-sparse-lr-1e-4"], stage1.variants["full-ft-lr-1e-4"]
    for key in PHASE_1_SETTINGS:
        assert getattr(final, key) == getattr(task_winner, key), f"{key}: the ablation's steps would not be reused"
    assert final.task_sft == task_winner.task_sft and final.full_finetune == bar.full_finetune
    assert final.language_scale in task_winner.language_scales()
    assert set(final.methods) == {"lt-sft", "deft-x"} and final.methods["lt-sft"] is None


def test_denoise_ablation_branches_from_the_final_tables_steps():
    """DeFT-X's denoising ablation adds branches to the final table's phase 1 (same settings,
    so its seeds link the final run's steps) and changes nothing but the methods."""
    from deftx.pipeline.config import load_config
    from deftx.train.config import DenoiseConfig

    stage1 = load_ablation(REPO / "configs" / "ablation-nusax-e5-small.yaml")
    denoise = load_ablation(REPO / "configs" / "ablation-nusax-e5-small-denoise.yaml")
    final = load_config(REPO / "configs" / "nusax-e5-small-final.yaml")
    assert denoise.output_dir == stage1.output_dir and set(denoise.seeds) <= set(range(3, 8))
    (variant,) = denoise.variants.values()
    assert variant.eval_split == "valid" and final.language_scale in variant.language_scales()
    for key in (*PHASE_1_SETTINGS, "task_sft", "full_finetune"):
        assert getattr(variant, key) == getattr(final, key), f"{key}: the final table's steps would not be linked"
    assert {name: variant.methods[name] for name in final.methods} == final.methods
    assert variant.methods["deft-x-e50"] == DenoiseConfig(energy=0.5)
    assert variant.methods["deft-x-r8"] == DenoiseConfig(rank=8)


def test_linked_store_hard_links_both_ways(tmp_path):
    store = LinkedStepStore(tmp_path / "store")
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    (run_a / "branch").mkdir(parents=True)
    (run_a / "theta1.safetensors").write_bytes(b"theta1")
    (run_a / "branch" / "sft.safetensors").write_bytes(b"sft")
    identity, files = {"step": "phase 1", "x": 1}, ["theta1.safetensors", "branch/sft.safetensors"]
    assert not store.attach(run_b, identity, files)
    store.publish(run_a, identity, files)
    store.publish(run_a, identity, files)
    assert store.published == {"phase 1": 1}
    assert store.attach(run_b, identity, files) and store.attached == {"phase 1": 1}
    for name in files:
        assert os.stat(run_b / name).st_ino == os.stat(run_a / name).st_ino, "linked, not copied"
    assert not store.attach(tmp_path / "c", {"step": "phase 1", "x": 2}, files), "another identity"
    replacement = run_a / "theta1.safetensors.tmp"
    replacement.write_bytes(b"new")
    os.replace(replacement, run_a / "theta1.safetensors")  # how deftx writes: a new inode
    assert (run_b / "theta1.safetensors").read_bytes() == b"theta1"
    with pytest.raises(ValueError, match="distinct names"):
        store.publish(run_a, identity, ["x/sft.safetensors", "y/sft.safetensors"])


def test_a_step_attached_from_the_store_has_every_file_from_the_store(tmp_path):
    """A run stopped between a branch's files (its selection report written, no SFT yet) takes the whole
    step from the store: not its own report beside another run's SFT (on a GPU two runs' equal steps need
    not be bit-identical)."""
    store = LinkedStepStore(tmp_path / "store")
    run_a, run_b = tmp_path / "a", tmp_path / "b"
    (run_a / "branch").mkdir(parents=True)
    (run_a / "branch" / "selection.json").write_text("a's selection")
    (run_a / "branch" / "sft.safetensors").write_bytes(b"a's sft")
    identity, files = {"step": "branch", "k": 1}, ["branch/selection.json", "branch/sft.safetensors"]
    store.publish(run_a, identity, files)
    (run_b / "branch").mkdir(parents=True)
    (run_b / "branch" / "selection.json").write_text("b's selection")
    assert store.attach(run_b, identity, files)
    assert [(run_b / name).read_bytes() for name in files] == [b"a's selection", b"a's sft"]
    assert not list((run_b / "branch").glob(".*")), "no temporary left in the run"


def test_a_store_on_another_file_system_keeps_its_own_copies(tmp_path, monkeypatch):
    """No hard link possible: the store copies what a run publishes (a symbolic link into the run would
    follow the run's path: to another step's result written there, or to nothing once the run deletes it)."""
    def cross_device(source, target):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", cross_device)
    store = LinkedStepStore(tmp_path / "store")
    run_a, run_b, run_c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    run_a.mkdir()
    (run_a / "sft.safetensors").write_bytes(b"step 1")
    identity, files = {"step": "branch", "k": 1}, ["sft.safetensors"]
    store.publish(run_a, identity, files)
    replacement = run_a / "sft.safetensors.tmp"
    replacement.write_bytes(b"step 2")
    os.replace(replacement, run_a / "sft.safetensors")  # run a trains another step in its folder (--overwrite)
    assert store.attach(run_b, identity, files)
    assert (run_b / "sft.safetensors").read_bytes() == b"step 1"
    (run_a / "sft.safetensors").unlink()
    assert store.attach(run_c, identity, files) and (run_c / "sft.safetensors").read_bytes() == b"step 1"
    assert not list(store.folder(identity).glob(".*")), "no temporary left in the store"


def test_step_identities_follow_what_each_step_depends_on(tmp_path, tiny_model_dir):
    """The identities the tuners record (and the store keys on), built exactly as the pipeline builds its runs."""
    from transformers import AutoTokenizer

    from deftx.models.mlm import build_mlm_model, save_head

    variants = {
        "reference": {}, "k": {"language_sft.k": 0.005}, "sparse-lr": {"language_sft.sparse.learning_rate": 1e-4},
        "scale": {"language_scale": [0.5, 2.0]}, "task-off": {"task_on_source_sft": False},
        "l1": {"language_sft.full.l1": 0.0}, "window": {"language_sft.max_length": 16},
        "eligible": {"language_sft.eligible": ["attention"]}, "task-lr": {"task_sft.full.learning_rate": 1e-4},
        "logging": {"training.logging_steps": 7},
    }
    ablation = parse_ablation(ablation_raw(tmp_path, {**BASE, "model": str(tiny_model_dir)}, variants))
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    heads = [tmp_path / f"head-{seed}.safetensors" for seed in (1, 2)]
    for seed, head in zip((1, 2), heads, strict=True):
        save_head(build_mlm_model(tiny_model_dir, seed=seed), head)
    texts = [" ".join(["satu dua tiga empat lima enam tujuh delapan sembilan sepuluh"] * 3), "empat lima"]
    examples = [{"input_ids": [0, 5, 2], "attention_mask": [1, 1, 1], "labels": 1}]
    lang, task = {}, {}

    def workspace(config):
        return Workspace(config, tiny_model_dir, tmp_path, tmp_path, tmp_path, tokenizer=tokenizer)

    def language(ws, seed=0, text=texts, head=heads[0]):
        return language_tuner(ws, text, seed, head, tmp_path / "w").identity()

    def task_identity(ws, methods):
        return task_tuner(ws, examples, 0, 3, methods, None, tmp_path / "t").identity()

    for name, config in ablation.variants.items():
        ws = workspace(config)
        lang[name], task[name] = language(ws), task_identity(ws, config.methods)
        if name == "reference":
            others = [language(ws, seed=1), language(ws, text=texts[:1]), language(ws, head=heads[1])]

    def phase1(name):
        return digest(lang[name].phase1)

    def branch(name):
        return lang[name].branches["lt-sft"]

    for name in ("k", "sparse-lr", "scale", "task-off", "task-lr", "logging"):
        assert phase1(name) == phase1("reference"), name
    for name in ("scale", "task-off", "task-lr", "logging"):
        assert branch(name) == branch("reference"), name
    for name in ("k", "sparse-lr"):
        assert branch(name) != branch("reference") and branch(name)["phase1"] == branch("reference")["phase1"], name
    for name in ("l1", "window", "eligible"):
        assert phase1(name) != phase1("reference"), name
    for other in others:
        assert digest(other.phase1) != phase1("reference")
    for name in ("l1", "window", "eligible", "k", "scale"):
        assert task[name] == task["reference"], "without the source SFT underneath, task phase 1 is shared"
    assert task["task-lr"].phase1 != task["reference"].phase1
    for name, config in ablation.variants.items():
        assert (language_phase1_signature(config) == language_phase1_signature(ablation.variants["reference"])) == (
            phase1(name) == phase1("reference")), f"the plan's signature disagrees with the run's identity: {name}"
    denoised = task_identity(workspace(ablation.variants["reference"]), {"deft-x": DenoiseConfig(rank=1)})
    assert denoised.branches["deft-x"]["selection"]["rank"] == 1


TINY_BASE = {
    "sources": ["indonesian"], "targets": ["madurese"], "methods": {"lt-sft": None}, "baseline": True,
    "language_scale": [0.5, 1.0],
    "training": {"batch_size": 8, "max_length": 32, "save_steps": 50, "logging_steps": 1, "progress": False},
    "mlm_head": {"steps": 2, "batch_size": 8, "seq_len": 32},
    "language_sft": {"k": 0.01, "full": {"steps": 2}, "sparse": {"steps": 2}},
    "task_sft": {"k": 0.05, "full": {"steps": 2}, "sparse": {"steps": 2}},
    "full_finetune": {"steps": 2},
    "eval_batch_size": 128,
}


@pytest.fixture(scope="module")
def tiny_ablation(tmp_path_factory, tiny_model_dir):
    """2 variants sharing phase 1 (K differs) × 2 seeds; phase-1 runs recorded by their folder."""
    tmp = tmp_path_factory.mktemp("ablation")
    raw = ablation_raw(tmp, {**TINY_BASE, "model": str(tiny_model_dir)},
                       {"reference": {}, "k-half": {"language_sft.k": 0.005}}, seeds=[0, 1])
    ablation = parse_ablation(raw)
    phase1_runs: list[Path] = []
    progress: list[str] = []
    full = sparse_finetuner.run_full_finetuning

    def counting(trainer, phase, eligible, folder, checkpoint):
        phase1_runs.append(Path(folder))
        return full(trainer, phase, eligible, folder, checkpoint)

    gc.freeze()  # the Trainer runs gc.collect() after every phase: skip the objects alive now (~3x faster here)
    try:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv("DEFTX_CACHE", str(tmp / "cache"))
            patch.setattr(sparse_finetuner, "run_full_finetuning", counting)
            run_ablation(ablation, log=lambda _: None, progress=progress.append)
            first = list(phase1_runs)
            again: list[str] = []
            csv_before = (ablation.results_dir / "ablation.csv").read_bytes()
            run_ablation(ablation, log=lambda _: None, progress=again.append)
    finally:
        gc.unfreeze()
    return {"ablation": ablation, "phase1": first, "phase1_after_rerun": list(phase1_runs), "progress": progress,
            "rerun_progress": again, "csv_before_rerun": csv_before, "tmp": tmp, "counting": counting}


def run_kind(folder: Path) -> tuple[str, str, str, str]:
    """(kind, variant, seed, language) of a ``.../variants/<v>/seed-<s>/<kind>/<language>/.../phase1``."""
    parts = folder.parts
    at = parts.index("variants")
    return parts[at + 3], parts[at + 1].rsplit("-", 1)[0], parts[at + 2], parts[at + 4]


def test_phase1_runs_once_per_language_and_seed(tiny_ablation):
    runs = [run_kind(folder) for folder in tiny_ablation["phase1"]]
    lang = [(seed, language) for kind, _, seed, language in runs if kind == "lang"]
    assert sorted(lang) == sorted({(f"seed-{s}", language) for s in (0, 1) for language in ("indonesian", "madurese")})
    task = sorted((variant, seed) for kind, variant, seed, _ in runs if kind == "task")
    assert task == sorted((v, f"seed-{s}") for v in ("reference", "k-half") for s in (0, 1)), (
        "a task SFT on a different source SFT trains its own phase 1")
    assert tiny_ablation["phase1_after_rerun"] == tiny_ablation["phase1"], "a rerun trains nothing"

    ablation = tiny_ablation["ablation"]
    ref, half = (Path(ablation.variants[name].output_dir) for name in ("reference", "k-half"))
    kept = list((ablation.output_dir / "shared").glob("*/theta1.safetensors"))
    assert len(kept) == 4 + 4, "θ1 once per distinct phase 1 (2 seeds × 2 languages, 2 variants × 2 seeds of task)"
    assert not list(ref.rglob("theta*")) and not list(half.rglob("theta*")), "finished runs keep no θ"
    for seed in (0, 1):
        for language in ("indonesian", "madurese"):
            a, b = (root / f"seed-{seed}" / "lang" / language / "lt-sft" / "sft.safetensors" for root in (ref, half))
            assert os.stat(a).st_ino != os.stat(b).st_ino, "different K: a branch of its own"
        a, b = (root / f"seed-{seed}" / "full" / "indonesian" / "final.safetensors" for root in (ref, half))
        assert os.stat(a).st_ino == os.stat(b).st_ino, "the baseline trains once per seed"


def test_csv_holds_one_row_per_variant_seed_source_target_method_scale(tiny_ablation):
    ablation = tiny_ablation["ablation"]
    rows = read_rows(ablation.results_dir / "ablation.csv")
    keys = {(r["variant"], r["seed"], r["target"], r["method"], r["language_scale"]) for r in rows}
    methods = (("lt-sft", 0.5), ("lt-sft", 1.0), (BASELINE, None), ("lt-sft" + NO_LANGUAGE_SFT, None))
    expected = {(v, s, t, m, scale) for v in ("reference", "k-half") for s in (0, 1)
                for t in ("madurese", "indonesian") for m, scale in methods}
    assert len(rows) == len(keys) == len(expected) == 32 and keys == expected
    assert {r["split"] for r in rows} == {"valid"} and {r["source"] for r in rows} == {"indonesian"}
    assert all(r["variant_hash"] == ablation.hashes[r["variant"]] for r in rows)
    assert all(int(r["examples"]) == 100 for r in rows), "NusaX valid has 100 rows per language"
    assert all(0.0 <= r["macro_f1"] <= 1.0 and 0.0 <= r["accuracy"] <= 1.0 for r in rows)
    baseline = {(r["seed"], r["target"]): r["macro_f1"] for r in rows if r["method"] == BASELINE
                and r["variant"] == "reference"}
    assert baseline == {(r["seed"], r["target"]): r["macro_f1"] for r in rows if r["method"] == BASELINE
                        and r["variant"] == "k-half"}, "the shared baseline scores the same"
    lines = tiny_ablation["progress"]
    assert len(lines) == 4 and all("valid macro-F1" in line for line in lines)
    assert lines[0].startswith("[ablate 1/4] reference seed 0") and lines[1].startswith("[ablate 2/4] k-half seed 0")
    assert "shared steps reused 0" in lines[0] and "shared steps reused 0" not in lines[1]


def test_rerun_adds_nothing_and_a_lost_row_block_comes_back(tiny_ablation):
    ablation = tiny_ablation["ablation"]
    path = ablation.results_dir / "ablation.csv"
    assert path.read_bytes() == tiny_ablation["csv_before_rerun"]
    assert all("skipped" in line for line in tiny_ablation["rerun_progress"])
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    kept = [r for r in rows if not (r["variant"] == "k-half" and r["seed"] == "1")]
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    before = len(tiny_ablation["phase1_after_rerun"])
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("DEFTX_CACHE", str(tiny_ablation["tmp"] / "cache"))
        patch.setattr(sparse_finetuner, "run_full_finetuning", tiny_ablation["counting"])
        progress: list[str] = []
        run_ablation(ablation, log=lambda _: None, progress=progress.append, only=["k-half"])
    assert sum("skipped" in line for line in progress) == 1 and len(progress) == 2
    assert len(tiny_ablation["phase1_after_rerun"]) == before
    with path.open(newline="") as handle:
        again = list(csv.DictReader(handle))
    assert sorted(map(sorted, (r.items() for r in again))) == sorted(map(sorted, (r.items() for r in rows))), (
        "the same SFTs, re-evaluated, give the same rows")


def test_summary_files(tiny_ablation):
    out = tiny_ablation["ablation"].results_dir
    summary = list(csv.DictReader((out / "summary.csv").open()))
    avg = [r for r in summary if r["target"] == "avg"]
    assert {(r["variant"], r["method"], r["language_scale"]) for r in avg} == {
        (v, m, s) for v in ("reference", "k-half")
        for m, s in (("lt-sft", "0.5"), ("lt-sft", "1.0"), (BASELINE, ""), ("lt-sft" + NO_LANGUAGE_SFT, ""))}
    assert all(r["seeds"] == "2" for r in summary)
    text = (out / "results.md").read_text()
    assert "**valid** splits only" in text
    assert "| variant | full-ft | lt-sft ×0.5 | lt-sft ×1 | lt-sft (no lang SFT) |" in text
    assert "| reference |" in text and "| k-half |" in text and "MLM head warm-up" in text
    assert "×100 per seed, mean over targets" in text and "| k-half | lt-sft ×0.5 |" in text
    assert "Versions: deftx " in text and "(this invocation's; `invocations.jsonl` keeps each one's)" in text
    assert (out / "results.png").read_bytes()[:4] == b"\x89PNG"
    assert (out / "timings.jsonl").is_file() and (out / "mlm_head.json").is_file()
    ledger = [json.loads(line) for line in (out / "invocations.jsonl").read_text().splitlines()]
    assert ledger and all(record["seconds"] > 0 for record in ledger)
    assert text.count(" min, finished ") == len(ledger) and "(this invocation)" not in text


def test_seeds_sentence_names_the_seeds_of_the_rows_not_only_this_invocations():
    rows = [{"seed": 2}, {"seed": "0"}, {"seed": 1}, {"seed": 2}]
    assert seeds_sentence(rows, [0, 1, 2]) == "Seeds: [0, 1, 2]."
    assert seeds_sentence(rows, [2]) == "Seeds in the tables: [0, 1, 2] (this invocation ran [2])."


def test_seed_table_holds_each_seeds_mean_over_targets_without_the_source():
    def row(variant, seed, method, target, f1):
        return {"variant": variant, "seed": seed, "source": "indonesian", "method": method,
                "language_scale": None if method == "full-ft" else 1.0, "target": target,
                "macro_f1": f1, "accuracy": 0.0}

    rows = [row("a", 0, "lt-sft", "madurese", 0.5), row("a", 0, "lt-sft", "minangkabau", 0.7),
            row("a", 1, "lt-sft", "madurese", 0.6), row("a", 1, "lt-sft", "minangkabau", 0.8),
            row("a", 0, "lt-sft", "indonesian", 0.9), row("a", 1, "full-ft", "madurese", 0.25),
            row("b", 0, "lt-sft", "madurese", 0.125)]
    table = seed_tables(rows, ["indonesian"], ["a", "b"], "macro_f1").splitlines()
    assert table[2:] == [
        "| variant | method | seed 0 | seed 1 |",
        "|---|---|---:|---:|",
        "| a | lt-sft | 60.0 | 70.0 |",
        "| a | full-ft | — | 25.0 (1 of 2 targets) |",
        "| b | lt-sft | 12.5 (1 of 2 targets) | — |",
    ]


def test_invocation_lines_list_finished_runs_then_this_one(tmp_path):
    ledger = tmp_path / "invocations.jsonl"
    assert invocation_lines(ledger, "deftx ablate a.yaml", 30.0) == [
        "- `deftx ablate a.yaml`: 0.5 min so far (this invocation)"]
    ledger.write_text(json.dumps({"command": "deftx ablate a.yaml --seeds 0", "seconds": 750.0,
                                  "finished": "2026-11-25T11:49:00Z"}) + "\n"
                      + json.dumps({"command": None, "seconds": 6.0, "finished": "2026-11-25T12:00:00Z"}) + "\n")
    assert invocation_lines(ledger, None, 90.0) == [
        "- `deftx ablate a.yaml --seeds 0`: 12.5 min, finished 2026-11-25T11:49:00Z",
        "- `(not recorded)`: 0.1 min, finished 2026-11-25T12:00:00Z",
        "- `(not recorded)`: 1.5 min so far (this invocation)",
    ]
    assert invocation_lines(ledger, None, 90.0, finished=True) == [
        "- `deftx ablate a.yaml --seeds 0`: 12.5 min, finished 2026-11-25T11:49:00Z",
        "- `(not recorded)`: 0.1 min, finished 2026-11-25T12:00:00Z",
    ]


def test_invocation_lines_say_which_versions_changed_since_the_invocation_before(tmp_path):
    ledger = tmp_path / "invocations.jsonl"
    old = {"torch": "2.13.0+cpu", "transformers": "5.17.0", "threads": "2"}
    append_invocation(ledger, "deftx ablate a.yaml --seeds 0", 60.0)
    append_invocation(ledger, "deftx ablate a.yaml --seeds 1", 60.0, old)
    append_invocation(ledger, "deftx ablate a.yaml --seeds 2", 60.0, old)
    newer = {**old, "transformers": "5.25.0", "numpy": "2.4.6"}
    append_invocation(ledger, "deftx ablate a.yaml --seeds 3", 60.0, newer)
    assert json.loads(ledger.read_text().splitlines()[1])["environment"] == old
    lines = invocation_lines(ledger, None, 0.0, finished=True)
    assert [line.split("; ", 1)[1] if "; " in line else "" for line in lines] == [
        "", "", "", "versions changed since the one before: transformers 5.17.0 -> 5.25.0, numpy ? -> 2.4.6"]


def test_head_reports_outlive_an_invocation_that_loads_no_head(tmp_path):
    recorded = [{"key": "a", "steps": 3000, "cache_hit": False}, {"key": "b", "steps": 1000, "cache_hit": False}]
    (tmp_path / "mlm_head.json").write_text(json.dumps(recorded))
    nothing_loaded = SimpleNamespace(ablation=SimpleNamespace(results_dir=tmp_path), head_metrics={})
    assert recorded_head_metrics(nothing_loaded) == recorded
    b_again = {"key": "b", "steps": 1000, "cache_hit": True}
    c_new = {"key": "c", "steps": 10, "cache_hit": False}
    loaded = SimpleNamespace(ablation=SimpleNamespace(results_dir=tmp_path), head_metrics={"x": b_again, "y": c_new})
    assert recorded_head_metrics(loaded) == [recorded[0], b_again, c_new]
    assert recorded_head_metrics(SimpleNamespace(ablation=SimpleNamespace(results_dir=tmp_path / "new"),
                                                 head_metrics={"y": c_new})) == [c_new]


def test_a_head_report_write_that_stops_leaves_mlm_head_json_as_it_was(tmp_path, monkeypatch):
    """mlm_head.json was rewritten in place: a write stopped halfway (Ctrl-C, a full disk) left half a JSON
    document, and every later invocation failed reading it (JSONDecodeError) until it was deleted by hand."""
    from deftx.pipeline.ablation import record_head_metrics

    recorded = [{"key": "a", "steps": 3000, "cache_hit": False, "curve": list(range(200))}]
    (tmp_path / "mlm_head.json").write_text(json.dumps(recorded))
    run = SimpleNamespace(ablation=SimpleNamespace(results_dir=tmp_path),
                          head_metrics={"x": {"key": "b", "steps": 10, "cache_hit": False}})

    def stopped_halfway(write):
        def half(path, data, *args, **kwargs):
            write(path, data[: len(data) // 2], *args, **kwargs)
            raise KeyboardInterrupt

        return half

    with monkeypatch.context() as patch:
        patch.setattr(Path, "write_text", stopped_halfway(Path.write_text))
        patch.setattr(Path, "write_bytes", stopped_halfway(Path.write_bytes))
        with pytest.raises(KeyboardInterrupt):
            record_head_metrics(run)
    assert json.loads((tmp_path / "mlm_head.json").read_text()) == recorded
    assert record_head_metrics(run) == [*recorded, run.head_metrics["x"]]
    assert json.loads((tmp_path / "mlm_head.json").read_text()) == [*recorded, run.head_metrics["x"]]


def test_changed_variant_rows_are_refused_naming_the_change(tiny_ablation, tmp_path):
    ablation = tiny_ablation["ablation"]
    raw = ablation_raw(tmp_path, {**TINY_BASE, "model": str(Path(ablation.variants["reference"].model))},
                       {"reference": {"language_sft.k": 0.02}}, seeds=[0])
    changed = parse_ablation({**raw, "results_dir": str(ablation.results_dir),
                              "output_dir": str(ablation.output_dir)})
    with pytest.raises(ConfigError, match=r"variants \['reference'\] changed .*\(reference: language_sft\.k: 0\.01 "
                                          r"-> 0\.02\): .*--overwrite"):
        run_ablation(changed, log=lambda _: None, progress=lambda _: None)
    record = variant_folder(ablation.output_dir, "reference", ablation.hashes["reference"]) / "identity.json"
    intact = record.read_text()
    record.write_text(intact[:40])
    try:
        with pytest.raises(ConfigError, match=r"\(reference: language_sft\.k: 0\.01 -> 0\.02\)"):
            run_ablation(changed, log=lambda _: None, progress=lambda _: None)
    finally:
        record.write_text(intact)
    with pytest.raises(ConfigError, match="unknown variants"):
        run_ablation(ablation, log=lambda _: None, progress=lambda _: None, only=["nope"])


def test_a_change_is_named_from_the_results_without_the_runs(tiny_ablation, tmp_path):
    """variants.json beside the rows records each variant's identity: on a machine without the
    runs (a fresh checkout of committed results), a changed setting is still named."""
    ablation = tiny_ablation["ablation"]
    recorded = json.loads((ablation.results_dir / "variants.json").read_text())
    assert set(recorded) == {f"{name}-{hash_}" for name, hash_ in ablation.hashes.items()}
    raw = ablation_raw(tmp_path, {**TINY_BASE, "model": str(Path(ablation.variants["reference"].model))},
                       {"reference": {"language_sft.k": 0.02}}, seeds=[0])
    changed = parse_ablation({**raw, "results_dir": str(ablation.results_dir),
                              "output_dir": str(tmp_path / "no-runs-here")})
    with pytest.raises(ConfigError, match=r"\(reference: language_sft\.k: 0\.01 -> 0\.02\)"):
        run_ablation(changed, log=lambda _: None, progress=lambda _: None)
    (ablation.results_dir / "variants.json").rename(tmp_path / "aside.json")
    try:
        with pytest.raises(ConfigError, match=r"\(reference: settings hash \w+ -> \w+\)"):
            run_ablation(changed, log=lambda _: None, progress=lambda _: None)
    finally:
        (tmp_path / "aside.json").rename(ablation.results_dir / "variants.json")


STALE_HASH = "0123456789ab"
"""The settings hash of rows written under settings a variant no longer has (stale rows)."""


def hand_row(variant: str, hash_: str, seed: int, macro_f1: float) -> dict:
    """One ablation.csv row, as a run writes it, of ``variant`` under settings hash ``hash_``."""
    return {"variant": variant, "variant_hash": hash_, "seed": seed, "source": "indonesian", "target": "madurese",
            "method": "lt-sft", "language_scale": None, "macro_f1": macro_f1, "accuracy": macro_f1}


def test_only_the_variants_a_run_runs_have_their_stale_rows_refused_or_dropped(tmp_path):
    """A run of some variants (--variants) checks, and with --overwrite drops, only their rows: the stale rows
    of the others are named and kept, not refused (the whole run) or dropped without being run again."""
    from deftx.eval.report import read_csv
    from deftx.pipeline.ablation import (
        HELDOUT_ROW_FIELDS,
        append_rows,
        check_rows_match,
        drop_stale_rows,
        stale_rows_line,
    )

    ablation = parse_ablation(ablation_raw(tmp_path, BASE, {"a": {}, "b": {"language_sft.k": 0.02},
                                                            "c": {"language_sft.k": 0.03}}))
    rows = [hand_row("a", ablation.hashes["a"], 0, 0.5), hand_row("b", ablation.hashes["b"], 0, 0.4),
            hand_row("b", STALE_HASH, 1, 0.9), hand_row("c", STALE_HASH, 0, 0.3)]
    check_rows_match(rows, ablation, ["a"])
    with pytest.raises(ConfigError, match=rf"variants \['b'\] changed .*\(b: settings hash {STALE_HASH} -> \w+\)"):
        check_rows_match(rows, ablation, ["a", "b"])
    with pytest.raises(ConfigError, match=r"variants \['b', 'c'\] changed .*--overwrite to drop their old rows"):
        check_rows_match(rows, ablation, list(ablation.variants))
    line = stale_rows_line(rows, ablation)
    assert line is not None and "\n" not in line
    assert line.startswith("ablation.csv: rows of variants ['b', 'c'] were written under other settings (b: ")
    assert line.endswith("left as they are and out of the tables; run them with --variants b c --overwrite to "
                         "replace them")
    assert stale_rows_line(rows[:2], ablation) is None
    path = tmp_path / "ablation.csv"
    append_rows(path, rows)
    kept = drop_stale_rows(path, ablation, ["a", "b"])
    assert [(r["variant"], r["variant_hash"]) for r in kept] == [(r["variant"], r["variant_hash"])
                                                                  for r in read_rows(path)] == [
        ("a", ablation.hashes["a"]), ("b", ablation.hashes["b"]), ("c", STALE_HASH)]
    assert [r["variant"] for r in drop_stale_rows(path, ablation, list(ablation.variants))] == ["a", "b"]
    heldout = tmp_path / "heldout.csv"
    append_rows(heldout, [{**row, "language": "madurese", "method": "θ0", "scale": 0.0} for row in rows],
                HELDOUT_ROW_FIELDS)
    assert [r["variant"] for r in drop_stale_rows(heldout, ablation, ["c"], HELDOUT_ROW_FIELDS)] == ["a", "b", "b"]
    assert [r["variant_hash"] for r in read_csv(heldout)][-1] == STALE_HASH


def test_a_run_of_other_variants_names_stale_rows_and_leaves_them_as_they_are(tmp_path):
    """With --variants a, variant b's stale rows neither refuse the run nor are dropped by --overwrite (nothing
    runs b again); the run says so in one line. Without --variants the run refuses them, naming b."""
    from deftx.pipeline.ablation import append_rows

    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"max_position_embeddings": 512}))
    raw = ablation_raw(tmp_path, {**BASE, "model": str(model), "device": "cpu"},
                       {"a": {}, "b": {"language_sft.k": 0.02}}, seeds=[0])
    ablation = parse_ablation(raw)
    path = ablation.results_dir / "ablation.csv"
    append_rows(path, [hand_row("a", ablation.hashes["a"], 0, 0.5), hand_row("b", STALE_HASH, 0, 0.4)])
    said: list[str] = []
    run_ablation(ablation, log=lambda _: None, progress=said.append, only=["a"], overwrite=True, heldout=False)
    assert [line for line in said if "were written under other settings" in line] == [
        f"ablation.csv: rows of variants ['b'] were written under other settings (b: settings hash {STALE_HASH} -> "
        f"{ablation.hashes['b']}): left as they are and out of the tables; run them with --variants b --overwrite "
        "to replace them"]
    assert [(r["variant"], r["variant_hash"]) for r in read_rows(path)] == [("a", ablation.hashes["a"]),
                                                                            ("b", STALE_HASH)]
    with pytest.raises(ConfigError, match=rf"variants \['b'\] changed .*settings hash {STALE_HASH}"):
        run_ablation(ablation, log=lambda _: None, progress=lambda _: None, heldout=False)


def test_the_tables_leave_out_a_variants_stale_rows_and_say_so(tmp_path):
    """A variant's stale rows (seed 1, under an older rule) are not averaged with its fresh ones (seed 0):
    summary.csv and results.md hold the fresh rows alone, and results.md names the stale ones."""
    from deftx.eval.report import read_csv
    from deftx.pipeline.ablation import AblationRun, append_rows, write_summary

    ablation = parse_ablation(ablation_raw(tmp_path, BASE, {"a": {}, "b": {"language_sft.k": 0.02}}))
    append_rows(ablation.results_dir / "ablation.csv", [
        hand_row("a", ablation.hashes["a"], 0, 0.5), hand_row("b", ablation.hashes["b"], 0, 0.4),
        hand_row("b", STALE_HASH, 1, 0.9)])
    write_summary(AblationRun(ablation, LinkedStepStore(tmp_path / "store"), environment={}), 0.0, None,
                  plot=False)
    averages = {r["variant"]: r for r in read_csv(ablation.results_dir / "summary.csv") if r["target"] == "avg"}
    assert {name: (float(r["macro_f1_mean"]), r["seeds"]) for name, r in averages.items()} == {
        "a": (0.5, "1"), "b": (0.4, "1")}
    results = (ablation.results_dir / "results.md").read_text()
    assert "| b | 40.0 (1) |" in results and "90.0" not in results
    assert "ablation.csv: rows of variants ['b'] were written under other settings" in results
    assert "Seeds in the tables: [0] (" in results


class Stopped(BaseException):
    """A stop (Ctrl-C, a kill) while rows are written."""


class StopsWhenRead(dict):
    def get(self, *args):
        raise Stopped


def test_rows_stopped_while_written_leave_the_file_as_it_was(tmp_path, monkeypatch):
    """A source's rows are appended whole or not at all: some of them would mark the source finished, and
    the next run would skip its missing rows; dropping stale rows, stopped, keeps every row."""
    from deftx.pipeline.ablation import append_rows, drop_stale_rows

    ablation = parse_ablation(ablation_raw(tmp_path, BASE, {"a": {}, "b": {"language_sft.k": 0.02}}))
    rows = [{"variant": name, "variant_hash": ablation.hashes[name] if name == "a" else "0123456789ab", "seed": 0,
             "source": "indonesian", "target": f"t{number}", "method": "lt-sft", "macro_f1": 0.5, "accuracy": 0.5,
             "language_scale": None} for name in ("a", "b") for number in range(300)]
    path = tmp_path / "ablation.csv"
    append_rows(path, rows[:1])
    before = path.read_bytes()
    with pytest.raises(Stopped):
        append_rows(path, [*rows[1:], StopsWhenRead(rows[0])])
    assert path.read_bytes() == before
    assert not list(tmp_path.glob(".ablation.csv*")), "no temporary left"
    append_rows(path, rows[1:])
    before = path.read_bytes()
    monkeypatch.setattr(csv.DictWriter, "writerows", lambda self, rows: (self.writerow(next(iter(rows))), [][0]))
    with pytest.raises(IndexError):
        drop_stale_rows(path, ablation, list(ablation.variants))
    assert path.read_bytes() == before and len(read_rows(path)) == 600


@pytest.mark.parametrize("config", ["configs/ablation-nusax-e5-small.yaml",
                                    "configs/ablation-nusax-e5-small-language.yaml",
                                    "configs/ablation-nusax-e5-small-denoise.yaml"])
def test_committed_rows_stay_valid_for_their_config(config):
    """Every committed row still carries its variant's current hash: a setting the identity gained
    later (the device, extra Trainer arguments) must not orphan results already on main. Only the
    rows of variants that denoise under the randomized SVD's energy policy are refused, made under
    its old sketch rule: the refusal names that rule and what it means, and nothing else."""
    from deftx.pipeline.ablation import check_rows_match, recorded_variants, variant_changes
    from deftx.pipeline.identity import method_rules, with_rule_note

    ablation = load_ablation(REPO / config, device="cpu")
    rows = read_rows(REPO / ablation.results_dir / "ablation.csv")
    assert rows, f"{config}: no committed rows"
    stale = {r["variant"]: r["variant_hash"] for r in rows if r["variant_hash"] != ablation.hashes[r["variant"]]}
    assert set(stale) == {r["variant"] for r in rows if method_rules(ablation.variants[r["variant"]])}
    rule_change = "rules.energy_sketch: added (2)"
    for name, old_hash in stale.items():
        assert variant_changes(ablation, name, old_hash) == [with_rule_note(rule_change)], name
    if stale:
        named = re.escape(with_rule_note(rule_change))
        with pytest.raises(ConfigError, match=rf"rows in ablation.csv were written \(\S+: {named}\)"):
            check_rows_match(rows, ablation, list(ablation.variants))
    check_rows_match([r for r in rows if r["variant"] not in stale], ablation, list(ablation.variants))
    check_rows_match(rows, ablation, [name for name in ablation.variants if name not in stale])
    assert {r["variant"] for r in rows} <= set(ablation.hashes)
    recorded = recorded_variants(REPO / ablation.results_dir)
    assert {f"{r['variant']}-{r['variant_hash']}" for r in rows} <= set(recorded), "variants.json lacks a variant"


def test_later_settings_enter_the_identity_away_from_their_earlier_value(tmp_path):
    from deftx.pipeline.identity import run_identity

    plain = parse_ablation(ablation_raw(tmp_path, {**BASE, "device": "cpu"}, {"a": {}}))
    on_cuda = parse_ablation(ablation_raw(tmp_path, {**BASE, "device": "cuda"}, {"a": {}}))
    with_arguments = parse_ablation(ablation_raw(
        tmp_path, {**BASE, "device": "cpu", "training": {"arguments": {"gradient_accumulation_steps": 2}}},
        {"a": {}}))
    identity = run_identity(plain.variants["a"])
    assert "device" not in identity and "arguments" not in identity["training"]
    assert run_identity(on_cuda.variants["a"])["device"] == "cuda"
    assert run_identity(with_arguments.variants["a"])["training"]["arguments"] == {"gradient_accumulation_steps": 2}
    train_text = parse_ablation(ablation_raw(tmp_path, {**BASE, "device": "cpu", "americasnlp_text_splits": ["train"]},
                                             {"a": {}}))
    assert "americasnlp_text_splits" not in identity
    assert run_identity(train_text.variants["a"])["americasnlp_text_splits"] == ["train"]
    assert len({plain.hashes["a"], on_cuda.hashes["a"], with_arguments.hashes["a"], train_text.hashes["a"]}) == 4


def test_variant_table_names_an_average_over_fewer_targets():
    """Variant b's seed 1 lacks minangkabau: that seed is left out of b's average (2 seeds, not an average
    of 0.5 with a one-target 0.6); variant c never scored minangkabau, and its cell says so."""
    def row(variant, seed, target, f1):
        return {"variant": variant, "seed": seed, "source": "indonesian", "method": "lt-sft", "language_scale": 1.0,
                "target": target, "macro_f1": f1, "accuracy": f1}

    rows = [row(variant, seed, target, value + seed / 10) for variant in ("a", "b") for seed in range(3)
            for target, value in (("madurese", 0.4), ("minangkabau", 0.6))
            if (variant, seed, target) != ("b", 1, "minangkabau")]
    rows += [row("c", seed, "madurese", 0.3) for seed in range(2)]
    table = variant_tables(summary_rows(rows, ["indonesian"]), ["a", "b", "c"], "macro_f1").splitlines()
    # a: per seed 0.5, 0.6, 0.7; b: seeds 0 and 2 only
    assert table[4:] == ["| a | 60.0 ± 10.0 (3) |", "| b | 60.0 ± 14.1 (2) |", "| c | 30.0 ± 0.0 (2; 1 of 2 targets) |"]


def test_a_variant_of_one_seed_shows_no_spread_in_the_variant_table():
    """The sd of one seed's value is not 0 but undefined: the cell gives the mean and the seed count alone."""
    rows = [{"variant": variant, "seed": seed, "source": "indonesian", "method": "lt-sft", "language_scale": 1.0,
             "target": "madurese", "macro_f1": 0.5 + seed / 10, "accuracy": 0.5} for variant, seeds in
            (("a", (0, 1)), ("b", (2,))) for seed in seeds]
    table = variant_tables(summary_rows(rows, ["indonesian"]), ["a", "b"], "macro_f1").splitlines()
    assert table[4:] == ["| a | 55.0 ± 7.1 (2) |", "| b | 70.0 (1) |"]


def test_the_progress_lines_average_is_the_tables_each_source_apart_and_every_source_left_out():
    """Rows of one seed from two sources: the progress line's mean over targets per method is the summary's
    ``avg`` of each source (madurese and minangkabau), not one mean over both sources' rows with the other
    source counted as a target."""
    def row(source, target, f1):
        return {"variant": "v", "seed": 0, "source": source, "target": target, "method": "lt-sft",
                "language_scale": 1.0, "macro_f1": f1, "accuracy": f1}

    f1 = {"madurese": 0.5, "minangkabau": 0.6, "indonesian": 0.9, "english": 0.8}
    rows = [row(source, target, value + shift) for source, shift in (("indonesian", 0.0), ("english", 0.1))
            for target, value in f1.items()]
    averages = average_by_method(rows, ["english", "indonesian"])
    assert averages == pytest.approx({"indonesian lt-sft": 0.55, "english lt-sft": 0.65})
    assert average_by_method(rows[:4], ["english", "indonesian"]) == pytest.approx({"lt-sft": 0.55})


def test_a_variant_equal_to_an_earlier_one_is_named_in_the_plan_and_results(tmp_path):
    """An override at the base's own value (K 0.028) gives the reference's settings: its steps would be the
    reference's, linked, so its rows are no second measurement; the plan and results.md say whose it has."""
    from deftx.pipeline.ablation import AblationRun, append_rows, equal_variants, plan_lines, write_summary

    variants = {"reference": {}, "k-default": {"language_sft.k": 0.028}, "k-1pct": {"language_sft.k": 0.01},
                "k-1pct-again": {"language_sft": {"k": 0.01}}}
    ablation = parse_ablation(ablation_raw(tmp_path, BASE, variants))
    assert equal_variants(ablation) == {"k-default": "reference", "k-1pct-again": "k-1pct"}
    plan = {line.split()[0]: line for line in plan_lines(ablation)[1:]}
    assert plan["k-default"].endswith("(same settings as reference: its steps are reference's, linked, not "
                                      "trained again)")
    assert plan["k-1pct-again"].endswith("(same settings as k-1pct: its steps are k-1pct's, linked, not "
                                         "trained again)")
    assert "same settings" not in plan["reference"] + plan["k-1pct"]
    append_rows(ablation.results_dir / "ablation.csv", [
        {"variant": name, "variant_hash": hash_, "seed": 0, "source": "indonesian", "target": "madurese",
         "method": "lt-sft", "language_scale": 1.0, "macro_f1": 0.5, "accuracy": 0.5}
        for name, hash_ in ablation.hashes.items()])
    write_summary(AblationRun(ablation, LinkedStepStore(tmp_path / "store"), environment={}), 0.0, None,
                  plot=False)
    listed = [line for line in (ablation.results_dir / "results.md").read_text().splitlines()
              if line.startswith("- **")]
    assert listed == ["- **reference** `{}`",
                      '- **k-default** `{"language_sft": {"k": 0.028}}` (same settings as reference: its steps '
                      "are reference's, linked, not trained again)",
                      '- **k-1pct** `{"language_sft": {"k": 0.01}}`',
                      '- **k-1pct-again** `{"language_sft": {"k": 0.01}}` (same settings as k-1pct: its steps '
                      "are k-1pct's, linked, not trained again)"]
