"""Pipeline config parsing: defaults, merging, and clear errors for bad values."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from deftx.pipeline.config import ConfigError, load_config, parse_config, read_config_file, strict_yaml_load
from deftx.train.config import DenoiseConfig, to_plain

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["default.yaml", "nusax-e5-small.yaml", "nusax-e5-small-1seed.yaml"])
def test_shipped_configs_parse(name):
    config = load_config(REPO / "configs" / name)
    assert config.targets and set(config.methods) == {"lt-sft", "deft-x"}
    assert config.methods["lt-sft"] is None and config.methods["deft-x"].energy == 0.9
    assert config.language_config().selections == config.methods
    assert config.task_config().ship_head and not config.language_config().ship_head
    assert config.eval_split == "test" and config.language_sft.max_length is None


def test_prototype_config_keeps_its_recorded_settings():
    config = load_config(REPO / "configs" / "nusax-e5-small-1seed.yaml")
    assert config.language_scales() == (1.0,) and config.language_text_splits == ("train", "valid")
    assert config.mlm_head.texts == ("nusax",) and config.task_sft.sparse.learning_rate == 3e-5


def test_omitted_keys_default_to_the_chosen_recipe():
    config = parse_config({"targets": ["madurese"]})
    assert config.task_sft.full.learning_rate == 3e-5 and config.task_sft.sparse.learning_rate == 1e-4
    assert config.task_sft.full.epochs == config.task_sft.sparse.epochs == 3
    assert config.full_finetune.learning_rate == 1e-4 and config.full_finetune.epochs == 3
    assert config.language_scales() == (1.25,)
    assert config.language_sft.full.steps == config.language_sft.sparse.steps == 100
    assert config.language_sft.full.l1 == config.language_sft.sparse.l1 == 0.1


def test_real_run_trains_the_final_tables_recipe():
    real = to_plain(load_config(REPO / "configs" / "nusax-e5-small.yaml"))
    final = to_plain(load_config(REPO / "configs" / "nusax-e5-small-final.yaml"))
    recipe = ("methods", "language_scale", "language_text_splits", "mlm_head", "language_sft", "task_sft",
              "full_finetune", "task_on_source_sft", "baseline", "model")
    assert {key: real[key] for key in recipe} == {key: final[key] for key in recipe}


def test_americasnli_run_trains_the_final_tables_recipe_and_its_mlm_head():
    """Nothing of configs/americasnli-e5-small.yaml is tuned on AmericasNLI: its recipe is the NusaX final
    table's (task_on_source_sft aside: the AmericasNLI task SFT mixes five languages, so it has no source SFT)."""
    anli = to_plain(load_config(REPO / "configs" / "americasnli-e5-small.yaml"))
    final = to_plain(load_config(REPO / "configs" / "nusax-e5-small-final.yaml"))
    recipe = ("methods", "language_scale", "language_text_splits", "mlm_head", "language_sft", "task_sft",
              "full_finetune", "baseline", "model")
    assert {key: anli[key] for key in recipe} == {key: final[key] for key in recipe}
    assert anli["targets"] == [] and anli["americasnli"]["max_train_examples"] is None


def test_gpu_study_trains_the_final_recipe_without_checkpoints_inside_phases():
    study = to_plain(load_config(REPO / "configs" / "nusax-e5-small-h200.yaml"))
    final = to_plain(load_config(REPO / "configs" / "nusax-e5-small-final.yaml"))
    differ = {"name", "output_dir", "results_dir", "seeds", "step_store", "training"}
    assert {k: v for k, v in study.items() if k not in differ} == {k: v for k, v in final.items() if k not in differ}
    assert study["training"] == {**final["training"], "save_steps": 0}
    assert study["step_store"] is None and len(study["seeds"]) >= 10


def test_real_run_covers_the_papers_languages():
    config = load_config(REPO / "configs" / "nusax-e5-small.yaml")
    assert set(config.targets) == {"acehnese", "balinese", "banjarese", "madurese", "minangkabau"}
    assert set(config.sources) == {"indonesian", "english"}


def test_phase_override_keeps_unset_keys():
    config = parse_config({"targets": ["madurese"], "language_sft": {"full": {"steps": 3}}})
    assert config.language_sft.full.steps == 3 and config.language_sft.full.l1 == 0.1
    assert config.language_sft.sparse.steps == 100
    switched = parse_config({"targets": ["madurese"], "task_sft": {"full": {"steps": 4}}})
    assert switched.task_sft.full.steps == 4 and switched.task_sft.full.epochs is None



def test_denoised_pairs_put_each_denoised_method_against_each_plain_one_in_config_order():
    assert load_config(REPO / "configs" / "default.yaml").denoised_pairs() == (("deft-x", "lt-sft"),)
    config = parse_config({"targets": ["x"], "methods": {"svd-r8": {"rank": 8}, "lt-sft": None,
                                                         "svd-e9": {"energy": 0.9}}})
    assert config.denoised_pairs() == (("svd-r8", "lt-sft"), ("svd-e9", "lt-sft"))
    assert parse_config({"targets": ["x"], "methods": {"lt-sft": None}}).denoised_pairs() == ()


def test_an_empty_method_entry_is_the_rule_its_name_implies_or_refused():
    """null is the magnitude rule (LT-SFT) under any name, once; deft-x: null is DeFT-X's defaults (as {}); a
    second null entry (the same SFT under two names), null under another deft-x name and lt-sft with
    denoising settings are refused, naming the entry and what to write."""
    config = parse_config({"targets": ["x"], "methods": {"lt-sft": None, "deft-x": None}})
    assert config.methods == {"lt-sft": None, "deft-x": DenoiseConfig()}
    assert config.methods == parse_config({"targets": ["x"], "methods": {"lt-sft": None, "deft-x": {}}}).methods
    assert config.denoised_pairs() == (("deft-x", "lt-sft"),)
    assert parse_config({"targets": ["x"], "methods": {"DeFT-X": None}}).methods == {"DeFT-X": DenoiseConfig()}
    plain = parse_config({"targets": ["x"], "methods": {"plain": None, "denoised": {"rank": 2}}})
    assert plain.methods == {"plain": None, "denoised": DenoiseConfig(rank=2)}
    for name in ("magnitude", "lt-sft-copy"):
        with pytest.raises(ConfigError, match=rf"methods\.{name}: an empty entry \(null\) is the magnitude .*which "
                                              rf"lt-sft already is.*{name}: \{{energy: 0\.9\}}"):
            parse_config({"targets": ["x"], "methods": {"lt-sft": None, name: None}})
    with pytest.raises(ConfigError, match=r"methods\.deft-x-e50: deft-x-e50 names a DeFT-X method.*"
                                          r"deft-x-e50: \{energy: 0\.9\}"):
        parse_config({"targets": ["x"], "methods": {"deft-x-e50": None}})
    for name, spec in (("lt-sft", {}), ("lt-sft", {"energy": 0.5}), ("LT-SFT", {"rank": 2})):
        with pytest.raises(ConfigError, match=rf"methods\.{name}: {name} selects by magnitude.*write {name}: null"):
            parse_config({"targets": ["x"], "methods": {name: spec}})


def test_an_empty_yaml_deft_x_entry_trains_deft_x_s_defaults(tmp_path):
    """The walkthrough's config: ``deft-x:`` left empty (null in YAML) once trained LT-SFT labelled deft-x."""
    path = tmp_path / "c.yaml"
    path.write_text("targets: [x]\nmethods: {lt-sft: null, deft-x: }\n")
    config = load_config(path)
    assert config.methods == {"lt-sft": None, "deft-x": DenoiseConfig(energy=0.9)}
    assert config.selection_rules()["deft-x"].startswith("denoised |low-rank Delta| (DeFT-X: energy 0.9")


def test_selection_rules_name_each_method_s_rule():
    config = parse_config({"targets": ["x"], "methods": {"lt-sft": None, "deft-x": None, "r8": {"rank": 8},
                                                         "res": {"add_back_residual": True, "method": "exact"}}})
    rules = config.selection_rules()
    assert list(rules) == ["lt-sft", "deft-x", "r8", "res"]
    assert rules["lt-sft"].startswith("magnitude |theta1 - theta0|")
    assert rules["deft-x"].startswith("denoised") and "energy 0.9" in rules["deft-x"]
    assert "rank 8" in rules["r8"] and "energy" not in rules["r8"]
    assert "exact SVD" in rules["res"] and "0.1 of the residual" in rules["res"]


def test_training_seed_is_refused_the_seeds_list_sets_it():
    for seed in (5, 0):
        with pytest.raises(ConfigError, match=r"training\.seed: .*top-level `seeds:` list"):
            parse_config({"targets": ["x"], "seeds": [1], "training": {"seed": seed}})
    with pytest.raises(ConfigError, match=r"training\.seed"):
        parse_config({"targets": ["x"], "training": {"gradient_accumulation_steps": 2, "seed": 3}})
    recorded = to_plain(parse_config({"targets": ["x"], "seeds": [1, 2]}))
    assert recorded["training"]["seed"] == 0, "a recorded config.json carries the unused placeholder"
    assert parse_config(recorded).seeds == (1, 2)
    recorded["training"]["seed"] = 5
    with pytest.raises(ConfigError, match=r"training\.seed"):
        parse_config(recorded)


@pytest.mark.parametrize("text, match", [
    ("targets: [x]\nseeds: [0]\nseeds: [1]\n", r"duplicate key 'seeds' on line 3 \(first on line 2\)"),
    ("targets: [x]\n'seeds': [0]\nseeds: [1]\n", r"duplicate key 'seeds' on line 3"),
    ("targets: [x]\ntraining:\n  batch_size: 8\n  batch_size: 16\n",
     r"duplicate key 'training\.batch_size' on line 4 \(first on line 3\)"),
    ("targets: [x]\nmethods: {lt-sft: null, deft-x: {energy: 0.5, energy: 0.9}}\n",
     r"duplicate key 'methods\.deft-x\.energy' on line 2"),
    ("targets: [x]\nmethods: {deft-x: {}, deft-x: {rank: 1}}\n", r"duplicate key 'methods\.deft-x'"),
])
def test_a_key_written_twice_is_refused_with_its_line(tmp_path, text, match):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(path)


def test_yaml_merge_keys_may_be_overridden_and_json_duplicates_are_refused(tmp_path):
    merged = tmp_path / "merged.yaml"
    merged.write_text("targets: [x]\nbase: &b {batch_size: 8, max_length: 64}\n")
    assert read_config_file(merged)["base"] == {"batch_size": 8, "max_length": 64}
    merged.write_text("targets: [x]\nx-base: &b {batch_size: 8, max_length: 64}\n"
                      "training: {<<: *b, batch_size: 4}\n")
    assert read_config_file(merged)["training"] == {"batch_size": 4, "max_length": 64}
    duplicated = tmp_path / "c.json"
    duplicated.write_text('{"targets": ["x"], "seeds": [0], "seeds": [1]}')
    with pytest.raises(ConfigError, match=r"duplicate key 'seeds'"):
        load_config(duplicated)

def test_json_config(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('{"targets": ["balinese"], "seeds": [1, 2]}')
    assert load_config(path).seeds == (1, 2)


@pytest.mark.parametrize("raw, match", [
    ({}, "'targets'"),
    ({"targets": ["x"], "trainng": {}}, "unknown keys \\['trainng'\\]"),
    ({"targets": ["x"], "training": {"batch_size": 0}}, "batch_size"),
    ({"targets": ["x"], "seeds": [-1]}, "seeds"),
    ({"targets": ["x"], "methods": {}}, "at least one method"),
    ({"targets": ["x"], "methods": {"deft-x": {"energy": 2}}}, "energy"),
    ({"targets": ["x"], "methods": {"deft-x": {"rank": 0}}}, r"methods\.deft-x.*rank must be an integer >= 1"),
    ({"targets": ["x"], "methods": {"full-ft": None}}, "baseline's name"),
    ({"targets": ["x"], "language_sft": {"k": 0}}, "language_sft.k"),
    ({"targets": ["x"], "task_sft": {"full": {"steps": 2, "epochs": 1}}}, "exactly one"),
    ({"targets": "x", "baseline": "yes"}, "true or false"),
    ({"targets": ["x"], "americasnli": {"train_languages": ["aym"]}}, "americasnli"),
    ({"targets": ["x"], "step_store": 3}, "step_store: expected a path or null"),
    ([1, 2], "expected a mapping"),
])
def test_bad_values_name_the_key(raw, match):
    with pytest.raises(ConfigError, match=match):
        parse_config(raw)


def test_missing_and_unparsable_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("targets: [unclosed\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config(bad)


def test_eval_split_valid_needs_train_only_language_text():
    config = parse_config({"targets": ["madurese"], "eval_split": "valid", "language_text_splits": ["train"]})
    assert config.eval_split == "valid" and config.language_text_splits == ("train",)
    assert parse_config({"targets": ["x"], "language_text_splits": "train"}).language_text_splits == ("train",)
    with pytest.raises(ConfigError, match=r"language_text_splits.*valid sentences' text"):
        parse_config({"targets": ["madurese"], "eval_split": "valid"})
    with pytest.raises(ConfigError, match="language_text_splits"):
        parse_config({"targets": ["x"], "eval_split": "valid", "language_text_splits": ["train", "valid"]})


def test_americasnlp_text_splits_default_to_train_and_dev_and_may_leave_dev_out():
    assert parse_config({"targets": ["x"]}).americasnlp_text_splits == ("train", "dev")
    assert parse_config({"targets": ["x"], "americasnlp_text_splits": ["train"]}).americasnlp_text_splits == ("train",)
    recorded = to_plain(load_config(REPO / "configs" / "americasnli-e5-small.yaml"))
    assert recorded["americasnlp_text_splits"] == ["train", "dev"], "the committed AmericasNLI run's text"


def test_text_splits_names_each_corpus_by_its_own_key():
    config = parse_config({"targets": ["x"], "language_text_splits": ["train"]})
    assert config.text_splits("nusax") == ("train",) and config.text_splits("americasnlp") == ("train", "dev")
    with pytest.raises(ValueError, match="unknown text corpus 'nusa'"):
        config.text_splits("nusa")


@pytest.mark.parametrize("raw, match", [
    ({"eval_split": "dev"}, "eval_split"),
    ({"eval_split": ["valid"]}, "eval_split"),
    ({"language_text_splits": ["test"]}, "language_text_splits"),
    ({"language_text_splits": ["train", "train"]}, "language_text_splits"),
    ({"language_text_splits": []}, "language_text_splits"),
    ({"americasnlp_text_splits": ["test"]}, "americasnlp_text_splits"),
    ({"americasnlp_text_splits": ["valid"]}, "americasnlp_text_splits"),
    ({"americasnlp_text_splits": []}, "americasnlp_text_splits"),
    ({"language_scale": []}, "language_scale"),
    ({"language_scale": [1.0, 1]}, "distinct"),
    ({"language_scale": "1"}, "language_scale"),
    ({"language_scale": [0.5, True]}, "language_scale"),
    ({"language_scale": float("nan")}, "language_scale"),
    ({"language_scale": 0}, r"language_scale: the scales must be > 0, got 0: scale 0 composes no language SFT "
                            r"\(each method's '\(no lang SFT\)' row is that already\)"),
    ({"language_scale": [0.5, -1.0]}, r"the scales must be > 0, got \[0.5, -1.0\]: .* a negative one subtracts it"),
    ({"language_sft": {"max_length": 2}}, "language_sft.max_length"),
    ({"task_sft": {"max_length": 64}}, "unknown keys \\['max_length'\\]"),
    ({"mlm_head": {"texts": ["wiki"]}}, "mlm_head.texts"),
    ({"mlm_head": {"texts": []}}, "mlm_head.texts"),
    ({"mlm_head": {"eval_sequences": -1}}, "eval_sequences"),
    ({"mlm_head": {"eval_every": 0}}, "eval_every"),
])
def test_recipe_keys_reject_bad_values(raw, match):
    with pytest.raises(ConfigError, match=match):
        parse_config({"targets": ["x"], **raw})


def test_language_scale_one_number_or_a_sweep():
    single = parse_config({"targets": ["x"], "language_scale": 2})
    assert single.language_scale == 2.0 and single.language_scales() == (2.0,)
    swept = parse_config({"targets": ["x"], "language_scale": [0.5, 1, 1.5]})
    assert swept.language_scale == (0.5, 1.0, 1.5) and swept.language_scales() == (0.5, 1.0, 1.5)


def test_language_window_and_head_corpora():
    config = parse_config({"targets": ["x"], "language_sft": {"max_length": 64, "full": {"steps": 5}},
                           "mlm_head": {"texts": ["nusax", "americasnlp"], "eval_sequences": 32, "eval_every": 50}})
    assert config.language_sft.max_length == 64 and config.language_sft.full.steps == 5
    assert config.language_sft.full.l1 == 0.1, "the phase default is kept"
    assert config.mlm_head.texts == ("nusax", "americasnlp")
    assert (config.mlm_head.eval_sequences, config.mlm_head.eval_every) == (32, 50)


def test_a_recorded_config_parses_back_to_the_same_config():
    """config.json is to_plain(config): parse_config reads it back as the same config (task_sft's
    max_length, null there, included), so a results folder's recipe can be compared with a run's."""
    config = parse_config({"targets": ["x"], "language_sft": {"max_length": 64}})
    assert parse_config(to_plain(config)) == config


@pytest.mark.parametrize("name", ["nusax-e5-small-final", "nusax-e5-small-1seed", "americasnli-e5-small"])
def test_committed_results_record_their_config_s_recipe_under_the_rules_of_their_time(name, monkeypatch):
    """Their config.json is the config's recipe, made before the randomized SVD's energy rule kept spare
    sketch columns: a run of more seeds of these configs is refused, naming the rule, not added to them."""
    import torch

    from deftx.ops.denoise import ENERGY_SKETCH_RULE
    from deftx.pipeline.outputs import recipe_changes

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # their "auto" meant the CPU
    config = load_config(REPO / "configs" / f"{name}.yaml")
    changes = recipe_changes(config, REPO / config.results_dir / "config.json")
    assert len(changes) == 1 and changes[0].startswith(f"rules.energy_sketch: added ({ENERGY_SKETCH_RULE}) (")
    assert "DeFT-X rows of before are not mixed" in changes[0]


def test_a_results_folders_config_json_of_a_randomized_energy_recipe_loads_as_its_config(tmp_path):
    """config.json records the method rules beside the config (a randomized energy-rule DeFT-X): read back as a
    config file it is the same config (its rows' seeds), the record left out; a malformed record is refused."""
    from deftx.pipeline.outputs import recorded_config

    config = parse_config({"targets": ["madurese"], "methods": {"lt-sft": None, "deft-x": {"energy": 0.9}},
                           "seeds": [3, 4], "device": "cpu"})
    recorded = recorded_config(config, [3, 4], "cpu")
    assert recorded["rules"], "the randomized energy rule is recorded"
    path = tmp_path / "config.json"
    path.write_text(json.dumps(recorded))
    assert load_config(path) == config
    path.write_text(json.dumps({**recorded, "rules": {"energy_sketch": "2"}}))
    with pytest.raises(ConfigError, match="config rules: expected rule name -> version"):
        load_config(path)


@pytest.mark.parametrize(("methods", "rules"), [
    ({"lt-sft": None, "deft-x": {"energy": 0.9}}, True),
    ({"lt-sft": None, "deft-x": {"energy": 0.9, "method": "exact"}, "r8": {"rank": 8}}, False),
    ({"lt-sft": None}, False),
])
def test_a_results_folder_records_the_method_rules_its_rows_were_made_under(tmp_path, methods, rules):
    from deftx.ops.denoise import ENERGY_SKETCH_RULE
    from deftx.pipeline.identity import method_rules, run_identity
    from deftx.pipeline.outputs import recipe_changes

    config = parse_config({**to_plain(load_config(REPO / "configs" / "nusax-e5-small-final.yaml")), "methods": methods,
                           "device": "cpu"})
    assert method_rules(config) == ({"energy_sketch": ENERGY_SKETCH_RULE} if rules else {})
    assert ("rules" in run_identity(config)) == rules
    recorded = tmp_path / "config.json"
    plain = to_plain(config)
    recorded.write_text(json.dumps({**plain, **({"rules": method_rules(config)} if rules else {})}))
    assert recipe_changes(config, recorded) == []
    recorded.write_text(json.dumps(plain))
    assert bool(recipe_changes(config, recorded)) == rules, "a folder of before the rules holds other rows"
    recorded.write_text(json.dumps({**plain, "rules": {"energy_sketch": 1}}))
    assert [line.split(" (")[0] for line in recipe_changes(config, recorded)] == (
        [f"rules.energy_sketch: 1 -> {ENERGY_SKETCH_RULE}"] if rules else ["rules.energy_sketch: removed"])


@pytest.mark.parametrize("raw, match", [
    ({"targets": ["madurese"], "sources": []},
     r"^config sources: empty, so no task SFT is trained and none of the targets \['madurese'\] is scored"),
    ({"targets": [], "americasnli": {"train_languages": [], "test_languages": ["bzd"]}},
     r"^config americasnli\.train_languages: expected at least one language, got \[\]"),
    ({"targets": [], "americasnli": {"train_languages": ["aym"], "test_languages": []}},
     r"^config americasnli\.test_languages: expected at least one language, got \[\]"),
])
def test_an_empty_language_list_that_leaves_nothing_to_score_is_refused(raw, match):
    """sources: [] trained the MLM head and every target's language SFT, then no task SFT and an empty table;
    an empty AmericasNLI list trained a task SFT on no pairs, or one scored on no language."""
    with pytest.raises(ConfigError, match=match):
        parse_config(raw)


def test_sources_may_be_empty_without_nusax_targets():
    config = parse_config({"targets": [], "sources": [], "americasnli": {"train_languages": ["aym"],
                                                                         "test_languages": ["bzd"]}})
    assert config.sources == () and config.americasnli.test_languages == ("bzd",)


@pytest.mark.parametrize("name", ["", ".", "..", "../deft-x", "deft-x/e50", "deft-x\\e50", "deft-x (no lang SFT)"])
def test_a_method_name_that_is_no_folder_name_or_a_row_suffix_is_refused(name):
    """A method's name is its branch folder and its rows' name: '' and '.' wrote the same file, '../deft-x' the
    folder of the run beside it, and 'deft-x (no lang SFT)' the rows of deft-x without a language SFT."""
    from deftx.pipeline.layout import branch_file

    assert branch_file(Path("run"), "") == branch_file(Path("run"), "."), "the collision the refusal prevents"
    with pytest.raises(ConfigError, match=rf"^config methods: method name {re.escape(repr(name))} "):
        parse_config({"targets": ["madurese"], "methods": {"lt-sft": None, name: {"rank": 2}}})


def test_a_bad_value_in_a_config_file_names_the_file_and_the_key(tmp_path):
    """A nested key's error named only the key (config task_sft.sparse: ...), never the file it was in; PyYAML reads
    1e-4 (no dot) as the text '1e-4'."""
    path = tmp_path / "recipe.yaml"
    path.write_text("targets: [madurese]\ntask_sft: {sparse: {learning_rate: 1e-4}}\n")
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: config task_sft\.sparse: PhaseConfig: "
                                          r"learning_rate must be a finite number > 0, got '1e-4' \(YAML reads"):
        load_config(path)
    path.write_text("targets: [madurese]\ntrainng: {}\n")
    with pytest.raises(ConfigError, match=rf"^config {re.escape(str(path))}: unknown keys \['trainng'\]"):
        load_config(path)


@pytest.mark.parametrize("section, text", [
    ("task_sft", "{sparse: {learning_rate: 1e-4}}"),
    ("mlm_head", "{learning_rate: 1e-3}"),
    ("methods", "{deft-x: {energy: 9e-1}}"),
    ("training", "{weight_decay: 1e-2}"),
])
def test_a_yaml_number_without_a_dot_is_refused_saying_why(section, text):
    """PyYAML (YAML 1.1) reads 1e-4 as the text '1e-4': the refusal 'learning_rate must be a finite number > 0,
    got '1e-4'' read as if 1e-4 were no such number; it now says how YAML read it and what to write."""
    assert strict_yaml_load("x: 1e-4") == {"x": "1e-4"}, "the YAML behaviour the message explains"
    with pytest.raises(ConfigError, match=r"got '\d+e-\d+'.* \(YAML reads a number written without a dot, such as "
                                          r"1e-4, as text: write 1\.0e-4\)$"):
        parse_config(strict_yaml_load(f"targets: [madurese]\n{section}: {text}\n"))


def test_the_yaml_number_hint_is_only_for_text_that_reads_as_a_number():
    with pytest.raises(ConfigError) as caught:
        parse_config({"targets": ["madurese"], "methods": {"deft-x": {"method": "svd"}}})
    assert "YAML reads" not in str(caught.value)


@pytest.mark.parametrize("raw", [{"task_sft": {"k": "5e-2"}}, {"language_scale": "1e0"},
                                 {"language_scale": [1, "2e0"]}])
def test_a_yaml_number_as_text_in_k_or_the_scale_is_refused_saying_why(raw):
    with pytest.raises(ConfigError, match=r" \(YAML reads a number written without a dot, such as 1e-4, as text"):
        parse_config({"targets": ["madurese"], **raw})


def test_the_module_docstring_documents_every_top_level_key_with_its_default():
    """Every PipelineConfig field is a key of the documented example, and each documented scalar default is the
    parsed one (an undocumented key, eval_batch_size, was in the recipe unseen)."""
    import dataclasses

    import deftx.pipeline.config as module

    example = module.__doc__.split("Example", 1)[1].split("::", 1)[1].split("\n\n", 2)[1]
    documented = strict_yaml_load(example)
    assert set(documented) == {f.name for f in dataclasses.fields(module.PipelineConfig)}
    defaults = to_plain(parse_config({"targets": documented["targets"]}))
    for key in ("model", "data_dir", "results_dir", "step_store", "baseline", "task_on_source_sft", "language_scale",
                "eval_split", "pooling", "device", "eval_batch_size", "americasnli"):
        assert documented[key] == defaults[key], key
    assert {**defaults["mlm_head"], **documented["mlm_head"]} == defaults["mlm_head"]


@pytest.mark.parametrize("k", [1, 1.0])
def test_k_one_is_refused_as_a_one_entry_sft(k):
    """Beside fractions such as k: 0.028, k: 1.0 reads as 100%, but K >= 1 is a count: the SFT kept one entry."""
    from deftx.train.config import resolve_k

    assert resolve_k(int(k), 1000) == 1, "how the tuner reads the int (it refuses the float 1.0 as ambiguous)"
    with pytest.raises(ConfigError, match=r"^config task_sft\.k: 1 is a count, one entry"):
        parse_config({"targets": ["madurese"], "task_sft": {"k": k}})
    assert parse_config({"targets": ["madurese"], "task_sft": {"k": 2}}).task_sft.k == 2


def head_inputs(config):
    """What a warmed MLM head is cached by, from a config: model, settings, each corpus's text splits, device."""
    return (config.model, config.mlm_head, [config.text_splits(corpus) for corpus in config.mlm_head.texts],
            config.device)


def test_a_shipped_config_that_says_it_shares_a_head_has_that_heads_inputs():
    """'# cached: shared with nusax-e5-small.yaml' held no more once that config moved to a 3000-step head on
    NusaX + AmericasNLP train text: the 1-seed run warmed a head of its own."""
    configs = REPO / "configs"
    claims = [(path.name, named) for path in sorted(configs.glob("*.yaml"))
              for named in re.findall(r"shared with (?:configs/)?([\w.-]+\.yaml)", path.read_text())]
    claims += [("americasnli-e5-small.yaml", "nusax-e5-small-final.yaml"),  # "the final table's ... a cache hit"
               ("nusax-e5-small.yaml", "ablation-nusax-e5-small-base.yaml")]  # "its MLM head is reused from the cache"
    assert len(claims) >= 4
    for claimant, named in claims:
        assert head_inputs(load_config(configs / claimant)) == head_inputs(load_config(configs / named)), claimant


@pytest.mark.parametrize("raw, match", [
    ({"training": {"max_length": 2}}, r"^config training\.max_length: expected an integer >= 3 \(\[CLS\], one token, "
                                      r"\[SEP\]\), got 2"),
    ({"mlm_head": {"seq_len": 2}}, r"^config mlm_head\.seq_len: expected an integer >= 3 \(\[CLS\], one token, "
                                   r"\[SEP\]\), got 2"),
])
def test_a_token_window_without_room_for_a_token_is_refused(raw, match):
    """training.max_length 2 cut every sentence to [CLS] [SEP]: task SFTs and the baseline trained and were scored on
    no text at all; language_sft.max_length already needed >= 3, as the MLM masks do (deftx.train.masking)."""
    from deftx.train.masking import chunk_token_ids

    with pytest.raises(ValueError, match="seq_len must be >= 3"):
        chunk_token_ids(None, ["text"], 2)
    with pytest.raises(ConfigError, match=match):
        parse_config({"targets": ["madurese"], **raw})
    assert parse_config({"targets": ["madurese"], "training": {"max_length": 3}}).training.max_length == 3


def test_a_baseline_with_an_l1_pull_is_refused_when_the_config_is_read():
    """The full fine-tuning baseline trains without an L1 pull: ``full_finetune.l1`` would be ignored."""
    with pytest.raises(ConfigError, match=r"full_finetune: l1 0\.1: the baseline takes no L1 pull"):
        parse_config({"targets": ["madurese"], "full_finetune": {"epochs": 3, "learning_rate": 1e-4, "l1": 0.1}})
    assert parse_config({"targets": ["madurese"], "full_finetune": {"l1": 0.0}}).full_finetune.l1 == 0.0
