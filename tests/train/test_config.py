"""Config validation, K resolution and the paper defaults."""

from __future__ import annotations

import pytest
import torch

from deftx.train.config import (
    DEFAULT_ENERGY,
    DenoiseConfig,
    PhaseConfig,
    SparseFineTuningConfig,
    language_sft_config,
    resolve_k,
    task_sft_config,
    to_plain,
)
from deftx.train.denoise import denoised_scores


@pytest.mark.parametrize("k, eligible, expected", [
    (10, 100, 10), (0.1, 100, 10), (0.028, 21_000_000, 588_000), (100, 100, 100), (0.5, 3, 2),
])
def test_resolve_k(k, eligible, expected):
    assert resolve_k(k, eligible) == expected


@pytest.mark.parametrize("k, match", [
    (0, "integer >= 1"), (1.5, "integer >= 1"), (-0.2, "fraction"), (101, "exceeds"), (0.001, "selects nothing"),
])
def test_resolve_k_rejects(k, match):
    with pytest.raises(ValueError, match=match):
        resolve_k(k, 100)


def test_resolve_k_rejects_non_numbers():
    with pytest.raises(TypeError):
        resolve_k("10", 100)
    with pytest.raises(TypeError):
        resolve_k(True, 100)


@pytest.mark.parametrize("kwargs, match", [
    ({}, "exactly one of steps / epochs"),
    ({"steps": 3, "epochs": 1}, "exactly one"),
    ({"steps": 0}, "steps must be"),
    ({"steps": 2.5}, "steps must be"),
    ({"epochs": 0}, "epochs must be"),
    ({"steps": 1, "learning_rate": 0}, "learning_rate"),
    ({"steps": 1, "l1": -1}, "l1"),
])
def test_phase_config_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PhaseConfig(**kwargs)


def test_denoise_defaults_to_energy_and_accepts_uniform_rank():
    assert DenoiseConfig().energy == DEFAULT_ENERGY == 0.9
    uniform = DenoiseConfig(rank=8)
    assert uniform.rank == 8 and uniform.energy is None


def test_denoise_config_stores_integral_floats_as_the_ints_the_ops_take():
    """rank 2.0 (as a YAML or JSON config may write it) scores as rank 2, where the op refused the float
    after phase 1 (and a float n_iter or seed failed inside torch)."""
    theta0 = torch.randn(6, 5, generator=torch.Generator().manual_seed(0))
    theta1 = theta0 + torch.randn(6, 5, generator=torch.Generator().manual_seed(1))
    config = DenoiseConfig(rank=2.0, oversample=3.0, n_iter=1.0, seed=4.0)
    assert [type(getattr(config, name)) for name in ("rank", "oversample", "n_iter", "seed")] == [int] * 4
    score, rank, _ = denoised_scores(theta1, theta0, config)
    want, _, _ = denoised_scores(theta1, theta0, DenoiseConfig(rank=2, oversample=3, n_iter=1, seed=4))
    assert rank == 2 and torch.equal(score, want)


@pytest.mark.parametrize("kwargs, match", [
    ({"rank": 4, "energy": 0.5}, "exactly one"),
    ({"energy": 1.5}, "energy"),
    ({"rank": -1}, "rank"),
    ({"rank": 0}, "rank must be an integer >= 1"),
    ({"method": "lanczos"}, "method"),
    ({"groups": ("attention", "pooler")}, "unknown groups"),
    ({"residual_keep": 2.0}, "residual_keep"),
])
def test_denoise_config_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DenoiseConfig(**kwargs)


def test_sparse_config_rejects_head_and_bad_branch_names():
    phase = PhaseConfig(steps=1)
    with pytest.raises(ValueError, match="head"):
        SparseFineTuningConfig(k=5, full=phase, sparse=phase, eligible=("attention", "head"))
    with pytest.raises(ValueError, match="selection name"):
        SparseFineTuningConfig(k=5, full=phase, sparse=phase, selections={"a/b": None})
    with pytest.raises(ValueError, match="empty"):
        SparseFineTuningConfig(k=5, full=phase, sparse=phase, selections={})


def test_paper_defaults():
    lang = language_sft_config()
    assert lang.k == 0.028 and lang.full.l1 == lang.sparse.l1 == 0.1
    assert lang.full.learning_rate == 5e-5 and not lang.ship_head
    task = task_sft_config()
    assert task.k == 0.051 and task.full.epochs == task.sparse.epochs == 5
    assert task.full.learning_rate == 2e-5 and task.full.l1 == 0.0 and task.ship_head
    assert set(task.selections) == {"lt-sft", "deft-x"} and task.selections["lt-sft"] is None


def test_to_plain_is_json_ready():
    plain = to_plain(task_sft_config())
    assert plain["full"] == {"steps": None, "epochs": 5, "learning_rate": 2e-5, "l1": 0.0}
    assert plain["selections"]["deft-x"]["energy"] == 0.9
    assert isinstance(plain["eligible"], list)


@pytest.mark.parametrize("kwargs, match", [
    ({"full": {"steps": 1}}, r"SparseFineTuningConfig: full must be a PhaseConfig, got \{'steps': 1\}"),
    ({"sparse": None}, r"SparseFineTuningConfig: sparse must be a PhaseConfig, got None"),
    ({"selections": {"deft-x": "deft-x"}}, r"selections\['deft-x'\] must be a DenoiseConfig or None \(LT-SFT\)"),
    ({"selections": {"deft-x": DenoiseConfig}}, r"selections\['deft-x'\] must be a DenoiseConfig or None"),
    ({"train_head": "no"}, r"SparseFineTuningConfig: train_head must be true or false, got 'no'"),
    ({"ship_head": 1}, r"SparseFineTuningConfig: ship_head must be true or false, got 1"),
])
def test_sparse_config_checks_the_type_of_each_field_naming_it(kwargs, match):
    """A wrong type was accepted and failed only inside fit() (``'str' object has no attribute
    'uses_energy_sketch'``), or never: ``train_head="no"`` is truthy and trained the head."""
    settings = {"k": 5, "full": PhaseConfig(steps=1), "sparse": PhaseConfig(steps=1), **kwargs}
    with pytest.raises(ValueError, match=match):
        SparseFineTuningConfig(**settings)


def test_denoise_groups_name_every_known_group_and_refuse_none():
    """``groups=("other",)`` is accepted, so the refusal of an unknown group lists it; ``groups=()`` denoised
    nothing: a "DeFT-X" branch that was LT-SFT's raw |Δ| selection under another name."""
    with pytest.raises(ValueError, match=r"unknown groups \['attn'\]; known: .*'ffn', 'other'"):
        DenoiseConfig(groups=("attn",))
    with pytest.raises(ValueError, match=r"DenoiseConfig: groups is empty.*None"):
        DenoiseConfig(groups=())
    assert DenoiseConfig(groups=["other"]).groups == ("other",)


def test_k_of_one_as_a_float_is_refused_as_ambiguous():
    """``k=1.0`` read as the count 1 (one entry), where a fraction of 1.0 means every eligible entry (as
    ``deftx bench --k`` reads it): a 1-entry SFT where 100% was meant. The int 1 stays one entry."""
    with pytest.raises(ValueError, match=r"k = 1\.0 is ambiguous"):
        resolve_k(1.0, 100)
    with pytest.raises(ValueError, match=r"k = 1\.0 is ambiguous"):
        SparseFineTuningConfig(k=1.0, full=PhaseConfig(steps=1), sparse=PhaseConfig(steps=1))
    assert resolve_k(1, 100) == 1 and resolve_k(2.0, 100) == 2
