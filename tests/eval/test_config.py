"""Pipeline config parsing: defaults, merging, and clear errors for bad values."""

from __future__ import annotations

from pathlib import Path

import pytest

from deftx.eval.config import ConfigError, load_config, parse_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("name", ["default.yaml", "nusax-e5-small.yaml"])
def test_shipped_configs_parse(name):
    config = load_config(REPO / "configs" / name)
    assert config.targets and set(config.methods) == {"lt-sft", "deft-x"}
    assert config.methods["lt-sft"] is None and config.methods["deft-x"].energy == 0.9
    assert config.language_config().selections == config.methods
    assert config.task_config().ship_head and not config.language_config().ship_head


def test_real_run_covers_the_papers_languages():
    config = load_config(REPO / "configs" / "nusax-e5-small.yaml")
    assert set(config.targets) == {"acehnese", "balinese", "banjarese", "madurese", "minangkabau"}
    assert set(config.sources) == {"indonesian", "english"}


def test_phase_override_keeps_unset_keys():
    config = parse_config({"targets": ["madurese"], "language_sft": {"full": {"steps": 3}}})
    assert config.language_sft.full.steps == 3 and config.language_sft.full.l1 == 0.1
    assert config.language_sft.sparse.steps == 200
    switched = parse_config({"targets": ["madurese"], "task_sft": {"full": {"steps": 4}}})
    assert switched.task_sft.full.steps == 4 and switched.task_sft.full.epochs is None


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
    ({"targets": ["x"], "methods": {"full-ft": None}}, "baseline's name"),
    ({"targets": ["x"], "language_sft": {"k": 0}}, "language_sft.k"),
    ({"targets": ["x"], "task_sft": {"full": {"steps": 2, "epochs": 1}}}, "exactly one"),
    ({"targets": "x", "baseline": "yes"}, "true or false"),
    ({"targets": ["x"], "americasnli": {"train_languages": ["aym"]}}, "americasnli"),
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
